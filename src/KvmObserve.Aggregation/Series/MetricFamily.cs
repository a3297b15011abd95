namespace KvmObserve.Aggregation.Series;

/// <summary>The counter families the hot path fills. What Label1/Label2 of a <see cref="SeriesKey"/> hold depends on it.</summary>
public enum MetricFamily : byte
{
    /// <summary>Label1 = basic exit reason, Label2 = isa.</summary>
    Exits,
    /// <summary>VMX exits whose entry failed: Label1 = basic reason.</summary>
    FailedVmEntries,
    /// <summary>Label1 = KVM_EXIT_* reason, Label2 = 0, or 1 for KVM_RUN interrupted (-EINTR), 2 for another errno.</summary>
    UserspaceExits,
    /// <summary>Label1 = port, Label2 = 1 for out.</summary>
    Pio,
    /// <summary>Label1 = mmio type (0 unsatisfied read, 1 read, 2 write), Label2 = gpa page number.</summary>
    Mmio,
    /// <summary>Label1 = msr index, Label2 = 1 for write.</summary>
    Msr,
    /// <summary>Label1 = leaf.</summary>
    Cpuid,
    /// <summary>No labels beyond VM and vCPU.</summary>
    EmulatedInstructions,
    /// <summary>Label1 = vector.</summary>
    InjectedExceptions,
    /// <summary>Label1 = <see cref="HaltOutcome"/>.</summary>
    HaltWakeups,
    /// <summary>Label1 = 1 for grow.</summary>
    HaltPollNsChanges,
    /// <summary>Label1 = <see cref="PageFaultKind"/>.</summary>
    MmuPageFaults,
    /// <summary>Label1 = KvmEventKind of the kvmmmu event.</summary>
    MmuEvents,

    // Histograms: Label2 = extra &lt;&lt; 8 | bucket (see <see cref="LatencyBuckets"/>); bucket SumSlot holds the sum in ns.

    /// <summary>kvm_exit to the thread's next kvm_entry: Label1 = exit reason, extra = isa.</summary>
    ExitLatency,
    /// <summary>kvm_userspace_exit to the thread's next kvm event: Label1 = KVM_EXIT reason, extra = errno class as in
    /// <see cref="UserspaceExits"/>.</summary>
    UserspaceLatency,
    /// <summary>How long a halt lasted (kvm_vcpu_wakeup's ns): Label1 = <see cref="HaltOutcome"/>.</summary>
    HaltDuration,
}

public static class MetricFamilies
{
    public static readonly int Count = Enum.GetValues<MetricFamily>().Length;

    /// <summary>The label value of "every key not counted on its own" (a counting source's unlisted ports, MSRs,
    /// leaves and reasons).</summary>
    public const uint OtherKey = uint.MaxValue;

    /// <summary>An MMIO address a counting source cannot know.</summary>
    public const ulong OtherPage = ulong.MaxValue;

    /// <summary>A direction a counting source does not tell apart (PIO and MSR: Label2; MMIO type: Label1).</summary>
    public const uint OtherDirection = uint.MaxValue;

    /// <summary>Families whose series are histograms.</summary>
    public static bool IsHistogram(MetricFamily family) =>
        family is MetricFamily.ExitLatency or MetricFamily.UserspaceLatency or MetricFamily.HaltDuration;

    /// <summary>Families keyed by a guest-chosen value (port, page, MSR, leaf, vector): only the top K per VM get their
    /// own series, the rest is counted as "other".</summary>
    public static bool IsKeyed(MetricFamily family) => family is MetricFamily.Pio or MetricFamily.Mmio
        or MetricFamily.Msr or MetricFamily.Cpuid or MetricFamily.InjectedExceptions;

    /// <summary>The "everything else" key of a series: what it is counted under past a limit or outside the top K.
    /// It keeps what is not the key itself: direction, ISA, errno class, histogram bucket.</summary>
    public static (uint Label1, ulong Label2) OtherOf(MetricFamily family, uint label1, ulong label2) =>
        family == MetricFamily.Mmio ? (label1, OtherPage) : (OtherKey, label2);

    public static bool IsOther(MetricFamily family, uint label1, ulong label2) =>
        family == MetricFamily.Mmio ? label2 == OtherPage : label1 == OtherKey;

}

public enum HaltOutcome : uint
{
    PollSuccess = 0,
    PollFail = 1,
    /// <summary>The vCPU slept and no poll window was open.</summary>
    Waited = 2,
    /// <summary>The halt ended without sleeping or polling (a wake-up was already pending).</summary>
    Immediate = 3,
    /// <summary>The vCPU slept, and whether it polled first is not known: its poll window has not been seen since the
    /// agent started (it is learnt from the vCPU's first kvm_halt_poll_ns).</summary>
    Unknown = 4,
}

/// <summary>How a guest page fault is labelled, from its PFERR_* error code (or fast_page_fault's outcome).</summary>
public enum PageFaultKind : uint
{
    NotPresentRead,
    NotPresentWrite,
    NotPresentExec,
    ProtectionRead,
    ProtectionWrite,
    ProtectionExec,
    ReservedBits,
    FastFixed,
    FastSpurious,
    FastNotFixed,
}
