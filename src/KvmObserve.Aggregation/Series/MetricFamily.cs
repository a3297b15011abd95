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
}

public static class MetricFamilies
{
    public static readonly int Count = Enum.GetValues<MetricFamily>().Length;

    /// <summary>The label value of "every key not counted on its own" (a counting source's unlisted ports, MSRs,
    /// leaves and reasons).</summary>
    public const uint OtherKey = uint.MaxValue;

    /// <summary>An MMIO address a counting source cannot know.</summary>
    public const ulong OtherPage = ulong.MaxValue;
}

public enum HaltOutcome : uint
{
    PollSuccess = 0,
    PollFail = 1,
    Waited = 2,
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
