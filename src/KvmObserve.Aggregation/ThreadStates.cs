using System.Runtime.CompilerServices;
using KvmObserve.Aggregation.Series;

namespace KvmObserve.Aggregation;

/// <summary>
/// What the hot path remembers per thread between records: the exit waiting for its kvm_entry, the userspace exit
/// waiting for the thread's return, the halt-poll window, the vCPU index records name. Shared by all readers, since a
/// thread's records arrive through the ring of whichever CPU it ran on, and CPUs are read independently, so a
/// thread's records can come out of order across a migration: pairing goes by trace-clock time, not by arrival.
/// A fixed open-addressing table; a slot is claimed by compare-and-swap of its tid and changed under its own spin
/// lock (uncontended but for migrations). Slots of exited threads are freed by the aggregator.
/// </summary>
public sealed partial class ThreadStates
{
    private const int Empty = 0, Freed = -1;

    /// <summary>Pending state older than this (trace time) beside a newer record of the thread is dropped.</summary>
    public const ulong HorizonNs = 10_000_000_000;

    private readonly Slot[] _slots;
    private readonly int _mask;
    private readonly long[] _lossGenerationByCpu;
    private long _lossGeneration;
    private long _full;
    private readonly long[] _dropped = new long[4];


    public ThreadStates(int capacity = 16_384, int cpus = 1024)
    {
        int size = (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(capacity, 16));
        _slots = new Slot[size];
        _mask = size - 1;
        _lossGenerationByCpu = new long[Math.Max(cpus, 1)];
        _watermarks = new long[Math.Max(cpus, 1) * WatermarkStride];
    }


    /// <summary>Latency pairs that were dropped instead of measured.</summary>
    public long PairsDropped(PairKind kind, PairDrop why) => Volatile.Read(ref _dropped[(int)kind * 2 + (int)why]);

    internal void CountDropped(PairKind kind, PairDrop why) => Interlocked.Increment(ref _dropped[(int)kind * 2 + (int)why]);

    /// <summary>Pairs a source that pairs in the kernel dropped there (<paramref name="count"/> more since it last said).</summary>
    public void AddDropped(PairKind kind, PairDrop why, long count) => Interlocked.Add(ref _dropped[(int)kind * 2 + (int)why], count);

    /// <summary>A kvm_exit and the kvm_entry that ended its handling: what the pairing produced.</summary>
    internal readonly record struct Pair(int Tid, uint Reason, uint Isa, ulong Ns);

    /// <summary>Held halts whose window became known outside the hot path (a seeded vCPU), or that waited for it too
    /// long: for the aggregator to count at its next fold, with the window they started with (-1: unknown).</summary>
    private readonly System.Collections.Concurrent.ConcurrentQueue<Released> _released = new();

    internal readonly record struct Released(int Tid, int Vcpu, HeldHalts Halts, long PollNs);

    /// <summary>Releases the held halts of threads whose poll window has stayed unknown for <paramref name="patience"/>
    /// ns of trace time, to be counted as outcome "unknown" rather than never.</summary>
    internal void ReleaseStaleHalts(ulong now, ulong patience)
    {
        for (int i = 0; i < _slots.Length; i++)
        {
            if (Volatile.Read(ref _slots[i].Tid) <= 0 || _slots[i].Held is not { } held || held.Total == 0)
                continue;
            ref Slot s = ref Lock(i);
            if (s.Tid > 0 && s.Held is { Total: > 0 } h && h.Since + patience < now)
                _released.Enqueue(new Released(s.Tid, s.Vcpu, h.Take(), -1));
            Unlock(ref s);
        }
    }

    /// <summary>Held halts released since the last call.</summary>
    internal IEnumerable<Released> TakeReleasedHalts()
    {
        while (_released.TryDequeue(out Released r))
            yield return r;
    }

    /// <summary>Resolves the pending exits and entries of threads that have had no record since their CPUs were read
    /// further (the aggregator calls it at each fold); returns the pairs, counts the drops.</summary>
    internal List<Pair> ResolvePending()
    {
        var sink = new ListPairSink(this);
        ulong readTo = ReadEverywhere();
        for (int i = 0; i < _slots.Length; i++)
        {
            if (Volatile.Read(ref _slots[i].Tid) <= 0 || _slots[i].Pending is not { Count: > 1 })
                continue;
            ref Slot s = ref Lock(i);
            if (s.Tid > 0 && s.Pending is { Count: > 1 } pending)
                ExitPairing.Resolve(ref s, pending, readTo, ref sink);
            Unlock(ref s);
        }
        return sink.Pairs;
    }

    private readonly struct ListPairSink(ThreadStates states) : IPairSink
    {
        public List<Pair> Pairs { get; } = new();
        public void Pair(int tid, uint reason, uint isa, ulong ns) => Pairs.Add(new Pair(tid, reason, isa, ns));
        public void Drop(PairDrop why) => states.CountDropped(PairKind.Exit, why);
    }

