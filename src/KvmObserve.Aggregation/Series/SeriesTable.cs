namespace KvmObserve.Aggregation.Series;

/// <summary>
/// A preallocated open-addressing table of counters, written by exactly one thread (its reader) and read by any.
/// A new entry's key is written before its Used flag is published, so a concurrent reader never sees a half-written
/// key. The aggregator folds each counter's growth into its store (<see cref="Fold"/>) and, holding the shard's gate
/// so the writer waits, drops entries that have nothing left to fold (<see cref="Compact"/>).
/// Past the series limit an event is counted under its thread's "other" key of the family (a reserve past the limit
/// keeps room for those), and past that into the family's overflow counter: nothing is lost.
/// </summary>
public sealed class SeriesTable
{
    private Entry[] _entries;
    private int _mask;
    private readonly long[] _overflow = new long[MetricFamilies.Count];
    private readonly long[] _overflowFolded = new long[MetricFamilies.Count];
    private int _count;
    private int _version;
    private long _discard;

    private readonly EventWaitHandle? _insertSignal;
    private readonly object? _foldGate;

    /// <param name="insertSignal">Set whenever a series is added (rare), so a resolver can name new threads at once.</param>
    /// <param name="maxSeriesLimit">What the table may grow to, doubling, when it fills (default: never grows).</param>
    /// <param name="foldGate">The lock every <see cref="Fold"/> and <see cref="Compact"/> runs under: growing moves the
    /// entries, so it happens only while the writer holds it, never under a fold.</param>
    public SeriesTable(int seriesLimit, EventWaitHandle? insertSignal = null, int maxSeriesLimit = 0, object? foldGate = null)
    {
        _insertSignal = insertSignal;
        if (seriesLimit < 1)
            throw new ArgumentOutOfRangeException(nameof(seriesLimit));
        _foldGate = foldGate;
        MaxSeriesLimit = foldGate is null ? seriesLimit : Math.Max(seriesLimit, maxSeriesLimit);
        SeriesLimit = seriesLimit;
        Reserve = Math.Max(16, seriesLimit / 8);
        _entries = NewEntries(seriesLimit + Reserve);
        _mask = _entries.Length - 1;
    }

    /// <summary>The most <see cref="SeriesLimit"/> can grow to.</summary>
    public int MaxSeriesLimit { get; }

    /// <summary>Times the table doubled.</summary>
    public int Growths { get; private set; }

