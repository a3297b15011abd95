namespace KvmObserve.Workload;

/// <summary>What one vCPU did, counted exactly: exits the VMM saw in kvm_run, and what the guest programs are
/// built to do in the kernel (MSR and CPUID exits never reach the VMM).</summary>
public sealed class VcpuReport
{
    public int Vcpu { get; init; }
    public int Tid { get; init; }

    /// <summary>"0x3f8/out" → count.</summary>
    public SortedDictionary<string, long> Pio { get; } = new(StringComparer.Ordinal);

    /// <summary>"0xd0000000/write" → count (by 4 KiB page).</summary>
    public SortedDictionary<string, long> Mmio { get; } = new(StringComparer.Ordinal);

    /// <summary>"0x1a0/read" → count.</summary>
    public SortedDictionary<string, long> Msr { get; } = new(StringComparer.Ordinal);

    /// <summary>"0x0" → count.</summary>
    public SortedDictionary<string, long> Cpuid { get; } = new(StringComparer.Ordinal);

    /// <summary>Returns of KVM_RUN by KVM_EXIT name ("IO", "MMIO", "HLT"), or "restart" for EINTR.</summary>
    public SortedDictionary<string, long> UserspaceExits { get; } = new(StringComparer.Ordinal);

    /// <summary>Wall time each mode's program ran on this vCPU, in ns ("pio" → ns): per-exit cost = ns / count.</summary>
    public SortedDictionary<string, long> PhaseNs { get; } = new(StringComparer.Ordinal);

    public long Halts { get; set; }
    public long Interrupts { get; set; }

    /// <summary>Interrupts the VMM sent to wake a halt whose timer interrupt never came (counted in
    /// <see cref="Interrupts"/> too; 0 on a healthy KVM).</summary>
    public long HaltKicks { get; set; }
    /// <summary>Pages the guest touched at CPL3 in touch mode: its fresh data pages and its program's own page. Under
    /// shadow paging each one takes one kvm_mmu_set_spte.</summary>
    public long PagesTouched { get; set; }

    /// <summary>Steal time KVM wrote into the guest's kvm_steal_time struct by the end of the run (ns; -1: not enabled).</summary>
    public long GuestStealNs { get; set; } = -1;

    /// <summary>The kernel's own counts for this vCPU at the end of the run (KVM binary stats: halt_wakeup,
    /// halt_successful_poll, exits, ...), as KVM keeps them whatever observes it; empty where the kernel has none.</summary>
    public SortedDictionary<string, long> KernelStats { get; } = new(StringComparer.Ordinal);

    internal static void Add(SortedDictionary<string, long> map, string key, long n) =>
        map[key] = map.GetValueOrDefault(key) + n;
}

public sealed class VmReport
{
    public required string Name { get; init; }
    public required int Pid { get; init; }
    /// <summary>The cgroup v2 path the VM's process ran in ("/" at the root, "" where there is no v2 hierarchy).</summary>
    public string Cgroup { get; init; } = "";
    public List<VcpuReport> Vcpus { get; } = new();
}
