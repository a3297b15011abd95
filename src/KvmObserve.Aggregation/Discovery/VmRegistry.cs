using System.Globalization;

namespace KvmObserve.Aggregation.Discovery;

/// <summary>
/// Knows which processes are VMs and which thread is which vCPU. Reads procfs; never called on the hot path: the
/// aggregator resolves a thread when its first series appears and again at scrape time.
/// </summary>
public sealed partial class VmRegistry
{
    private readonly string _procRoot;
    private readonly object _gate = new();
    private readonly Dictionary<int, ThreadIdentity> _threads = new();
    private readonly Dictionary<int, VmInfo> _vmsByPid = new();
    private readonly Dictionary<int, DateTime> _unresolvedSince = new();
    private readonly Dictionary<int, DateTime> _goneAt = new();
    private readonly Dictionary<int, DateTime> _vcpuProbedAt = new();

    private readonly ulong? _agentStart;

    public string ProcRoot => _procRoot;

    /// <summary>True for a registry that knows only the VMs it is told of (<see cref="Seed"/>): it never reads procfs
    /// and never marks a VM exited.</summary>
    public bool Detached { get; private init; }

    /// <summary>A registry with no procfs behind it: a replay's, whose VMs live only in the recording.</summary>
    public static VmRegistry WithoutProcfs() =>
        new(Path.Combine(Path.GetTempPath(), "kvmobserve-no-procfs", Guid.NewGuid().ToString("N"))) { Detached = true };

    public VmRegistry(string procRoot = "/proc")
    {
        _procRoot = procRoot;
        _agentStart = StartTime(Path.Combine(procRoot, "self"));
    }

    /// <summary>Called with each thread of a VM that started after this registry: everything about its vCPUs was
    /// seen from the start (their halt-poll window starts at 0).</summary>
    public Action<int>? FreshVmThread { get; set; }

    /// <summary>How long a thread that cannot be read is given before its records are counted as vm="unknown" (a
    /// process being set up can briefly hide its threads).</summary>
    public static readonly TimeSpan UnresolvedGrace = TimeSpan.FromSeconds(2);

    /// <summary>The identity of a thread, reading procfs if it has not been resolved yet; Unknown when it is gone.</summary>
    public ThreadIdentity Resolve(int tid) => TryResolve(tid, DateTime.UtcNow, wait: false)!;

    /// <summary>
    /// The identity of a thread, or null while it cannot be told yet: unreadable for less than
    /// <see cref="UnresolvedGrace"/>. Past that, or with <paramref name="wait"/> false, an unreadable thread is
    /// Unknown (and stays so once the grace has passed).
    /// </summary>
    public ThreadIdentity? TryResolve(int tid, DateTime now, bool wait = true)
    {
        ThreadIdentity? known;
        lock (_gate)
        {
            if (_threads.TryGetValue(tid, out known) && !NeedsVcpu(known))
                return known;
        }
        ThreadIdentity? found = known is not null ? Recheck(known, tid) : ReadThread(tid);
        lock (_gate)
        {
            if (found is not null)
            {
                _unresolvedSince.Remove(tid);
                _threads[tid] = found;
                return found;
            }
            if (known is not null)
                return known; // gone since: keep what was learnt
            if (!_unresolvedSince.TryGetValue(tid, out DateTime since))
                _unresolvedSince[tid] = since = now;
            if (now - since < UnresolvedGrace)
                return wait ? null : new ThreadIdentity(VmInfo.Unknown, -1);
            _unresolvedSince.Remove(tid);
            _threads[tid] = known = new ThreadIdentity(VmInfo.Unknown, -1);
            _goneAt[tid] = now;
            return known;
        }
    }

    /// <summary>True when the thread belongs to a VM that has exited, or could not be identified before it went:
    /// nothing new will be learnt about it.</summary>
    public bool IsGone(int tid)
    {
        lock (_gate)
            return _threads.TryGetValue(tid, out ThreadIdentity? who) && (who.Vm.ExitedAt is not null || _goneAt.ContainsKey(tid));
    }

