using System.Globalization;

namespace KvmObserve.Aggregation.Discovery;

/// <summary>
/// Knows which processes are VMs and which thread is which vCPU. Reads procfs; never called on the hot path: the
/// aggregator resolves a thread when its first series appears and again at scrape time.
/// </summary>
public sealed class VmRegistry
{
    private readonly string _procRoot;
    private readonly object _gate = new();
    private readonly Dictionary<int, ThreadIdentity> _threads = new();
    private readonly Dictionary<int, VmInfo> _vmsByPid = new();

    public VmRegistry(string procRoot = "/proc") => _procRoot = procRoot;

    /// <summary>The identity of a thread, reading procfs if it has not been resolved yet; Unknown when it is gone.</summary>
    public ThreadIdentity Resolve(int tid)
    {
        ThreadIdentity? known;
        lock (_gate)
        {
            if (_threads.TryGetValue(tid, out known) && !NeedsVcpu(known))
                return known;
        }
        ThreadIdentity? found = ReadThread(tid);
        if (found is null && known is not null)
            return known; // gone since: keep what was learnt
        lock (_gate)
        {
            if (found is null)
                return new ThreadIdentity(VmInfo.Unknown, -1); // not cached: the thread may be seen later by a scan
            _threads[tid] = found;
            return found;
        }
    }

    /// <summary>True when the thread has been resolved and needs no second look.</summary>
    public bool IsKnown(int tid)
    {
        lock (_gate)
            return _threads.TryGetValue(tid, out ThreadIdentity? known) && !NeedsVcpu(known);
    }

    /// <summary>A thread seen before it named itself "CPU N/KVM" is looked at again while its VM runs.</summary>
    private static bool NeedsVcpu(ThreadIdentity identity) => identity.Vcpu < 0 && identity.Vm.ExitedAt is null;

    public IReadOnlyList<VmInfo> Vms()
    {
        lock (_gate)
            return _vmsByPid.Values.ToList();
    }

    /// <summary>The threads <paramref name="vm"/> has now, each with its vCPU index (-1: not a vCPU thread); empty
    /// once it has exited.</summary>
    public IReadOnlyList<(int Tid, int Vcpu)> ThreadsOf(VmInfo vm)
    {
        var threads = new List<(int, int)>();
        if (!ProcessAlive(vm))
            return threads;
        foreach (string task in SafeEnumerate(Path.Combine(_procRoot, vm.Pid.ToString(CultureInfo.InvariantCulture), "task")))
        {
            if (!int.TryParse(Path.GetFileName(task), NumberStyles.None, CultureInfo.InvariantCulture, out int tid))
                continue;
            ThreadIdentity who = Resolve(tid);
            if (who.Vm == vm)
                threads.Add((tid, who.Vcpu));
        }
        return threads;
    }