    /// <summary>Records that found no free slot (their pairing and halt state were skipped).</summary>
    public long Full => Volatile.Read(ref _full);


    /// <summary>The slot index of <paramref name="tid"/>, claiming a free one; -1 when the table is full.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal int Find(int tid, ref int cache)
    {
        int c = cache;
        if ((uint)c < (uint)_slots.Length && Volatile.Read(ref _slots[c].Tid) == tid)
            return c;
        int i = FindSlow(tid);
        cache = i;
        return i;
    }

    private int FindSlow(int tid)
    {
        int start = Hash(tid) & _mask;
        int firstFreed = -1;
        for (int n = 0, i = start; n < _slots.Length; n++, i = (i + 1) & _mask)
        {
            int t = Volatile.Read(ref _slots[i].Tid);
            if (t == tid)
                return i;
            if (t == Freed)
            {
                if (firstFreed < 0)
                    firstFreed = i;
                continue;
            }
            if (t != Empty)
                continue;
            // Not in the table: claim the first freed slot on the way, else this empty one.
            if (firstFreed >= 0 && Claim(firstFreed, Freed, tid))
                return firstFreed;
            if (Claim(i, Empty, tid))
                return i;
            return FindSlow(tid); // another reader claimed it meanwhile (perhaps for this tid)
        }
        Interlocked.Increment(ref _full);
        return -1;
    }

    private bool Claim(int i, int expected, int tid)
    {
        ref Slot s = ref _slots[i];
        if (Interlocked.CompareExchange(ref s.Lock, 1, 0) != 0)
            return false;
        bool claimed = s.Tid == expected;
        if (claimed)
        {
            s.Reset();
            Volatile.Write(ref s.Tid, tid);
        }
        Volatile.Write(ref s.Lock, 0);
        return claimed;
    }

