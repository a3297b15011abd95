using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Series;

namespace KvmObserve.Aggregation;

/// <summary>What bounds the aggregates (README documents each).</summary>
public sealed record AggregatorOptions
{
    /// <summary>Hard limit of label sets per metric family; past it, new ones count into the overflow series.</summary>
    public int FamilyLimit { get; init; } = 10_000;

    /// <summary>Keys (ports, pages, MSRs, leaves, vectors) per VM and family with their own series.</summary>
    public int TopK { get; init; } = 16;

    /// <summary>How long a VM's series stay after it exits (a VM restarted under its name within it continues them).</summary>
    public TimeSpan VmGrace { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>Hot-path entries per reader at start (thread × family × labels seen since they were last compacted
    /// away); a reader's table doubles as it fills, up to <see cref="MaxShardSeries"/>.</summary>
    public int ShardSeries { get; init; } = 16_384;

    /// <summary>What one reader's table may grow to: enough for every family at its limit on one CPU, counting a
    /// latency histogram's buckets (each is an entry).</summary>
    public int MaxShardSeries => (int)Math.Min(1L << 26, Math.Max(ShardSeries, (long)FamilyLimit * 8));

    /// <summary>Threads whose pairing and halt state the hot path keeps at once.</summary>
    public int Threads { get; init; } = 16_384;
}

/// <summary>
/// Owns one <see cref="Shard"/> per reader, the threads' shared state and the VM registry. Readers write their shard;
/// <see cref="Fold"/> resolves threads to VMs and vCPUs and moves what the shards counted into the
/// <see cref="SeriesStore"/>, which the exporters read. Folding runs at each scrape and from the housekeeping loop,
/// which also expires VMs and drops hot-path entries that are done with (<see cref="Maintain"/>).
/// </summary>
public sealed class Aggregator
{
    private readonly Shard[] _shards;
    private readonly int[] _resolvedVersion;
    private readonly object _gate = new();
    /// <summary>Only for naming new threads: never waits behind a fold or a compaction.</summary>
    private readonly object _resolveGate = new();
    private readonly SeriesStore _store;
    private DateTime _lastRank;
    private bool _compactDue;

    public Aggregator(int shardCount, VmRegistry registry, AggregatorOptions? options = null)
    {
        Options = options ?? new AggregatorOptions();
        States = new ThreadStates(Options.Threads, shardCount);
        _shards = new Shard[shardCount];
        for (int i = 0; i < shardCount; i++)
            _shards[i] = new Shard(i, Options.ShardSeries, NewSeries, States, Options.MaxShardSeries, _gate) { Registry = registry };
        _resolvedVersion = new int[shardCount];
        _store = new SeriesStore(Options.FamilyLimit, Options.TopK);
        Registry = registry;
        Registry.FreshVmThread = tid => States.SeedPollWindow(tid, 0);
        _lastRank = DateTime.UtcNow;
    }

    public AggregatorOptions Options { get; }

    public IReadOnlyList<Shard> Shards => _shards;

    public ThreadStates States { get; }

    /// <summary>Signalled when any shard adds a series: time to call <see cref="ResolveNewThreads"/>.</summary>
    public AutoResetEvent NewSeries { get; } = new(false);

    public VmRegistry Registry { get; }

    private volatile Action[] _refreshers = [];

    /// <summary>Called at the start of every <see cref="Fold"/>: a counting source reads its counters then, so a
    /// scrape sees counts of that moment.</summary>
    public void AddRefresher(Action refresh)
    {
        lock (_gate)
            _refreshers = [.. _refreshers, refresh];
    }

    /// <summary>What the last fold's refreshers threw (null: each read its counters).</summary>
    public Exception? RefreshError { get; private set; }

    public void RemoveRefresher(Action refresh)
    {
        lock (_gate)
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

    /// <summary>Moves what every shard counted since the last fold into the store; re-ranks hot keys once a second.</summary>
    public void Fold()
    {
        lock (_gate)
            FoldLocked(DateTime.UtcNow);
    }

    private void FoldLocked(DateTime now)
    {
        Exception? failed = null;
        foreach (Action refresh in _refreshers)
        {
            // A counting source that cannot read its counters this once fails this collection, as a node_exporter
            // collector does; it must not take /metrics (or the housekeeping thread) down with it.
            try
            {
                refresh();
            }
            catch (Exception e) when (e is IOException or InvalidOperationException or ObjectDisposedException)
            {
                failed = e;
            }
        }
        RefreshError = failed;
        ResolveNewThreads();
        var folder = new Folder(Registry, States, _store, now);
        foreach (Shard shard in _shards)
            shard.Series.Fold(ref folder);
        // Halts held for want of their poll window: released when a new vCPU was named (window 0), or counted as
        // unknown once held for longer than a thread takes to be named.
        States.ReleaseStaleHalts(ThreadStates.MonotonicNow(), 2_000_000_000);
        foreach (ThreadStates.Released released in States.TakeReleasedHalts())
            AddHeld(released, now);
        // Exits and entries read out of order around a migration, paired now that their CPUs have been read further.
        foreach (ThreadStates.Pair pair in States.ResolvePending())
        {
            string vm = (Registry.TryResolve(pair.Tid, now, wait: false) ?? new ThreadIdentity(VmInfo.Unknown, -1)).Vm.Name;
            int bucket = LatencyBuckets.Index(pair.Ns);
            _store.Add(vm, -1, MetricFamily.ExitLatency, pair.Reason, LatencyBuckets.Label2(pair.Isa, bucket), 1);
            _store.Add(vm, -1, MetricFamily.ExitLatency, pair.Reason, LatencyBuckets.Label2(pair.Isa, LatencyBuckets.SumSlot), (long)pair.Ns);
        }
        _compactDue |= folder.Held > 0 || folder.Folded > 0;
        double seconds = (now - _lastRank).TotalSeconds;
        if (seconds >= 1)
        {
            _store.Rank(seconds);
            _lastRank = now;
        }
    }

    /// <summary>Every series in the store after a fold, sorted by family, VM, vCPU and labels.</summary>
    public IReadOnlyList<MergedSeries> Snapshot()
    {
        var series = new List<MergedSeries>();
        Snapshot(series);
        return series;
    }

    /// <summary>As <see cref="Snapshot()"/>, into a list the caller reuses.</summary>
    public void Snapshot(List<MergedSeries> into)
    {
        lock (_gate)
        {
            FoldLocked(DateTime.UtcNow);
            _store.Export(into);
        }
    }

    /// <summary>Folds, then lists the counters of <paramref name="families"/> (a bit per family).</summary>
    public void Counters(uint families, List<CounterValue> into)
    {
        lock (_gate)
        {
            FoldLocked(DateTime.UtcNow);
            _store.Counters(families, into);
        }
    }

    private void AddHeld(ThreadStates.Released released, DateTime now)
    {
        ThreadIdentity who = Registry.TryResolve(released.Tid, now, wait: false)!;
        int vcpu = released.Vcpu >= 0 ? released.Vcpu : who.Vcpu;
        string vm = who.Vm.Name;
        foreach ((MetricFamily family, uint outcome, ulong label2, long value) in released.Halts.Counts(released.PollNs))
            _store.Add(vm, family == MetricFamily.HaltWakeups ? vcpu : -1, family, outcome, label2, value);
    }

    /// <summary>
    /// Folds, then forgets VMs gone for longer than the grace period (their series and threads) and drops hot-path
    /// entries that have nothing left to fold and will not count again (threads of exited VMs, threads never
    /// identified) or, when a shard fills up, that have been idle. Returns the VM names whose series went.
    /// </summary>
    public IReadOnlyList<string> Maintain(DateTime now)
    {
        lock (_gate)
        {
            FoldLocked(now);
            (List<string> names, List<int> tids) = Registry.Expire(Options.VmGrace, now);
            foreach (string name in names)
                _store.RemoveVm(name);
            foreach (int tid in tids)
                States.Forget(tid);
            if (_compactDue || tids.Count > 0)
            {
                Compact();
                _compactDue = false;
            }
            return names;
        }
    }

    private void Compact()
    {
        foreach (Shard shard in _shards)
        {
            SeriesTable table = shard.Series;
            bool crowded = table.Count > table.SeriesLimit * 3 / 4;
            lock (shard.Gate)
            {
                table.Compact((key, idleFolds) =>
                {
                    if (Registry.IsGone(key.Tid))
                        return true;
                    return crowded && idleFolds >= 20;
                });
            }
            lock (_resolveGate)
                _resolvedVersion[shard.Cpu] = table.Version; // nothing new to resolve from a compaction
        }
        // The threads' own states stay until their VM's grace has passed (Maintain): a gone thread's last records may
        // still be in a ring that is read after this.
    }

    /// <summary>Label sets the family exports now (a histogram counts once).</summary>
    public int SeriesOf(MetricFamily family)
    {
        lock (_gate)
            return _store.SeriesOf(family);
    }

    /// <summary>Events counted into the family's overflow series (past a shard's or the family's series limit).</summary>
    public long Overflow(MetricFamily family)
    {
        lock (_gate)
            return _store.OverflowOf(family);
    }

    private struct TidCollector(VmRegistry registry) : ISeriesVisitor
    {
        public HashSet<int> Unknown { get; } = new();

        public void Visit(in SeriesKey key, long value)
        {
            if (!registry.IsKnown(key.Tid))
                Unknown.Add(key.Tid);
        }
    }

    /// <summary>Hands each shard entry's growth to the store under its thread's VM and vCPU. An entry whose thread
    /// cannot be told yet is held (not folded) until it can, or until the registry gives up on it.</summary>
    private struct Folder(VmRegistry registry, ThreadStates states, SeriesStore store, DateTime now) : IFoldVisitor
    {
        public int Held;
        public int Folded;

        public bool Fold(in SeriesKey key, long delta)
        {
            if (key.Tid == 0 && key.Label1 == SeriesTable.OverflowLabel)
            {
                store.AddOverflow(key.Family, key.Label2, delta);
                return true;
            }
            if (registry.TryResolve(key.Tid, now) is not ThreadIdentity who)
            {
                Held++;
                return false;
            }
            int vcpu = -1;
            if (HasVcpuLabel(key.Family))
            {
                vcpu = key.Vcpu >= 0 ? key.Vcpu : who.Vcpu >= 0 ? who.Vcpu : states.VcpuOf(key.Tid);
                if (vcpu < 0 && who.Vm.Pid != 0)
                    vcpu = registry.VcpuFromFd(key.Tid, now) ?? -1;
                if (vcpu < 0 && who.Vm.Pid != 0 && who.Vm.ExitedAt is null && now - who.ResolvedAt < VmRegistry.UnresolvedGrace)
                {
                    // Only vCPU threads count these: give its name, its records or its fd a moment to tell which.
                    Held++;
                    return false;
                }
            }
            Folded++;
            store.Add(who.Vm.Name, vcpu, key.Family, key.Label1, key.Label2, delta);
            return true;
        }
    }
}