    /// <summary>Finds every process holding a KVM VM fd, learns its vCPU threads, and marks VMs that have exited.</summary>
    public void Scan()
    {
        var alive = new HashSet<int>();
        foreach (string dir in SafeEnumerate(_procRoot))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                continue;
            if (!HoldsVmFd(pid))
                continue;
            VmInfo? vm = VmFor(pid);
            if (vm is null)
                continue;
            alive.Add(pid);
            foreach (string task in SafeEnumerate(Path.Combine(_procRoot, pid.ToString(CultureInfo.InvariantCulture), "task")))
            {
                if (int.TryParse(Path.GetFileName(task), NumberStyles.None, CultureInfo.InvariantCulture, out int tid))
                    Resolve(tid);
            }
        }
        lock (_gate)
        {
            foreach (VmInfo vm in _vmsByPid.Values)
            {
                if (!alive.Contains(vm.Pid) && vm.ExitedAt is null && !ProcessAlive(vm))
                    vm.ExitedAt = DateTime.UtcNow;
            }
        }
    }

    private ThreadIdentity? ReadThread(int tid)
    {
        string? status = ReadText(Path.Combine(_procRoot, tid.ToString(CultureInfo.InvariantCulture), "status"));
        if (status is null || ProcfsParsers.ParseTgid(status) is not int tgid)
            return null;
        VmInfo? vm = VmFor(tgid);
        if (vm is null)
            return null;
        string? comm = ReadText(Path.Combine(_procRoot, tgid.ToString(CultureInfo.InvariantCulture), "task",
            tid.ToString(CultureInfo.InvariantCulture), "comm"));
        int vcpu = comm is null ? -1 : ProcfsParsers.VcpuFromThreadName(comm) ?? -1;
        return new ThreadIdentity(vm, vcpu);
    }

    /// <summary>The VM of process <paramref name="pid"/>, registering it on first sight; a process that holds no
    /// VM fd (yet) still gets an entry, named by its command line, since it produced kvm events.</summary>
    private VmInfo? VmFor(int pid)
    {
        string procDir = Path.Combine(_procRoot, pid.ToString(CultureInfo.InvariantCulture));
        string? stat = ReadText(Path.Combine(procDir, "stat"));
        if (stat is null || ProcfsParsers.ParseStartTime(stat) is not ulong start)
            return null;
        lock (_gate)
        {
            if (_vmsByPid.TryGetValue(pid, out VmInfo? known) && known.StartTime == start)
                return known;
        }
        string comm = (ReadText(Path.Combine(procDir, "comm")) ?? "").Trim();
        string[] argv = ProcfsParsers.SplitCmdline(ReadText(Path.Combine(procDir, "cmdline")) ?? "");
        (string name, string vmm, string uuid) = ProcfsParsers.IdentifyVm(argv, comm, pid);
        lock (_gate)
        {
            if (_vmsByPid.TryGetValue(pid, out VmInfo? raced) && raced.StartTime == start)
                return raced;
            var vm = new VmInfo(pid, start, UniqueName(name, pid), vmm, uuid);
            _vmsByPid[pid] = vm;
            // A pid reused by a new VM: the old one's threads must be resolved again.
            foreach (int tid in _threads.Where(t => t.Value.Vm.Pid == pid && t.Value.Vm != vm).Select(t => t.Key).ToList())
                _threads.Remove(tid);
            // Name every thread now, while the process runs: a short-lived VM's other vCPU threads may be gone by
            // the time their own first series is looked at.
            foreach ((int tid, int vcpu) in ThreadsOf(procDir))
                _threads[tid] = new ThreadIdentity(vm, vcpu);
            return vm;
        }
    }

    private static IEnumerable<(int Tid, int Vcpu)> ThreadsOf(string procDir)
    {
        foreach (string task in SafeEnumerate(Path.Combine(procDir, "task")))
        {
            if (!int.TryParse(Path.GetFileName(task), NumberStyles.None, CultureInfo.InvariantCulture, out int tid))
                continue;
            string? comm = ReadText(Path.Combine(task, "comm"));
            yield return (tid, comm is null ? -1 : ProcfsParsers.VcpuFromThreadName(comm) ?? -1);
        }
    }

    /// <summary>Two running VMs never share a name: the later one gets its pid appended. A VM that restarts under
    /// the name of one that has exited takes the name over, so its series continue.</summary>
    private string UniqueName(string name, int pid)
    {
        foreach (VmInfo other in _vmsByPid.Values)
        {
            if (other.Name == name && other.Pid != pid && other.ExitedAt is null)
                return $"{name}-{pid}";
        }
        return name;
    }

    private bool HoldsVmFd(int pid)
    {
        foreach (string fd in SafeEnumerate(Path.Combine(_procRoot, pid.ToString(CultureInfo.InvariantCulture), "fd")))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget == ProcfsParsers.KvmVmFdTarget)
                    return true;
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return false;
    }

    private bool ProcessAlive(VmInfo vm)
    {
        string? stat = ReadText(Path.Combine(_procRoot, vm.Pid.ToString(CultureInfo.InvariantCulture), "stat"));
        return stat is not null && ProcfsParsers.ParseStartTime(stat) == vm.StartTime;
    }

    private static IEnumerable<string> SafeEnumerate(string dir)
    {
        try
        {
            return Directory.GetFileSystemEntries(dir);
        }
        catch (IOException) { return []; }
        catch (UnauthorizedAccessException) { return []; }
    }

    private static string? ReadText(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }
}