    private static int Hash(int tid) => (int)((uint)tid * 0x9E3779B1u >> 7);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ref Slot Lock(int index)
    {
        ref Slot s = ref _slots[index];
        if (Interlocked.CompareExchange(ref s.Lock, 1, 0) != 0)
            SpinLock(ref s);
        return ref s;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void SpinLock(ref Slot s)
    {
        var spin = new SpinWait();
        while (Interlocked.CompareExchange(ref s.Lock, 1, 0) != 0)
            spin.SpinOnce(sleep1Threshold: -1);
    }

    /// <summary>Locks the slot if it still belongs to <paramref name="tid"/> (it may have been freed and taken by
    /// another thread since it was found); otherwise leaves it unlocked and returns a null ref.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ref Slot LockThread(int index, int tid)
    {
        ref Slot s = ref Lock(index);
        if (s.Tid == tid)
            return ref s;
        Unlock(ref s);
        return ref Unsafe.NullRef<Slot>();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Unlock(ref Slot s) => Volatile.Write(ref s.Lock, 0);

    /// <summary>Whether the slot has a userspace exit waiting for the thread's return (read without the lock).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool UserspacePending(int index) => Volatile.Read(ref _slots[index].UserTs) != 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void SetVcpu(int index, int vcpu)
    {
        if (Volatile.Read(ref _slots[index].Vcpu) != vcpu)
            Volatile.Write(ref _slots[index].Vcpu, vcpu);
    }

    /// <summary>The vCPU index records of this thread named, or -1.</summary>
    public int VcpuOf(int tid)
    {
        int i = Lookup(tid);
        return i < 0 ? -1 : Volatile.Read(ref _slots[i].Vcpu);
    }

    /// <summary>The thread's halt-poll window (ns) as its last kvm_halt_poll_ns set it, or -1.</summary>
    public long PollNsOf(int tid)
    {
        int i = Lookup(tid);
        return i < 0 ? -1 : Volatile.Read(ref _slots[i].PollNs);
    }

    /// <summary>Every thread with a state: tid, vCPU and halt-poll window (-1 where unknown).</summary>
    public List<(int Tid, int Vcpu, long PollNs)> Threads()
    {
        var list = new List<(int, int, long)>();
        for (int i = 0; i < _slots.Length; i++)
        {
            int tid = Volatile.Read(ref _slots[i].Tid);
            if (tid > 0)
                list.Add((tid, Volatile.Read(ref _slots[i].Vcpu), Volatile.Read(ref _slots[i].PollNs)));
        }
        return list;
    }

    /// <summary>Sets the halt-poll window of a thread whose vCPU was created while the agent ran (KVM starts every
    /// vCPU's window at 0), unless a kvm_halt_poll_ns has already told it. Halts held for want of it started with it:
    /// they are released to be counted (the thread may never halt again to have them replayed).</summary>
    public void SeedPollWindow(int tid, long pollNs)
    {
        int cache = -1;
        int i = Find(tid, ref cache);
        if (i < 0)
            return;
        ref Slot s = ref Lock(i);
        if (s.Tid == tid && s.PollNs < 0)
        {
            Volatile.Write(ref s.PollNs, pollNs);
            if (s.Held is { Total: > 0 } held)
                _released.Enqueue(new Released(tid, s.Vcpu, held.Take(), pollNs));
        }
        Unlock(ref s);
    }

    /// <summary>
    /// For a source that keeps each thread's state in the kernel: what that state says now. <paramref name="vcpu"/> and
    /// <paramref name="pollNs"/> are -1 where the kernel does not know them; <paramref name="firstOld"/> is the old value of
    /// the thread's first kvm_halt_poll_ns the kernel saw (-1: none yet), the window every halt before it started with,
    /// so halts held for want of it are released with it.
    /// </summary>
    public void Learn(int tid, int vcpu, long pollNs, long firstOld)
    {
        int cache = -1;
        int i = Find(tid, ref cache);
        if (i < 0)
            return;
        ref Slot s = ref Lock(i);
        if (s.Tid == tid)
        {
            if (vcpu >= 0)
                Volatile.Write(ref s.Vcpu, vcpu);
            if (firstOld >= 0 && s.Held is { Total: > 0 } held)
                _released.Enqueue(new Released(tid, s.Vcpu, held.Take(), firstOld));
            if (pollNs >= 0)
                Volatile.Write(ref s.PollNs, pollNs);
        }
        Unlock(ref s);
    }

    /// <summary>
    /// For a source that counts halts in the kernel: <paramref name="value"/> more of a halt series the kernel could not
    /// classify (the thread's window was unknown there). Returns the window they started with when it is known here
    /// (the kernel's <paramref name="firstOld"/>, or the window seeded for a vCPU created while the agent ran), for the
    /// caller to count them with; otherwise holds them, as the hot path holds its own, and returns -1.
    /// </summary>
    public long ClassifyOrHold(int tid, bool waited, MetricFamily family, ulong label2, long value, long firstOld)
    {
        if (firstOld >= 0)
            return firstOld;
        int cache = -1;
        int i = Find(tid, ref cache);
        if (i < 0)
            return NoRoom;
        ref Slot s = ref Lock(i);
        long window = NoRoom; // the slot went to another thread meanwhile
        if (s.Tid == tid)
        {
            window = Volatile.Read(ref s.PollNs);
            if (window < 0)
                (s.Held ??= new HeldHalts()).AddCounted(waited, family, label2, value, MonotonicNow());
        }
        Unlock(ref s);
        return window;
    }

    /// <summary>What <see cref="ClassifyOrHold"/> returns when it could neither classify nor hold (no slot): the caller
    /// counts the halts as outcome "unknown" rather than lose them.</summary>
    public const long NoRoom = -2;

    /// <summary>Frees the slot of a thread whose VM has been gone for the grace period. Not sooner: its last records
    /// can still be in a ring that is read later, and they need the state (a halt's poll window above all). Halts still
    /// held by then were released as stale long before.</summary>
    public void Forget(int tid)
    {
        int i = Lookup(tid);
        if (i < 0)
            return;
        ref Slot s = ref Lock(i);
        if (s.Tid == tid)
            s.Tid = Freed;
        Unlock(ref s);
    }

    private int Lookup(int tid)
    {
        for (int n = 0, i = Hash(tid) & _mask; n < _slots.Length; n++, i = (i + 1) & _mask)
        {
            int t = Volatile.Read(ref _slots[i].Tid);
            if (t == tid)
                return i;
            if (t == Empty)
                return -1;
        }
        return -1;
    }

    internal struct Slot
    {
        public int Tid;
        public int Lock;
        /// <summary>From the vcpu_id of the thread's records, -1 until one names it.</summary>
        public int Vcpu;

        /// <summary>The thread's exits and entries not yet paired (see <see cref="ExitPairing"/>); null until its first.</summary>
        public PendingHalves? Pending;

        // The kvm_userspace_exit waiting for the thread's next record (UserTs 0: none).
        public ulong UserTs;
        public uint UserReason;
        public uint UserErrnoClass;
        public int UserCpu;
        public long UserLossGeneration;
        public long UserGlobalLossGeneration;

        /// <summary>Halt-poll window after the last kvm_halt_poll_ns, -1 unknown.</summary>
        public long PollNs;
        /// <summary>The window the halt under way started with (the old value of a change made as it ended), -1: no
        /// change since the last wake-up.</summary>
        public long PollAtHalt;

        /// <summary>Halts that ended while the window they started with was not known yet (the thread's vCPU existed
        /// before the agent, or the agent had not named it yet): classified once it is.</summary>
        public HeldHalts? Held;

        /// <summary>Everything but Tid and Lock back to "nothing known".</summary>
        public void Reset()
        {
            Vcpu = -1;
            Pending?.Clear();
            UserTs = 0;
            PollNs = -1;
            PollAtHalt = -1;
            Held?.Clear();
        }
    }
}
