using System.Runtime.CompilerServices;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;

namespace KvmObserve.Aggregation;

/// <summary>
/// The hot path: each decoded record becomes a counter increment in the reader's own shard; the records that start
/// or end something (kvm_exit, kvm_entry, kvm_userspace_exit, halts) also go through the thread's shared state.
/// </summary>
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

    /// <summary>Finds the thread's state (-1: table full) and ends its userspace round trip if one is open: any record
    /// of the thread means it is back in KVM_RUN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int Track(in EventContext c)
    {
        ThreadStates states = Shard.States;
        states.Advance(c.Cpu, c.Timestamp);
        int slot = states.Find(c.Tid, ref Shard.StateCache);
        if (slot >= 0 && states.UserspacePending(slot))
            EndUserspace(slot, in c);
        return slot;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void EndUserspace(int slot, in EventContext c)
    {
        ThreadStates states = Shard.States;
        ref ThreadStates.Slot s = ref states.Lock(slot);
        if (s.Tid == c.Tid && s.UserTs != 0 && c.Timestamp >= s.UserTs) // an older record (a CPU read behind) does not end it
        {
            bool intact = c.Cpu == s.UserCpu
                ? states.LossGeneration(c.Cpu) == s.UserLossGeneration
                : states.GlobalLossGeneration == s.UserGlobalLossGeneration;
            ulong ns = c.Timestamp - s.UserTs;
            uint reason = s.UserReason, errnoClass = s.UserErrnoClass;
            s.UserTs = 0;
            ThreadStates.Unlock(ref s);
            if (intact)
                Observe(MetricFamily.UserspaceLatency, c.Tid, reason, errnoClass, ns);
            else
                states.CountDropped(PairKind.Userspace, PairDrop.Gap);
            return;
        }
        ThreadStates.Unlock(ref s);
    }

    /// <summary>One histogram observation: its bucket and its sum (ns), per VM (the thread names the VM).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Observe(MetricFamily family, int tid, uint label1, ulong extra, ulong ns)
    {
        SeriesTable series = Shard.Series;
        series.Counter(new SeriesKey(tid, NoVcpu, family, label1, LatencyBuckets.Label2(extra, LatencyBuckets.Index(ns))))++;
        series.Counter(new SeriesKey(tid, NoVcpu, family, label1, LatencyBuckets.Label2(extra, LatencyBuckets.SumSlot))) += (long)ns;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void LearnVcpu(int slot, int vcpu)
    {
        if (slot >= 0 && vcpu >= 0)
            Shard.States.SetVcpu(slot, vcpu);
    }

    public void OnExit(in EventContext context, in ExitRecord record)
    {
        int slot = Track(in context);
        Count(KvmEventKind.Exit, context, record.Vcpu, MetricFamily.Exits, record.Reason, record.Isa);
        if (record.FailedVmEntry)
            Shard.Series.Counter(new SeriesKey(context.Tid, record.Vcpu, MetricFamily.FailedVmEntries, record.Reason, 0))++;
        if (slot < 0)
            return;
        ThreadStates states = Shard.States;
        ref ThreadStates.Slot s = ref states.LockThread(slot, context.Tid);
        if (Unsafe.IsNullRef(ref s))
            return;
        if (record.Vcpu >= 0)
            s.Vcpu = record.Vcpu;
        Pend(ref s, Half(in context, isExit: true, record.Reason, record.Isa));
        ThreadStates.Unlock(ref s);
    }

    public void OnEntry(in EventContext context, in EntryRecord record)
    {
        int slot = Track(in context);
        Shard.CountEvent(KvmEventKind.Entry);
        if (slot < 0)
            return;
        ThreadStates states = Shard.States;
        ref ThreadStates.Slot s = ref states.LockThread(slot, context.Tid);
        if (Unsafe.IsNullRef(ref s))
            return;
        if (record.Vcpu >= 0)
            s.Vcpu = record.Vcpu;
        Pend(ref s, Half(in context, isExit: false, 0, 0));
        ThreadStates.Unlock(ref s);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ExitHalf Half(in EventContext c, bool isExit, uint reason, uint isa) => new()
    {
        Ts = c.Timestamp, Reason = reason, Isa = (byte)isa, Cpu = (ushort)c.Cpu, IsExit = isExit ? (byte)1 : (byte)0,
        CpuLossGeneration = (int)Shard.States.LossGeneration(c.Cpu), GlobalLossGeneration = (int)Shard.States.GlobalLossGeneration,
    };

    /// <summary>Under the slot's lock: the half joins the thread's pending halves, and whatever every CPU has been read
    /// past is paired (see <see cref="ExitPairing"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Pend(ref ThreadStates.Slot s, in ExitHalf half)
    {
        PendingHalves pending = s.Pending ??= new PendingHalves();
        var sink = new ShardPairSink(this);
        if (pending.Full)
            ExitPairing.Resolve(ref s, pending, 0, ref sink);
        pending.Insert(in half);
        ExitPairing.Resolve(ref s, pending, Shard.States.ReadTo, ref sink);
    }

    private readonly struct ShardPairSink(AggregatingSink owner) : IPairSink
    {
        public void Pair(int tid, uint reason, uint isa, ulong ns) => owner.Observe(MetricFamily.ExitLatency, tid, reason, isa, ns);
        public void Drop(PairDrop why) => owner.Shard.States.CountDropped(PairKind.Exit, why);
    }

    public void OnUserspaceExit(in EventContext context, in UserspaceExitRecord record)
    {
        int slot = Track(in context); // ends the previous round trip first
        // An errno instead of an exit: -EINTR is a signal-driven restart, anything else a failed KVM_RUN.
        ulong errno = record.Errno >= 0 ? 0UL : record.Errno == -4 ? 1UL : 2UL;
        uint reason = errno == 0 ? record.Reason : 0;
        Count(KvmEventKind.UserspaceExit, context, NoVcpu, MetricFamily.UserspaceExits, reason, errno);
        if (slot < 0)
            return;
        ThreadStates states = Shard.States;
        ref ThreadStates.Slot s = ref states.Lock(slot);
        if (s.Tid == context.Tid && context.Timestamp > s.UserTs)
        {
            s.UserReason = reason;
            s.UserErrnoClass = (uint)errno;
            s.UserCpu = context.Cpu;
            s.UserLossGeneration = states.LossGeneration(context.Cpu);
            s.UserGlobalLossGeneration = states.GlobalLossGeneration;
            Volatile.Write(ref s.UserTs, context.Timestamp);
        }
        ThreadStates.Unlock(ref s);
    }

    public void OnPio(in EventContext context, in PioRecord record)
    {
        Track(in context);
        Count(KvmEventKind.Pio, context, NoVcpu, MetricFamily.Pio, record.Port, record.Write ? 1UL : 0UL);
    }

    public void OnMmio(in EventContext context, in MmioRecord record)
    {
        Track(in context);
        Count(KvmEventKind.Mmio, context, NoVcpu, MetricFamily.Mmio, record.Type, record.Gpa >> 12);
    }

    public void OnMsr(in EventContext context, in MsrRecord record)
    {
        Track(in context);
        Count(KvmEventKind.Msr, context, NoVcpu, MetricFamily.Msr, record.Msr, record.Write ? 1UL : 0UL);
    }

    public void OnCpuid(in EventContext context, in CpuidRecord record)
    {
        Track(in context);
        Count(KvmEventKind.Cpuid, context, NoVcpu, MetricFamily.Cpuid, record.Function);
    }

    public void OnEmulateInsn(in EventContext context, in EmulateInsnRecord record)
    {
        Track(in context);
        Count(KvmEventKind.EmulateInsn, context, NoVcpu, MetricFamily.EmulatedInstructions, 0);
    }

    public void OnInjectedException(in EventContext context, in InjectedExceptionRecord record)
    {
        Track(in context);
        Count(KvmEventKind.InjectedException, context, NoVcpu, MetricFamily.InjectedExceptions, record.Vector);
    }

    public void OnVcpuWakeup(in EventContext context, in VcpuWakeupRecord record)
    {
        int slot = Track(in context);
        Shard.CountEvent(KvmEventKind.VcpuWakeup);
        long pollAtStart = -1;
        int vcpu = NoVcpu;
        if (slot >= 0)
        {
            ref ThreadStates.Slot s = ref Shard.States.Lock(slot);
            if (s.Tid == context.Tid)
            {
                // A grow or shrink made as this halt ended was traced just before it: its old value is the window the
                // halt started with. Without one, the window is the one the last change (or the vCPU's creation) left.
                pollAtStart = s.PollAtHalt >= 0 ? s.PollAtHalt : s.PollNs;
                s.PollAtHalt = -1;
                vcpu = s.Vcpu;
                if (pollAtStart < 0)
                {
                    // Not known yet: held until the thread's first kvm_halt_poll_ns (its old value) or the agent naming
                    // a vCPU it saw created (0) says.
                    (s.Held ??= new HeldHalts()).Add(record.Ns, record.Waited, context.Timestamp);
                    ThreadStates.Unlock(ref s);
                    return;
                }
                if (s.Held is { Total: > 0 } held)
                    CountHeld(context.Tid, vcpu, held, pollAtStart);
            }
            ThreadStates.Unlock(ref s);
        }
        CountHalt(in context, vcpu, record.Waited, pollAtStart, record.Ns);
    }

    private void CountHalt(in EventContext context, int vcpu, bool waited, long pollAtStart, ulong ns)
    {
        HaltOutcome outcome = HeldHalts.Outcome(waited, pollAtStart);
        Shard.Series.Counter(new SeriesKey(context.Tid, vcpu, MetricFamily.HaltWakeups, (uint)outcome, 0))++;
        Observe(MetricFamily.HaltDuration, context.Tid, (uint)outcome, 0, ns);
    }

    /// <summary>Counts (and empties) a thread's held halts, which all started with window <paramref name="pollNs"/>.
    /// Under the thread's slot lock: rare (once per thread at most) and bounded (a few dozen buckets).</summary>
    private void CountHeld(int tid, int vcpu, HeldHalts held, long pollNs)
    {
        foreach ((MetricFamily family, uint outcome, ulong label2, long value) in held.Counts(pollNs))
            Shard.Series.Counter(new SeriesKey(tid, family == MetricFamily.HaltWakeups ? vcpu : NoVcpu, family, outcome, label2)) += value;
        held.Clear();
    }

    public void OnHaltPollNs(in EventContext context, in HaltPollNsRecord record)
    {
        int slot = Track(in context);
        int vcpu = record.Vcpu;
        if (slot >= 0)
        {
            ref ThreadStates.Slot s = ref Shard.States.Lock(slot);
            if (s.Tid == context.Tid)
            {
                if (record.Vcpu >= 0)
                    s.Vcpu = record.Vcpu;
                else
                    vcpu = s.Vcpu;
                // Halts held for want of the window: every one of them started with this change's old value (the
                // window changes only by these events).
                if (s.PollNs < 0 && s.Held is { Total: > 0 } held)
                    CountHeld(context.Tid, s.Vcpu, held, record.Old);
                if (s.PollAtHalt < 0)
                    s.PollAtHalt = record.Old;
                Volatile.Write(ref s.PollNs, record.New);
            }
            ThreadStates.Unlock(ref s);
        }
        Count(KvmEventKind.HaltPollNs, context, record.Vcpu, MetricFamily.HaltPollNsChanges, record.Grow ? 1u : 0u);
    }

    public void OnPageFault(in EventContext context, in PageFaultRecord record)
    {
        LearnVcpu(Track(in context), record.Vcpu);
        Count(KvmEventKind.PageFault, context, record.Vcpu, MetricFamily.MmuPageFaults, (uint)ClassifyFault(record.ErrorCode));
    }

    public void OnFastPageFault(in EventContext context, in FastPageFaultRecord record)
    {
        LearnVcpu(Track(in context), record.Vcpu);
        PageFaultKind kind = record.Ret switch
        {
            RetPfFixed => PageFaultKind.FastFixed,
            RetPfSpurious => PageFaultKind.FastSpurious,
            _ => PageFaultKind.FastNotFixed,
        };
        Count(KvmEventKind.FastPageFault, context, record.Vcpu, MetricFamily.MmuPageFaults, (uint)kind);
    }

    public void OnMmuEvent(in EventContext context, KvmEventKind kind)
    {
        Track(in context);
        Count(kind, context, NoVcpu, MetricFamily.MmuEvents, (uint)kind);
    }

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
