using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;

namespace KvmObserve.Aggregation;

/// <summary>
/// Everything one reader thread (one CPU's ring buffer) counts. Only that thread writes; scrapes read it
/// concurrently and merge all shards, so the hot path takes no lock.
/// </summary>
public sealed class Shard
{
    private readonly long[] _eventsByKind = new long[Enum.GetValues<KvmEventKind>().Length];
    private readonly long[] _decodeErrorsByKind = new long[Enum.GetValues<KvmEventKind>().Length];
    private long _lostEvents;
    private long _lostUncounted;
    private long _corruptPages;
    private long _bytesRead;

    public Shard(int cpu, int seriesLimit, EventWaitHandle? newSeriesSignal = null, ThreadStates? states = null)
    {
        Cpu = cpu;
        Series = new SeriesTable(seriesLimit, newSeriesSignal);
        States = states ?? new ThreadStates(cpus: cpu + 1);
    }

    public int Cpu { get; }

    public SeriesTable Series { get; }

    /// <summary>Per-thread pairing and halt state, shared by every shard of an aggregator.</summary>
    public ThreadStates States { get; }

    /// <summary>The writer holds it while it works through a batch (a page, a ring drain); the aggregator takes it to
    /// compact <see cref="Series"/>. Uncontended but for that.</summary>
    public object Gate { get; } = new();

    /// <summary>The writer's last thread-state slot: consecutive records of one thread skip the lookup.</summary>
    internal int StateCache = -1;

    /// <summary>The flight recorder's ring for this CPU's raw records; null when recording is off (the default).</summary>
    public Recording.RecordLog? Log { get; set; }

    public long EventsOf(KvmEventKind kind) => Volatile.Read(ref _eventsByKind[(int)kind]);
    public long DecodeErrorsOf(KvmEventKind kind) => Volatile.Read(ref _decodeErrorsByKind[(int)kind]);

    /// <summary>Events the kernel reported lost (overwritten or dropped) on this CPU.</summary>
    public long LostEvents => Volatile.Read(ref _lostEvents);

    /// <summary>Pages that said events were lost without room to say how many (each counted as one in LostEvents).</summary>
    public long LostUncounted => Volatile.Read(ref _lostUncounted);

    public long CorruptPages => Volatile.Read(ref _corruptPages);

    public long BytesRead => Volatile.Read(ref _bytesRead);

    internal void CountEvent(KvmEventKind kind) => _eventsByKind[(int)kind]++;

    /// <summary>For sources that learn counts in bulk (counters) rather than one record at a time.</summary>
    public void AddEvents(KvmEventKind kind, long count) => _eventsByKind[(int)kind] += count;

    public void CountDecodeError(KvmEventKind kind) => _decodeErrorsByKind[(int)kind]++;

    public void CountLost(ulong count, bool exact)
    {
        States.NoteLoss(Cpu);
        _lostEvents += (long)count;
        if (!exact)
            _lostUncounted++;
    }

    public void CountCorruptPage() => _corruptPages++;

    public void CountBytes(int bytes) => _bytesRead += bytes;
}

/// <summary>Which start-to-end measurement a dropped pair belongs to.</summary>
public enum PairKind
{
    /// <summary>kvm_exit to kvm_entry.</summary>
    Exit,
    /// <summary>kvm_userspace_exit to the thread's next record.</summary>
    Userspace,
}

public enum PairDrop
{
    /// <summary>Records were lost between start and end: the pair may span events that were never read.</summary>
    Gap,
    /// <summary>A start without its end (or an end without its start): replaced by a newer one or too old.</summary>
    Unmatched,
}
