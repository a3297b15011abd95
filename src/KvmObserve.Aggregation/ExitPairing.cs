using System.Runtime.CompilerServices;

namespace KvmObserve.Aggregation;

/// <summary>One kvm_exit or kvm_entry of a thread, waiting for its other half (24 bytes).</summary>
internal struct ExitHalf
{
    public ulong Ts;
    public uint Reason;
    public ushort Cpu;
    public byte IsExit;
    public byte Isa;
    /// <summary>Loss generations when the half was read: its CPU's, and all CPUs' (compared for equality only).</summary>
    public int CpuLossGeneration, GlobalLossGeneration;
}

/// <summary>Where <see cref="ExitPairing"/> puts what it resolved.</summary>
internal interface IPairSink
{
    void Pair(int tid, uint reason, uint isa, ulong ns);
    void Drop(PairDrop why);
}

/// <summary>
/// A thread's exits and entries not yet paired, in trace-time order: a deque that grows (by doubling, up to
/// <see cref="Capacity"/>) to what the slowest CPU's reader lags behind, and is kept for the thread's life.
/// </summary>
internal sealed class PendingHalves
{
    /// <summary>Halves kept at most: past it, the oldest are resolved as if every CPU had been read that far (a reader
    /// that stopped must not hold the agent's memory), and counted as such.</summary>
    public const int Capacity = 1 << 15;

    private ExitHalf[] _halves = new ExitHalf[16];
    private int _head;

    public int Count { get; private set; }

    public ref ExitHalf this[int i] => ref _halves[(_head + i) & (_halves.Length - 1)];

    public bool Full => Count == Capacity;

    /// <summary>Inserts in trace-time order: at the end but for the halves of a CPU read behind another.</summary>
    public void Insert(in ExitHalf half)
    {
        if (Count == _halves.Length)
            Grow();
        int i = Count;
        while (i > 0 && this[i - 1].Ts > half.Ts)
        {
            this[i] = this[i - 1];
            i--;
        }
        this[i] = half;
        Count++;
    }

    public void RemoveFront(int n)
    {
        _head = (_head + n) & (_halves.Length - 1);
        Count -= n;
    }

    public void Clear() => _head = Count = 0;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void Grow()
    {
        var bigger = new ExitHalf[_halves.Length * 2];
        for (int i = 0; i < Count; i++)
            bigger[i] = this[i];
        _halves = bigger;
        _head = 0;
    }
}

/// <summary>
/// Pairs each kvm_exit with the thread's next kvm_entry in trace time, whatever order the CPUs' rings are read in.
/// A thread's records come through the ring of whichever CPU it ran on, and each CPU is read on its own: until every
/// CPU has been read past an entry, another CPU may still hold an exit and entry of the thread from before it (the
/// thread left, ran there, and came back). So halves wait, in order, until every CPU has been read past them; then
/// the front is plain: an exit followed by an entry is a pair, an exit followed by an exit lost its entry, an entry
/// with no exit before it lost its exit (or came before the agent).
/// </summary>
internal static class ExitPairing
{
    /// <summary>Resolves the thread's halves that every CPU has been read past (<paramref name="readTo"/>), under its
    /// slot lock.</summary>
    public static void Resolve<TSink>(ref ThreadStates.Slot s, PendingHalves p, ulong readTo, ref TSink sink)
        where TSink : struct, IPairSink
    {
        while (p.Count > 0)
        {
            ref ExitHalf h = ref p[0];
            if (h.Ts > readTo && !p.Full)
                return;
            if (h.IsExit == 0)
            {
                sink.Drop(PairDrop.Unmatched);
                p.RemoveFront(1);
                continue;
            }
            if (p.Count == 1)
                return; // the exit being handled now: its entry is still to come
            ref ExitHalf next = ref p[1];
            if (next.Ts > readTo && !p.Full)
                return;
            if (next.IsExit != 0)
            {
                sink.Drop(PairDrop.Unmatched);
                p.RemoveFront(1);
                continue;
            }
            Emit(s.Tid, in h, in next, ref sink);
            p.RemoveFront(2);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Emit<TSink>(int tid, in ExitHalf exit, in ExitHalf entry, ref TSink sink) where TSink : struct, IPairSink
    {
        // Records lost between the two (on the one CPU, or on any when they are on two) may hide the real partner.
        bool gap = exit.Cpu == entry.Cpu
            ? exit.CpuLossGeneration != entry.CpuLossGeneration
            : exit.GlobalLossGeneration != entry.GlobalLossGeneration;
        if (gap)
            sink.Drop(PairDrop.Gap);
        else if (entry.Ts - exit.Ts > ThreadStates.HorizonNs)
            sink.Drop(PairDrop.Unmatched);
        else
            sink.Pair(tid, exit.Reason, exit.Isa, entry.Ts - exit.Ts);
    }
}
