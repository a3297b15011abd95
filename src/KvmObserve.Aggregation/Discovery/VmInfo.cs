namespace KvmObserve.Aggregation.Discovery;

/// <summary>A process that holds a KVM VM fd (one VM per process, as QEMU, Firecracker and `kvmobserve load` run).</summary>
public sealed class VmInfo
{
    public VmInfo(int pid, ulong startTime, string name, string vmm, string uuid)
    {
        Pid = pid;
        StartTime = startTime;
        Name = name;
        Vmm = vmm;
        Uuid = uuid;
    }

    public int Pid { get; }

    /// <summary>Field 22 of /proc/PID/stat: tells a reused pid from the VM that had it.</summary>
    public ulong StartTime { get; }

    /// <summary>The vm label: unique among the VMs this agent knows.</summary>
    public string Name { get; internal set; }

    public string Vmm { get; }
    public string Uuid { get; }

    /// <summary>Kubernetes namespace of a KubeVirt VM ("" elsewhere).</summary>
    public string Namespace { get; init; } = "";

    /// <summary>UID of the Kubernetes pod whose cgroup holds the VMM ("" outside Kubernetes).</summary>
    public string PodUid { get; init; } = "";

    /// <summary>When the process was last seen gone (UTC), or null while it runs.</summary>
    public DateTime? ExitedAt { get; internal set; }

    /// <summary>Stands for threads whose process could not be identified (gone before it was looked at).</summary>
    public static VmInfo Unknown { get; } = new(0, 0, "unknown", "", "");
}

/// <summary>The VM and vCPU a thread belongs to; Vcpu is -1 for a VMM thread that is not a vCPU.</summary>
public sealed record ThreadIdentity(VmInfo Vm, int Vcpu)
{
    /// <summary>The vCPU index came from the kvm-vcpu fd the thread was blocked on, not from its name.</summary>
    public bool FromFd { get; init; }

    /// <summary>When the registry learnt it (UTC).</summary>
    public DateTime ResolvedAt { get; init; } = DateTime.UtcNow;
}
