using System.Runtime.CompilerServices;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;

namespace KvmObserve.Aggregation;

/// <summary>The hot path: each decoded record becomes one counter increment in the reader's own shard.</summary>
public readonly struct AggregatingSink(Shard shard) : IKvmEventSink
{
    private const int NoVcpu = -1;

    // PFERR_* of arch/x86/include/asm/kvm_host.h
    private const ulong PferrPresent = 1 << 0, PferrWrite = 1 << 1, PferrReserved = 1 << 3, PferrFetch = 1 << 4;

    // RET_PF_* of arch/x86/kvm/mmu/mmu_internal.h (Linux 6.x)
    private const int RetPfFixed = 5, RetPfSpurious = 6;

    public Shard Shard { get; } = shard;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Count(KvmEventKind kind, in EventContext c, int vcpu, MetricFamily family, uint label1, ulong label2 = 0)
    {
        Shard.CountEvent(kind);
        Shard.Series.Counter(new SeriesKey(c.Tid, vcpu, family, label1, label2))++;
    }

    public void OnExit(in EventContext context, in ExitRecord record)
    {
        Count(KvmEventKind.Exit, context, record.Vcpu, MetricFamily.Exits, record.Reason, record.Isa);
        if (record.FailedVmEntry)
            Shard.Series.Counter(new SeriesKey(context.Tid, record.Vcpu, MetricFamily.FailedVmEntries, record.Reason, 0))++;
    }

    // kvm_entry feeds exit latency (pairing per thread), which comes with the depth work; here it is only counted.
    public void OnEntry(in EventContext context, in EntryRecord record) => Shard.CountEvent(KvmEventKind.Entry);

    public void OnUserspaceExit(in EventContext context, in UserspaceExitRecord record)
    {
        // An errno instead of an exit: -EINTR is a signal-driven restart, anything else a failed KVM_RUN.
        ulong errno = record.Errno >= 0 ? 0UL : record.Errno == -4 ? 1UL : 2UL;
        Count(KvmEventKind.UserspaceExit, context, NoVcpu, MetricFamily.UserspaceExits, errno == 0 ? record.Reason : 0, errno);
    }

    public void OnPio(in EventContext context, in PioRecord record) =>
        Count(KvmEventKind.Pio, context, NoVcpu, MetricFamily.Pio, record.Port, record.Write ? 1UL : 0UL);

    public void OnMmio(in EventContext context, in MmioRecord record) =>
        Count(KvmEventKind.Mmio, context, NoVcpu, MetricFamily.Mmio, record.Type, record.Gpa >> 12);

    public void OnMsr(in EventContext context, in MsrRecord record) =>
        Count(KvmEventKind.Msr, context, NoVcpu, MetricFamily.Msr, record.Msr, record.Write ? 1UL : 0UL);

    public void OnCpuid(in EventContext context, in CpuidRecord record) =>
        Count(KvmEventKind.Cpuid, context, NoVcpu, MetricFamily.Cpuid, record.Function);

    public void OnEmulateInsn(in EventContext context, in EmulateInsnRecord record) =>
        Count(KvmEventKind.EmulateInsn, context, NoVcpu, MetricFamily.EmulatedInstructions, 0);

    public void OnInjectedException(in EventContext context, in InjectedExceptionRecord record) =>
        Count(KvmEventKind.InjectedException, context, NoVcpu, MetricFamily.InjectedExceptions, record.Vector);

    public void OnVcpuWakeup(in EventContext context, in VcpuWakeupRecord record)
    {
        // Without the vCPU's poll window at halt time, a wait is reported as waited; the poll_fail split comes with
        // per-thread halt state.
        HaltOutcome outcome = record.Waited ? HaltOutcome.Waited : HaltOutcome.PollSuccess;
        Count(KvmEventKind.VcpuWakeup, context, NoVcpu, MetricFamily.HaltWakeups, (uint)outcome);
    }

    public void OnHaltPollNs(in EventContext context, in HaltPollNsRecord record) =>
        Count(KvmEventKind.HaltPollNs, context, record.Vcpu, MetricFamily.HaltPollNsChanges, record.Grow ? 1u : 0u);

    public void OnPageFault(in EventContext context, in PageFaultRecord record) =>
        Count(KvmEventKind.PageFault, context, record.Vcpu, MetricFamily.MmuPageFaults, (uint)ClassifyFault(record.ErrorCode));

    public void OnFastPageFault(in EventContext context, in FastPageFaultRecord record)
    {
        PageFaultKind kind = record.Ret switch
        {
            RetPfFixed => PageFaultKind.FastFixed,
            RetPfSpurious => PageFaultKind.FastSpurious,
            _ => PageFaultKind.FastNotFixed,
        };
        Count(KvmEventKind.FastPageFault, context, record.Vcpu, MetricFamily.MmuPageFaults, (uint)kind);
    }

    public void OnMmuEvent(in EventContext context, KvmEventKind kind) =>
        Count(kind, context, NoVcpu, MetricFamily.MmuEvents, (uint)kind);

    public void OnDecodeError(int cpu, KvmEventKind kind) => Shard.CountDecodeError(kind);

    public static PageFaultKind ClassifyFault(ulong errorCode)
    {
        if ((errorCode & PferrReserved) != 0)
            return PageFaultKind.ReservedBits;
        bool present = (errorCode & PferrPresent) != 0;
        if ((errorCode & PferrFetch) != 0)
            return present ? PageFaultKind.ProtectionExec : PageFaultKind.NotPresentExec;
        if ((errorCode & PferrWrite) != 0)
            return present ? PageFaultKind.ProtectionWrite : PageFaultKind.NotPresentWrite;
        return present ? PageFaultKind.ProtectionRead : PageFaultKind.NotPresentRead;
    }
}
