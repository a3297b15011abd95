namespace KvmObserve.Decoding.Events;

/// <summary>A tracepoint the agent knows how to decode.</summary>
public sealed record Tracepoint(string System, string Name, KvmEventKind Kind)
{
    public string FullName => $"{System}:{Name}";
}

/// <summary>Every tracepoint the agent reads. Which exist and fire differs between kernels and hosts: kvm_exit and
/// kvm_entry never fire on software-only KVM backends, kvm_page_fault needs hardware paging.</summary>
public static class TracepointCatalog
{
    public static IReadOnlyList<Tracepoint> All { get; } =
    [
        new("kvm", "kvm_exit", KvmEventKind.Exit),
        new("kvm", "kvm_entry", KvmEventKind.Entry),
        new("kvm", "kvm_userspace_exit", KvmEventKind.UserspaceExit),
        new("kvm", "kvm_pio", KvmEventKind.Pio),
        new("kvm", "kvm_mmio", KvmEventKind.Mmio),
        new("kvm", "kvm_msr", KvmEventKind.Msr),
        new("kvm", "kvm_cpuid", KvmEventKind.Cpuid),
        new("kvm", "kvm_emulate_insn", KvmEventKind.EmulateInsn),
        new("kvm", "kvm_inj_exception", KvmEventKind.InjectedException),
        new("kvm", "kvm_vcpu_wakeup", KvmEventKind.VcpuWakeup),
        new("kvm", "kvm_halt_poll_ns", KvmEventKind.HaltPollNs),
        new("kvm", "kvm_page_fault", KvmEventKind.PageFault),
        new("kvmmmu", "fast_page_fault", KvmEventKind.FastPageFault),
        new("kvmmmu", "kvm_mmu_spte_requested", KvmEventKind.MmuSpteRequested),
        new("kvmmmu", "kvm_mmu_set_spte", KvmEventKind.MmuSetSpte),
        new("kvmmmu", "kvm_mmu_get_page", KvmEventKind.MmuGetPage),
        new("kvmmmu", "kvm_mmu_prepare_zap_page", KvmEventKind.MmuPrepareZapPage),
        new("kvmmmu", "handle_mmio_page_fault", KvmEventKind.MmuHandleMmioPageFault),
        new("kvmmmu", "mark_mmio_spte", KvmEventKind.MmuMarkMmioSpte),
        new("kvmmmu", "kvm_mmu_pagetable_walk", KvmEventKind.MmuPagetableWalk),
        new("kvmmmu", "kvm_mmu_sync_page", KvmEventKind.MmuSyncPage),
        new("kvmmmu", "kvm_mmu_unsync_page", KvmEventKind.MmuUnsyncPage),
        new("kvmmmu", "kvm_mmu_split_huge_page", KvmEventKind.MmuSplitHugePage),
        new("kvmmmu", "kvm_mmu_zap_all_fast", KvmEventKind.MmuZapAllFast),
    ];

    /// <summary>The metric label of a kind: the tracepoint's name.</summary>
    public static string EventName(KvmEventKind kind) => kind == KvmEventKind.None ? "unknown" : NameByKind[(int)kind];

    private static readonly string[] NameByKind = BuildNames();

    private static string[] BuildNames()
    {
        var names = new string[Enum.GetValues<KvmEventKind>().Length];
        names[0] = "unknown";
        foreach (Tracepoint t in All)
            names[(int)t.Kind] = t.Name;
        return names;
    }
}
