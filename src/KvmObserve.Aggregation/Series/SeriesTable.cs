namespace KvmObserve.Aggregation.Series;

/// <summary>
/// A preallocated open-addressing table of counters, written by exactly one thread (its reader) and read by any.
/// A new entry's key is written before its Used flag is published, so a concurrent reader never sees a half-written
/// key. Past the series limit an event is counted into its family's overflow counter and nothing is lost.
/// </summary>
public sealed class SeriesTable
{
    private readonly Entry[] _entries;
    private readonly int _mask;
    private readonly long[] _overflow = new long[MetricFamilies.Count];
    private int _count;
    private int _version;

    private readonly EventWaitHandle? _insertSignal;

    /// <param name="insertSignal">Set whenever a series is added (rare), so a resolver can name new threads at once.</param>
    public SeriesTable(int seriesLimit, EventWaitHandle? insertSignal = null)
    {
        _insertSignal = insertSignal;
        if (seriesLimit < 1)
            throw new ArgumentOutOfRangeException(nameof(seriesLimit));
        SeriesLimit = seriesLimit;
        int capacity = (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)(seriesLimit + seriesLimit / 3 + 1));
        _entries = new Entry[capacity];
        _mask = capacity - 1;
    }

    public int SeriesLimit { get; }

    public int Count => Volatile.Read(ref _count);

    /// <summary>Changes whenever a series is added; readers use it to notice new threads cheaply.</summary>
    public int Version => Volatile.Read(ref _version);

    /// <summary>The counter of <paramref name="key"/>, created at zero when new; the family's overflow counter when full.</summary>
    public ref long Counter(in SeriesKey key)
    {
        int i = key.Hash() & _mask;
        while (true)
        {
            ref Entry e = ref _entries[i];
            if (e.Used == 0)
                break;
            if (e.Key == key)
                return ref e.Value;
            i = (i + 1) & _mask;
        }
        return ref Insert(in key, i);
    }

    private ref long Insert(in SeriesKey key, int slot)
    {
        if (_count >= SeriesLimit)
            return ref _overflow[(int)key.Family];
        ref Entry e = ref _entries[slot];
        e.Key = key;
        e.Value = 0;
        Volatile.Write(ref e.Used, 1);
        Volatile.Write(ref _count, _count + 1);
        Volatile.Write(ref _version, _version + 1);
        _insertSignal?.Set();
        return ref e.Value;
    }

    /// <summary>Events counted past the series limit, per family.</summary>
    public long Overflow(MetricFamily family) => Volatile.Read(ref _overflow[(int)family]);

    /// <summary>Calls <paramref name="visit"/> for each published series. Safe to run while the writer works.</summary>
    public void ForEach<TVisitor>(ref TVisitor visit) where TVisitor : struct, ISeriesVisitor
    {
        Entry[] entries = _entries;
        for (int i = 0; i < entries.Length; i++)
        {
            if (Volatile.Read(ref entries[i].Used) == 0)
                continue;
            visit.Visit(in entries[i].Key, Volatile.Read(ref entries[i].Value));
        }
    }

    private struct Entry
    {
        public SeriesKey Key;
        public long Value;
        public int Used;
    }
}

public interface ISeriesVisitor
{
    void Visit(in SeriesKey key, long value);
}
