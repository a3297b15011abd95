using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Series;

namespace KvmObserve.Aggregation;

/// <summary>
/// Owns one <see cref="Shard"/> per reader and the VM registry. Readers write their shard; <see cref="Snapshot"/>
/// resolves threads to VMs and vCPUs and merges the shards into the series the exporters print.
/// </summary>
public sealed class Aggregator
{
    private readonly Shard[] _shards;
    private readonly int[] _resolvedVersion;
    private readonly object _resolveGate = new();

    public Aggregator(int shardCount, int seriesLimitPerShard, VmRegistry registry)
    {
        _shards = new Shard[shardCount];
        for (int i = 0; i < shardCount; i++)
            _shards[i] = new Shard(i, seriesLimitPerShard, NewSeries);
        _resolvedVersion = new int[shardCount];
        Registry = registry;
    }

    public IReadOnlyList<Shard> Shards => _shards;

    /// <summary>Signalled when any shard adds a series: time to call <see cref="ResolveNewThreads"/>.</summary>
    public AutoResetEvent NewSeries { get; } = new(false);

    public VmRegistry Registry { get; }

    private volatile Action[] _refreshers = [];

    /// <summary>Called at the start of every <see cref="Snapshot"/>: a counting source reads its counters then, so a
    /// scrape sees counts of that moment.</summary>
    public void AddRefresher(Action refresh)
    {
        lock (_resolveGate)
            _refreshers = [.. _refreshers, refresh];
    }

    public void RemoveRefresher(Action refresh)
    {
        lock (_resolveGate)
            _refreshers = _refreshers.Where(r => r != refresh).ToArray();
    }

    /// <summary>True for families labelled per vCPU; the others are labelled per VM only.</summary>
    public static bool HasVcpuLabel(MetricFamily family) => family is MetricFamily.Exits or MetricFamily.FailedVmEntries
        or MetricFamily.UserspaceExits or MetricFamily.EmulatedInstructions or MetricFamily.HaltWakeups
        or MetricFamily.HaltPollNsChanges or MetricFamily.MmuPageFaults;

    /// <summary>Looks up threads that appeared in new series since the last call, while their processes still run.
    /// Cheap when nothing is new: one version compare per shard.</summary>
    public void ResolveNewThreads()
    {
        lock (_resolveGate)
        {
            for (int i = 0; i < _shards.Length; i++)
            {
                int version = _shards[i].Series.Version;
                if (version == _resolvedVersion[i])
                    continue;
                var collect = new TidCollector(Registry);
                _shards[i].Series.ForEach(ref collect);
                foreach (int tid in collect.Unknown)
                    Registry.Resolve(tid);
                _resolvedVersion[i] = version;
            }
        }
    }

    /// <summary>Every series merged across shards, keyed by VM name (so a restarted VM continues its series).</summary>
    public IReadOnlyList<MergedSeries> Snapshot()
    {
        foreach (Action refresh in _refreshers)
            refresh();
        ResolveNewThreads();
        var merged = new Dictionary<MergeKey, long>();
        var merge = new Merger(Registry, merged);
        foreach (Shard shard in _shards)
            shard.Series.ForEach(ref merge);
        var result = new List<MergedSeries>(merged.Count);
        foreach ((MergeKey k, long v) in merged)
            result.Add(new MergedSeries(k.Vm, k.Vcpu, k.Family, k.Label1, k.Label2, v));
        result.Sort(static (a, b) =>
        {
            int c = a.Family.CompareTo(b.Family);
            if (c == 0) c = string.CompareOrdinal(a.Vm, b.Vm);
            if (c == 0) c = a.Vcpu.CompareTo(b.Vcpu);
            if (c == 0) c = a.Label1.CompareTo(b.Label1);
            if (c == 0) c = a.Label2.CompareTo(b.Label2);
            return c;
        });
        return result;
    }

    /// <summary>Events counted past the series limit, all shards.</summary>
    public long Overflow(MetricFamily family)
    {
        long sum = 0;
        foreach (Shard s in _shards)
            sum += s.Series.Overflow(family);
        return sum;
    }

    private readonly record struct MergeKey(string Vm, int Vcpu, MetricFamily Family, uint Label1, ulong Label2);

    private struct TidCollector(VmRegistry registry) : ISeriesVisitor
    {
        public HashSet<int> Unknown { get; } = new();

        public void Visit(in SeriesKey key, long value)
        {
            if (!registry.IsKnown(key.Tid))
                Unknown.Add(key.Tid);
        }
    }

    private readonly struct Merger(VmRegistry registry, Dictionary<MergeKey, long> merged) : ISeriesVisitor
    {
        public void Visit(in SeriesKey key, long value)
        {
            ThreadIdentity who = registry.Resolve(key.Tid);
            int vcpu = HasVcpuLabel(key.Family) ? (key.Vcpu >= 0 ? key.Vcpu : who.Vcpu) : -1;
            var k = new MergeKey(who.Vm.Name, vcpu, key.Family, key.Label1, key.Label2);
            merged[k] = merged.GetValueOrDefault(k) + value;
        }
    }
}

/// <summary>One output series: Vcpu is -1 where unknown or where the family has no vcpu label.</summary>
public readonly record struct MergedSeries(string Vm, int Vcpu, MetricFamily Family, uint Label1, ulong Label2, long Value);