    /// <summary>Room for 4/3 of the entries, rounded up to a power of two: probes stay short.</summary>
    private static Entry[] NewEntries(int entries) =>
        new Entry[(int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)(entries + entries / 3 + 1))];

    public int SeriesLimit { get; private set; }

    /// <summary>Entries past <see cref="SeriesLimit"/> kept for "other" keys.</summary>
    public int Reserve { get; private set; }

    public int Count => Volatile.Read(ref _count);

    /// <summary>Changes whenever a series is added; readers use it to notice new threads cheaply.</summary>
    public int Version => Volatile.Read(ref _version);

    /// <summary>The counter of <paramref name="key"/>, created at zero when new; past the limit, its thread's "other"
    /// counter of the family, then the family's overflow counter.</summary>
    public ref long Counter(in SeriesKey key)
    {
        Entry[] entries = _entries;
        int mask = _mask;
        int i = key.Hash() & mask;
        while (true)
        {
            ref Entry e = ref entries[i];
            if (e.Used == 0)
                break;
            if (e.Key == key)
                return ref e.Value;
            i = (i + 1) & mask;
        }
        return ref Insert(in key, i);
    }

    private ref long Insert(in SeriesKey key, int slot)
    {
        if (_count >= SeriesLimit * 3 / 4 && SeriesLimit < MaxSeriesLimit && TryGrow(_count >= SeriesLimit))
            return ref Counter(in key); // moved: find the slot again
        if (_count >= SeriesLimit)
            return ref InsertPastLimit(in key);
        return ref Publish(key, slot);
    }

    /// <summary>Doubles the table (up to <see cref="MaxSeriesLimit"/>) if no fold or compaction runs; when full it
    /// waits a little for one to end, since the alternative is counting into "other".</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private bool TryGrow(bool full)
    {
        bool taken = false;
        try
        {
            // A compaction holds this gate and then waits for the writer's: the timeout keeps that wait short.
            Monitor.TryEnter(_foldGate!, full ? 50 : 0, ref taken);
            if (!taken)
                return false;
            int limit = (int)Math.Min((long)SeriesLimit * 2, MaxSeriesLimit);
            int reserve = Math.Max(16, limit / 8);
            Entry[] old = _entries;
            Entry[] entries = NewEntries(limit + reserve);
            int mask = entries.Length - 1;
            for (int i = 0; i < old.Length; i++)
            {
                if (old[i].Used == 0)
                    continue;
                int j = old[i].Key.Hash() & mask;
                while (entries[j].Used != 0)
                    j = (j + 1) & mask;
                entries[j] = old[i];
            }
            _mask = mask;
            Volatile.Write(ref _entries, entries);
            SeriesLimit = limit;
            Reserve = reserve;
            Growths++;
            return true;
        }
        finally
        {
            if (taken)
                Monitor.Exit(_foldGate!);
        }
    }

    private ref long Publish(SeriesKey key, int slot)
    {
        ref Entry e = ref _entries[slot];
        e.Key = key;
        e.Value = 0;
        e.Folded = 0;
        e.IdleFolds = 0;
        Volatile.Write(ref e.Used, 1);
        Volatile.Write(ref _count, _count + 1);
        Volatile.Write(ref _version, _version + 1);
        _insertSignal?.Set();
        return ref e.Value;
    }

    private ref long InsertPastLimit(in SeriesKey key)
    {
        (uint label1, ulong label2) = MetricFamilies.OtherOf(key.Family, key.Label1, key.Label2);
        if (MetricFamilies.IsOther(key.Family, key.Label1, key.Label2) || _count >= SeriesLimit + Reserve)
        {
            // A histogram's overflow counts observations (as +Inf); its sum has nowhere to go.
            if (MetricFamilies.IsHistogram(key.Family) && LatencyBuckets.BucketOf(key.Label2) == LatencyBuckets.SumSlot)
                return ref _discard;
            return ref _overflow[(int)key.Family];
        }
        var other = new SeriesKey(key.Tid, key.Vcpu, key.Family, label1, label2);
        int i = other.Hash() & _mask;
        while (true)
        {
            ref Entry e = ref _entries[i];
            if (e.Used == 0)
                return ref Publish(other, i);
            if (e.Key == other)
                return ref e.Value;
            i = (i + 1) & _mask;
        }
    }

    /// <summary>Events counted past the series limit, per family.</summary>
    public long Overflow(MetricFamily family) => Volatile.Read(ref _overflow[(int)family]);

    /// <summary>Calls <paramref name="visit"/> for each published series. Safe to run while the writer works.</summary>
    public void ForEach<TVisitor>(ref TVisitor visit) where TVisitor : struct, ISeriesVisitor
    {
        Entry[] entries = Volatile.Read(ref _entries);
        for (int i = 0; i < entries.Length; i++)
        {
            if (Volatile.Read(ref entries[i].Used) == 0)
                continue;
            visit.Visit(in entries[i].Key, Volatile.Read(ref entries[i].Value));
        }
    }

    /// <summary>
    /// Hands each series' growth since the last fold to <paramref name="visit"/> (and each family's overflow growth
    /// under a key with Tid 0 and Label1 <see cref="OverflowLabel"/>). One folder at a time (the aggregator's lock); the
    /// writer keeps counting meanwhile, and what it adds after a value is read goes to the next fold.
    /// </summary>
    public void Fold<TVisitor>(ref TVisitor visit) where TVisitor : struct, IFoldVisitor
    {
        Entry[] entries = Volatile.Read(ref _entries);
        for (int i = 0; i < entries.Length; i++)
        {
            ref Entry e = ref entries[i];
            if (Volatile.Read(ref e.Used) == 0)
                continue;
            long value = Volatile.Read(ref e.Value);
            long delta = value - e.Folded;
            if (delta == 0)
            {
                e.IdleFolds++;
                continue;
            }
            if (!visit.Fold(in e.Key, delta))
                continue;
            e.Folded = value;
            e.IdleFolds = 0;
        }
        for (int f = 0; f < _overflow.Length; f++)
        {
            long value = Volatile.Read(ref _overflow[f]);
            long delta = value - _overflowFolded[f];
            if (delta == 0)
                continue;
            ulong label2 = MetricFamilies.IsHistogram((MetricFamily)f) ? LatencyBuckets.Label2(0, LatencyBuckets.Count - 1) : 0;
            if (visit.Fold(new SeriesKey(0, -1, (MetricFamily)f, OverflowLabel, label2), delta))
                _overflowFolded[f] = value;
        }
    }

    /// <summary>Label1 of the key <see cref="Fold"/> reports a family's overflow under.</summary>
    public const uint OverflowLabel = uint.MaxValue - 1;

    /// <summary>
    /// Removes every entry that <paramref name="drop"/> chooses and that has nothing left to fold. Only while the
    /// writer cannot run (the caller holds the shard's gate) and after a <see cref="Fold"/>.
    /// </summary>
    /// <returns>How many entries were removed.</returns>
    public int Compact(Func<SeriesKey, int, bool> drop)
    {
        Entry[] old = _entries;
        var keep = new List<int>(_count);
        int removed = 0;
        for (int i = 0; i < old.Length; i++)
        {
            if (old[i].Used == 0)
                continue;
            if (old[i].Value == old[i].Folded && drop(old[i].Key, old[i].IdleFolds))
                removed++;
            else
                keep.Add(i);
        }
        if (removed == 0)
            return 0;
        var entries = new Entry[old.Length];
        int mask = entries.Length - 1;
        foreach (int i in keep)
        {
            int j = old[i].Key.Hash() & mask;
            while (entries[j].Used != 0)
                j = (j + 1) & mask;
            entries[j] = old[i];
        }
        _mask = mask;
        Volatile.Write(ref _entries, entries);
        Volatile.Write(ref _count, keep.Count);
        Volatile.Write(ref _version, _version + 1);
        return removed;
    }

    private struct Entry
    {
        public SeriesKey Key;
        public long Value;
        /// <summary>Value at the last fold (the folder's field).</summary>
        public long Folded;
        /// <summary>Folds in a row that found nothing new (the folder's field).</summary>
        public int IdleFolds;
        public int Used;
    }
}

public interface ISeriesVisitor
{
    void Visit(in SeriesKey key, long value);
}

public interface IFoldVisitor
{
    /// <summary>Takes a series' growth; false leaves it for a later fold.</summary>
    bool Fold(in SeriesKey key, long delta);
}
