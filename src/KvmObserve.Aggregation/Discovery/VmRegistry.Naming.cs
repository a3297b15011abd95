using System.Globalization;

namespace KvmObserve.Aggregation.Discovery;

/// <summary>How a process becomes a VM of the registry: named from its command line when it is first seen (a scan,
/// KVM's create uevent, a record of one of its threads), its threads named with it, and its name kept unique.</summary>
public sealed partial class VmRegistry
{
    private readonly Dictionary<int, int> _creatorOf = new();

    /// <summary>Tells the registry that <paramref name="creator"/> made thread <paramref name="tid"/> in its own
    /// process (a task_newtask record with CLONE_THREAD): for sources whose records name no process.</summary>
    public void NoteThreadCreated(int tid, int creator)
    {
        if (tid <= 0 || creator <= 0 || Detached)
            return;
        lock (_gate)
        {
            if (_creatorOf.Count >= ProcessHintLimit && !_creatorOf.ContainsKey(tid))
                _creatorOf.Clear();
            _creatorOf[tid] = creator;
        }
    }

    private readonly Dictionary<int, int> _processOf = new();

    /// <summary>Hints kept at most; past that they are dropped, as they are needed only for the seconds between a
    /// thread's first record and its naming.</summary>
    private const int ProcessHintLimit = 65_536;

    /// <summary>
    /// Tells the registry that <paramref name="tid"/> is a thread of process <paramref name="tgid"/>, as a source's
    /// record says (perf's pid, the tgid bpf keys by). A thread that has exited when it is named, the vCPU of a VM that
    /// lived a second, is then still given to its VM if the VM was seen (by <see cref="Learn"/> at its creation, or a
    /// scan). Sources call it once per thread they have not seen, not per record.
    /// </summary>
    public void NoteProcess(int tid, int tgid)
    {
        if (tgid <= 0 || Detached)
            return;
        lock (_gate)
        {
            if (_processOf.Count >= ProcessHintLimit && !_processOf.ContainsKey(tid))
                _processOf.Clear();
            _processOf[tid] = tgid;
        }
    }

    /// <summary>Registers process <paramref name="pid"/> as a VM now, with the threads it has: for a VM the kernel
    /// just announced (<see cref="KvmObserve.Native.Kvm.KvmUevents"/>), while its process certainly runs.</summary>
    public VmInfo? Learn(int pid) => Detached ? null : VmFor(pid);

    /// <summary>The VM of process <paramref name="pid"/>, registering it on first sight; a process that holds no
    /// VM fd (yet) still gets an entry, named by its command line, since it produced kvm events.</summary>
    private VmInfo? VmFor(int pid)
    {
        string procDir = Path.Combine(_procRoot, pid.ToString(CultureInfo.InvariantCulture));
        if (StartTime(procDir) is not ulong start)
            return null;
        lock (_gate)
        {
            if (_vmsByPid.TryGetValue(pid, out VmInfo? known) && known.StartTime == start)
                return known;
        }
        string comm = (ReadText(Path.Combine(procDir, "comm")) ?? "").Trim();
        string[] argv = ProcfsParsers.SplitCmdline(ReadText(Path.Combine(procDir, "cmdline")) ?? "");
        if (argv.Length == 0 && comm.Length == 0)
            return null; // mid-exec (or a kernel thread): nothing to name it by yet, look again later
        (string name, string vmm, string uuid) = ProcfsParsers.IdentifyVm(argv, comm, pid);
        string ns = "", podUid = "";
        if (ReadText(Path.Combine(procDir, "cgroup")) is string cgroup && ProcfsParsers.KubernetesPodUid(cgroup) is string uid)
        {
            // A VMM in a Kubernetes pod: KubeVirt's virt-launcher runs QEMU through libvirt, whose domain is
            // "NAMESPACE_VMI" (namespaces cannot hold '_', so the first one splits it).
            podUid = uid;
            (name, ns) = ProcfsParsers.KubeVirtName(name);
            if (vmm == "qemu")
                vmm = "kubevirt";
        }
        lock (_gate)
        {
            if (_vmsByPid.TryGetValue(pid, out VmInfo? raced) && raced.StartTime == start)
                return raced;
            return Register(pid, new VmInfo(pid, start, UniqueName(name, pid), vmm, uuid) { Namespace = ns, PodUid = podUid }, procDir);
        }
    }

    /// <summary>Under the gate: records a new VM and names its threads.</summary>
    private VmInfo Register(int pid, VmInfo vm, string procDir)
    {
        _vmsByPid[pid] = vm;
        // A pid reused by a new VM: the old one's threads must be resolved again.
        foreach (int tid in _threads.Where(t => t.Value.Vm.Pid == pid && t.Value.Vm != vm).Select(t => t.Key).ToList())
            _threads.Remove(tid);
        // Name every thread now, while the process runs: a short-lived VM's other vCPU threads may be gone by
        // the time their own first series is looked at.
        bool fresh = _agentStart is ulong agent && vm.StartTime > agent;
        foreach ((int tid, int vcpu) in ThreadsOf(procDir))
        {
            _threads[tid] = new ThreadIdentity(vm, vcpu);
            _unresolvedSince.Remove(tid);
            if (fresh)
                FreshVmThread?.Invoke(tid);
        }
        return vm;
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
            if (other.Name != name || other.Pid == pid || other.ExitedAt is not null)
                continue;
            if (!ProcessAlive(other))
            {
                other.ExitedAt = DateTime.UtcNow; // exited since the last scan: a restart, not a twin
                continue;
            }
            return $"{name}-{pid}";
        }
        return name;
    }
}
