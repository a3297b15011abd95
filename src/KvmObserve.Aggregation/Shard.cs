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

    public Shard(int cpu, int seriesLimit, EventWaitHandle? newSeriesSignal = null, ThreadStates? states = null,
        int maxSeriesLimit = 0, object? foldGate = null)
    {
        Cpu = cpu;
        Series = new SeriesTable(seriesLimit, newSeriesSignal, maxSeriesLimit, foldGate);
        States = states ?? new ThreadStates(cpus: cpu + 1);
    }

    public int Cpu { get; }

    public SeriesTable Series { get; }

    /// <summary>Per-thread pairing and halt state, shared by every shard of an aggregator.</summary>
    public ThreadStates States { get; }

    /// <summary>The writer holds it while it works through a batch (a page, a ring drain); the aggregator takes it to
    /// compact <see cref="Series"/>. Uncontended but for that.</summary>
    public object Gate { get; } = new();

    /// <summary>Told the process of each thread this shard's writer sees (null for a shard of no aggregator).</summary>
    public Discovery.VmRegistry? Registry { get; init; }

    private readonly HashSet<int> _notedTids = new();
    private int _lastNotedTid;

    /// <summary>Tells the registry that <paramref name="tid"/> is of process <paramref name="tgid"/>, where a record
    /// says so (<see cref="Discovery.VmRegistry.NoteProcess"/>): once per thread, so a record of the thread seen last
    /// costs one compare.</summary>
    public void NoteProcess(int tid, int tgid)
    {
        if (tid == _lastNotedTid || Registry is null)
            return;
        _lastNotedTid = tid;
        if (_notedTids.Count >= 65_536) // a host's threads over years: forget, and tell again
            _notedTids.Clear();
        if (_notedTids.Add(tid))
            Registry.NoteProcess(tid, tgid);
    }

    /// <summary>Tells the registry that thread <paramref name="creator"/> created thread <paramref name="tid"/> in its
    /// own process (<see cref="Discovery.VmRegistry.NoteThreadCreated"/>).</summary>
    public void NoteThreadCreated(int tid, int creator) => Registry?.NoteThreadCreated(tid, creator);

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

    /// <summary>Counts <paramref name="count"/> lost events; <paramref name="gap"/> false when the gap they left
    /// in this CPU's records was already noted (<see cref="ThreadStates.NoteLoss"/>) as the reader met it.</summary>
    public void CountLost(ulong count, bool exact, bool gap = true)
    {
        if (gap)
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
