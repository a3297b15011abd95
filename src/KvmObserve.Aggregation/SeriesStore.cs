using KvmObserve.Aggregation.Series;

namespace KvmObserve.Aggregation;

/// <summary>
/// The exported series, keyed by VM name (so a VM restarted under its name continues them). The aggregator folds
/// each shard's growth into it; it bounds what it keeps three ways:
/// <list type="bullet">
/// <item>keyed families (port, page, MSR, leaf, vector) keep their own series only for the top K keys per VM by rate,
/// the rest counted as "other" (a key enters when it runs more than twice as hot as the coolest one kept);</item>
/// <item>every family has a hard series limit; past it, new label sets are counted in the family's overflow series;</item>
/// <item>a VM's series go when the VM has been gone for the grace period (<see cref="RemoveVm"/>).</item>
/// </list>
/// Only the aggregator touches it, under its lock.
/// </summary>
public sealed class SeriesStore
{
    /// <summary>The vm label of a family's overflow series.</summary>
    public const string OverflowVm = "overflow";

    /// <summary>Candidates tracked per VM and keyed family, beyond which new keys go straight to "other".</summary>
    private const int CandidatesPerKey = 64;

    private readonly Dictionary<StoreKey, Cell> _cells = new();
    private readonly int[] _series = new int[MetricFamilies.Count];
    private readonly long[] _overflowEvents = new long[MetricFamilies.Count];
    private readonly Dictionary<(string Vm, MetricFamily Family), HotKeys> _hot = new();

    public SeriesStore(int familyLimit, int topK)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(familyLimit, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(topK, 1);
        FamilyLimit = familyLimit;
        TopK = topK;
    }

    public int FamilyLimit { get; }
    public int TopK { get; }

    /// <summary>Label sets the family has now (its overflow series not included; a histogram counts once).</summary>
    public int SeriesOf(MetricFamily family) => _series[(int)family];

    /// <summary>Events counted into the family's overflow series.</summary>
    public long OverflowOf(MetricFamily family) => _overflowEvents[(int)family];

    /// <summary>Adds <paramref name="delta"/> to a series (a histogram's bucket or sum, by Label2).</summary>
    public void Add(string vm, int vcpu, MetricFamily family, uint label1, ulong label2, long delta)
    {
        if (MetricFamilies.IsKeyed(family) && !MetricFamilies.IsOther(family, label1, label2)
            && !Hot(vm, family).Admit(label1, label2, delta, TopK))
            (label1, label2) = MetricFamilies.OtherOf(family, label1, label2);
        bool histogram = MetricFamilies.IsHistogram(family);
        var key = new StoreKey(vm, vcpu, family, label1, histogram ? LatencyBuckets.ExtraOf(label2) : label2);
        if (!_cells.TryGetValue(key, out Cell? cell))
        {
            if (_series[(int)family] >= FamilyLimit)
            {
                AddOverflow(family, label2, delta);
                return;
            }
            cell = new Cell(histogram);
            _cells.Add(key, cell);
            _series[(int)family]++;
        }
        cell.Add(histogram ? LatencyBuckets.BucketOf(label2) : 0, delta);
    }

    /// <summary>Counts into the family's overflow series (a histogram keeps the bucket).</summary>
    public void AddOverflow(MetricFamily family, ulong label2, long delta)
    {
        bool histogram = MetricFamilies.IsHistogram(family);
        var key = new StoreKey(OverflowVm, -1, family, SeriesTable.OverflowLabel, 0);
        if (!_cells.TryGetValue(key, out Cell? cell))
            _cells.Add(key, cell = new Cell(histogram));
        cell.Add(histogram ? LatencyBuckets.BucketOf(label2) : 0, delta);
        if (!histogram || LatencyBuckets.BucketOf(label2) != LatencyBuckets.SumSlot)
            _overflowEvents[(int)family] += delta;
    }

    private HotKeys Hot(string vm, MetricFamily family)
    {
        if (!_hot.TryGetValue((vm, family), out HotKeys? hot))
            _hot.Add((vm, family), hot = new HotKeys());
        return hot;
    }

    /// <summary>Updates each key's rate from what it counted since the last call, <paramref name="seconds"/> ago, and
    /// swaps keys in and out of each VM's top K. A key that leaves loses its series (its later events count as
    /// "other"); one that enters starts at zero: every series stays monotonic.</summary>
    public void Rank(double seconds)
    {
        if (seconds <= 0)
            return;
        foreach (((string vm, MetricFamily family), HotKeys hot) in _hot)
        {
            foreach ((uint, ulong) demoted in hot.Rank(seconds, TopK))
            {
                var key = new StoreKey(vm, -1, family, demoted.Item1, demoted.Item2);
                if (_cells.Remove(key))
                    _series[(int)family]--;
            }
        }
    }

    /// <summary>Drops every series of <paramref name="vm"/>.</summary>
    public void RemoveVm(string vm)
    {
        foreach (StoreKey key in _cells.Keys.Where(k => k.Vm == vm).ToList())
        {
            _cells.Remove(key);
            _series[(int)key.Family]--;
        }
        foreach ((string, MetricFamily) key in _hot.Keys.Where(k => k.Vm == vm).ToList())
            _hot.Remove(key);
    }

    /// <summary>Every series, sorted by family, VM, vCPU and labels.</summary>
    public List<MergedSeries> Export()
    {
        var result = new List<MergedSeries>(_cells.Count);
        Export(result);
        return result;
    }

