namespace KvmObserve.Decoding.Events;

/// <summary>The tracepoints the agent decodes. One decoder each; several kvmmmu events share the counting decoder.</summary>
public enum KvmEventKind : byte
{
    None = 0,
    Exit,
    Entry,
    UserspaceExit,
    Pio,
    Mmio,
    Msr,
    Cpuid,
    EmulateInsn,
    InjectedException,
    VcpuWakeup,
    HaltPollNs,
    PageFault,
    FastPageFault,
    MmuSpteRequested,
    MmuSetSpte,
    MmuGetPage,
    MmuPrepareZapPage,
    MmuHandleMmioPageFault,
    MmuMarkMmioSpte,
    MmuPagetableWalk,
    MmuSyncPage,
    MmuUnsyncPage,
    MmuSplitHugePage,
    MmuZapAllFast,
}