    /// <summary>
    /// The vCPU index of a VM thread whose name does not say it: from the anon_inode:kvm-vcpu:N fd it is blocked on in
    /// an ioctl (/proc/PID/task/TID/syscall; a thread running guest code shows "running" and is tried again at most
    /// once a second). Null when not known (yet).
    /// </summary>
    public int? VcpuFromFd(int tid, DateTime now)
    {
        ThreadIdentity? who;
        lock (_gate)
        {
            if (!_threads.TryGetValue(tid, out who) || who.Vm.Pid == 0 || who.Vm.ExitedAt is not null)
                return null;
            if (who.Vcpu >= 0)
                return who.Vcpu;
            if (_vcpuProbedAt.TryGetValue(tid, out DateTime at) && now - at < TimeSpan.FromSeconds(1))
                return null;
            _vcpuProbedAt[tid] = now;
        }
        string task = Path.Combine(_procRoot, who.Vm.Pid.ToString(CultureInfo.InvariantCulture), "task", tid.ToString(CultureInfo.InvariantCulture));
        if (ReadText(Path.Combine(task, "syscall")) is not string syscall || ProcfsParsers.IoctlFd(syscall) is not int fd)
            return null;
        string? target;
        try
        {
            target = new FileInfo(Path.Combine(_procRoot, who.Vm.Pid.ToString(CultureInfo.InvariantCulture), "fd",
                fd.ToString(CultureInfo.InvariantCulture))).LinkTarget;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
        if (ProcfsParsers.VcpuFromFdTarget(target) is not int vcpu)
            return null;
        lock (_gate)
        {
            _threads[tid] = new ThreadIdentity(who.Vm, vcpu) { FromFd = true };
            _vcpuProbedAt.Remove(tid);
        }
        return vcpu;
    }

    /// <summary>
    /// Forgets VMs gone for longer than <paramref name="grace"/>, with their threads, and threads that were never
    /// identified. Returns the VM names no running VM carries any more (their series should go) and the tids forgotten.
    /// </summary>
    public (List<string> Names, List<int> Tids) Expire(TimeSpan grace, DateTime now)
    {
        var names = new List<string>();
        var tids = new List<int>();
        lock (_gate)
        {
            var expired = _vmsByPid.Values.Where(v => v.ExitedAt is DateTime at && now - at >= grace).ToList();
            foreach (VmInfo vm in expired)
            {
                _vmsByPid.Remove(vm.Pid);
                _vcpuFds.Remove(vm.Pid);
                foreach ((int tid, ThreadIdentity who) in _threads.Where(t => t.Value.Vm == vm).ToList())
                {
                    _threads.Remove(tid);
                    _vcpuProbedAt.Remove(tid);
                    _processOf.Remove(tid);
                    _creatorOf.Remove(tid);
                    tids.Add(tid);
                }
                if (!_vmsByPid.Values.Any(v => v.Name == vm.Name) && !names.Contains(vm.Name))
                    names.Add(vm.Name);
            }
            foreach ((int tid, DateTime at) in _goneAt.Where(g => now - g.Value >= grace).ToList())
            {
                _goneAt.Remove(tid);
                _threads.Remove(tid);
                _processOf.Remove(tid);
                _creatorOf.Remove(tid);
                tids.Add(tid);
            }
        }
        return (names, tids);
    }

    /// <summary>True when the thread has been resolved and needs no second look.</summary>
    public bool IsKnown(int tid)
    {
        lock (_gate)
            return _threads.TryGetValue(tid, out ThreadIdentity? known) && !NeedsVcpu(known);
    }

    /// <summary>A thread seen before it named itself "CPU N/KVM" is looked at again while its VM runs.</summary>
    private static bool NeedsVcpu(ThreadIdentity identity) =>
        identity.Vcpu < 0 && identity.Vm.ExitedAt is null && identity.Vm.Pid != 0;

    /// <summary>Names a thread of a replayed recording, as the recording says (its VM is registered on first use).</summary>
    public VmInfo Seed(int tid, int pid, string name, string vmm, string uuid, int vcpu)
    {
        lock (_gate)
        {
            if (!_vmsByPid.TryGetValue(pid, out VmInfo? vm))
                _vmsByPid[pid] = vm = new VmInfo(pid, 0, name, vmm, uuid);
            _threads[tid] = new ThreadIdentity(vm, vcpu);
            _unresolvedSince.Remove(tid);
            return vm;
        }
    }

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
    public void Scan() => Scan(TimeSpan.Zero);

    /// <summary>Scans unless a scan ended less than <paramref name="unlessWithin"/> ago (one that waited for this
    /// one's turn included): two threads that each keep the registry fresh do not both walk procfs. True when it
    /// scanned.</summary>
    public bool Scan(TimeSpan unlessWithin)
    {
        if (Detached)
            return false;
        lock (_scanGate) // one scan at a time: the discovery thread, and sources asking for one at once
        {
            if (DateTime.UtcNow - LastScanAt < unlessWithin)
                return false;
            ScanLocked();
            Volatile.Write(ref _lastScanTicks, DateTime.UtcNow.Ticks);
            Interlocked.Increment(ref _scansDone);
            return true;
        }
    }

    private readonly object _scanGate = new();
    private long _lastScanTicks; // DateTime.MinValue's
    private long _scansDone;

    /// <summary>When the last scan ended (DateTime.MinValue before the first). Read without the scan's lock: a source's
    /// thread that asks never waits behind a scan in progress.</summary>
    public DateTime LastScanAt => new(Volatile.Read(ref _lastScanTicks), DateTimeKind.Utc);

    /// <summary>Scans done so far: a reader of the registry's VMs can tell whether anything was learnt since it last
    /// looked.</summary>
    public long ScansDone => Interlocked.Read(ref _scansDone);

    private void ScanLocked()
    {
        var alive = new HashSet<int>();
        var pids = new List<int>();
        var proc = new KvmObserve.Native.DirectoryEntries(_procRoot, stackalloc byte[DirentBufferSize]);
        try
        {
            while (proc.MoveNext())
            {
                if (ProcfsParsers.Index(proc.Name) is int pid)
                    pids.Add(pid);
            }
        }
        finally
        {
            proc.Dispose();
        }
        pids.Sort(); // the lower pid (usually the older VM) keeps a name two VMs share
        bool full = _scans++ % FullScanEvery == 0;
        foreach (int gone in _notVmm.Keys.Where(p => pids.BinarySearch(p) < 0).ToList())
            _notVmm.Remove(gone);
        foreach (int pid in pids)
        {
            if (!HoldsVmFdCached(pid, full))
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

    /// <summary>A known thread of a running VM not named for a vCPU: only its name is read again (one file, not the
    /// three of a first look). Until it names one, its first identity stands, with the time it was learnt: a fold holds
    /// its vCPU-labelled series back for <see cref="UnresolvedGrace"/> from then. (A fresh identity at every look
    /// restarted the grace at each fold, and the counts of a thread whose vCPU was never told, a busy vCPU of a VMM
    /// that does not name its threads, were held for as long as its VM ran.)</summary>
    private ThreadIdentity? Recheck(ThreadIdentity known, int tid)
    {
        string? comm = ReadText(Path.Combine(_procRoot, known.Vm.Pid.ToString(CultureInfo.InvariantCulture), "task",
            tid.ToString(CultureInfo.InvariantCulture), "comm"));
        if (comm is null)
            return ReadThread(tid); // gone, or no longer that VM's: a first look again
        return ProcfsParsers.VcpuFromThreadName(comm) is int vcpu ? new ThreadIdentity(known.Vm, vcpu) : known;
    }

    private ThreadIdentity? ReadThread(int tid)
    {
        string? status = ReadText(Path.Combine(_procRoot, tid.ToString(CultureInfo.InvariantCulture), "status"));
        if (status is null || ProcfsParsers.ParseTgid(status) is not int tgid)
            return GoneThread(tid);
        VmInfo? vm = VmFor(tgid);
        if (vm is null)
            return null;
        string? comm = ReadText(Path.Combine(_procRoot, tgid.ToString(CultureInfo.InvariantCulture), "task",
            tid.ToString(CultureInfo.InvariantCulture), "comm"));
        int vcpu = comm is null ? -1 : ProcfsParsers.VcpuFromThreadName(comm) ?? -1;
        if (_agentStart is ulong agent && vm.StartTime > agent)
            FreshVmThread?.Invoke(tid);
        return new ThreadIdentity(vm, vcpu);
    }

    /// <summary>A thread that has exited: its VM if that was seen and something tells which process the thread was of
    /// (a record's process, <see cref="NoteProcess"/>; or the thread that created it, <see cref="NoteThreadCreated"/>,
    /// followed up to one that is known or still runs), else null. Its vCPU then comes from its records.</summary>
    private ThreadIdentity? GoneThread(int tid)
    {
        int tgid = -1, last = tid;
        lock (_gate)
        {
            for (int t = tid, hops = 0; hops < 32; hops++)
            {
                last = t;
                if (_processOf.TryGetValue(t, out int p))
                    tgid = p;
                else if (_vmsByPid.ContainsKey(t))
                    tgid = t; // a process's first thread
                else if (t != tid && _threads.TryGetValue(t, out ThreadIdentity? known) && known.Vm.Pid != 0)
                    tgid = known.Vm.Pid;
                if (tgid > 0 || !_creatorOf.TryGetValue(t, out t))
                    break;
            }
        }
        if (tgid <= 0 && last != tid) // the chain ends at a creator no one knows yet: it may still run
        {
            string? status = ReadText(Path.Combine(_procRoot, last.ToString(CultureInfo.InvariantCulture), "status"));
            tgid = status is null ? -1 : ProcfsParsers.ParseTgid(status) ?? -1;
        }
        if (tgid <= 0)
            return null;
        VmInfo? vm;
        lock (_gate)
            _vmsByPid.TryGetValue(tgid, out vm);
        vm ??= VmFor(tgid); // a thread gone from a process that still runs
        return vm is null ? null : new ThreadIdentity(vm, -1);
    }

    private bool ProcessAlive(VmInfo vm) =>
        StartTime(Path.Combine(_procRoot, vm.Pid.ToString(CultureInfo.InvariantCulture))) == vm.StartTime;

    /// <summary>The start time in /proc/PID/stat (a pid's identity: a reused pid has another), read into a stack
    /// buffer; null when the process is gone.</summary>
    private static ulong? StartTime(string procDir)
    {
        Span<byte> stat = stackalloc byte[1024]; // field 22 is within the first ~500 bytes
        int n = KvmObserve.Native.Sys.TryReadSmallFile(Path.Combine(procDir, "stat"), stat);
        return n > 0 ? ProcfsParsers.ParseStartTime(stat[..n]) : null;
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