    /// <summary>As <see cref="Export()"/>, into a list the caller reuses (a scrape of 10,000 series would otherwise put
    /// a 480 KB array on the large object heap each time).</summary>
    public void Export(List<MergedSeries> result)
    {
        result.Clear();
        result.EnsureCapacity(_cells.Count);
        foreach ((StoreKey k, Cell c) in _cells)
        {
            Histogram? h = c.Buckets is null ? null : new Histogram((long[])c.Buckets.Clone(), c.Value);
            result.Add(new MergedSeries(k.Vm, k.Vcpu, k.Family, k.Label1, k.Label2, h?.Count ?? c.Value, h));
        }
        result.Sort(static (a, b) =>
        {
            int c = ((int)a.Family).CompareTo((int)b.Family); // not Enum.CompareTo(object): it boxed twice per comparison
            if (c == 0) c = string.CompareOrdinal(a.Vm, b.Vm);
            if (c == 0) c = a.Vcpu.CompareTo(b.Vcpu);
            if (c == 0) c = a.Label1.CompareTo(b.Label1);
            if (c == 0) c = a.Label2.CompareTo(b.Label2);
            return c;
        });
    }

    /// <summary>Adds each counter series of the families in <paramref name="families"/> (a bit per family) to
    /// <paramref name="into"/>: what the storm detector reads several times a second, without copying histograms.</summary>
    public void Counters(uint families, List<CounterValue> into)
    {
        foreach ((StoreKey k, Cell c) in _cells)
        {
            if ((families & (1u << (int)k.Family)) != 0 && c.Buckets is null && k.Vm != OverflowVm)
                into.Add(new CounterValue(k.Vm, k.Vcpu, k.Family, k.Label1, k.Label2, c.Value));
        }
    }

    private readonly record struct StoreKey(string Vm, int Vcpu, MetricFamily Family, uint Label1, ulong Label2);

    /// <summary>A counter (Value), or a histogram (Buckets, and its sum in ns in Value).</summary>
    private sealed class Cell(bool histogram)
    {
        public long Value;
        public readonly long[]? Buckets = histogram ? new long[LatencyBuckets.Count] : null;

        public void Add(int bucket, long delta)
        {
            if (Buckets is null || bucket == LatencyBuckets.SumSlot)
                Value += delta;
            else
                Buckets[Math.Min(bucket, LatencyBuckets.Count - 1)] += delta;
        }
    }

    /// <summary>The keys of one VM's keyed family: which have their own series, and how fast each counts.</summary>
    private sealed class HotKeys
    {
        private const double Smoothing = 0.5;
        private readonly Dictionary<(uint, ulong), KeyStat> _stats = new();
        private int _kept;

        /// <summary>Counts <paramref name="delta"/> toward the key's rate; true when the key has its own series (taking
        /// a free place in the top K if there is one).</summary>
        public bool Admit(uint label1, ulong label2, long delta, int topK)
        {
            if (!_stats.TryGetValue((label1, label2), out KeyStat? stat))
            {
                if (_stats.Count >= topK + CandidatesPerKey)
                    return false;
                _stats.Add((label1, label2), stat = new KeyStat());
            }
            stat.Window += delta;
            if (!stat.Kept && _kept < topK)
            {
                stat.Kept = true;
                _kept++;
            }
            return stat.Kept;
        }

        public List<(uint, ulong)> Rank(double seconds, int topK)
        {
            foreach (KeyStat stat in _stats.Values)
            {
                stat.Rate = Smoothing * (stat.Window / seconds) + (1 - Smoothing) * stat.Rate;
                stat.Window = 0;
            }
            var demoted = new List<(uint, ulong)>();
            if (_stats.Count <= _kept)
                return demoted;
            var kept = _stats.Where(s => s.Value.Kept).OrderBy(s => s.Value.Rate).ToList();
            var candidates = _stats.Where(s => !s.Value.Kept && s.Value.Rate > 0).OrderByDescending(s => s.Value.Rate).ToList();
            int k = 0;
            foreach (KeyValuePair<(uint, ulong), KeyStat> candidate in candidates)
            {
                if (_kept < topK)
                {
                    candidate.Value.Kept = true;
                    _kept++;
                    continue;
                }
                if (k >= kept.Count || candidate.Value.Rate <= 2 * kept[k].Value.Rate)
                    break;
                kept[k].Value.Kept = false;
                demoted.Add(kept[k].Key);
                candidate.Value.Kept = true;
                k++;
            }
            // Candidates that went quiet make room for new ones.
            if (_stats.Count >= topK + CandidatesPerKey / 2)
            {
                foreach (KeyValuePair<(uint, ulong), KeyStat> s in _stats.Where(s => !s.Value.Kept && s.Value.Rate < 0.01).ToList())
                    _stats.Remove(s.Key);
            }
            return demoted;
        }

        private sealed class KeyStat
        {
            public long Window;
            public double Rate;
            public bool Kept;
        }
    }
}

/// <summary>Histogram buckets (not cumulative; the last is +Inf), and the sum of observations in ns.</summary>
public sealed record Histogram(long[] Buckets, long SumNs)
{
    public long Count => Buckets.Sum();
}

/// <summary>One output series: Vcpu is -1 where unknown or where the family has no vcpu label. A histogram family's
/// series carries its <see cref="Histogram"/> and Value is its count.</summary>
public readonly record struct MergedSeries(string Vm, int Vcpu, MetricFamily Family, uint Label1, ulong Label2, long Value,
    Histogram? Histogram = null);

/// <summary>One counter series' total (see <see cref="SeriesStore.Counters"/>).</summary>
public readonly record struct CounterValue(string Vm, int Vcpu, MetricFamily Family, uint Label1, ulong Label2, long Value);
