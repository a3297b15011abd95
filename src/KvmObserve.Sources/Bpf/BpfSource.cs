using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Native;
using KvmObserve.Native.Bpf;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Sources.Bpf;

/// <summary>
/// Counts kvm events in the kernel with the BPF programs of probes/: each event is aggregated where it happens, in
/// per-CPU maps keyed by (VMM pid, thread, vCPU, family, key), exit-handling latency paired per thread in the kernel
/// into the agent's own histogram buckets. Nothing per event crosses into user space; the maps are read when the
/// aggregates are (at a scrape, an export, a storm-detector tick), and only their growth is added.
/// Every program, map and link is held by this process's file descriptors and goes with it.
/// </summary>
public sealed class BpfSource : IEventSource
{
    private readonly SourceOptions _options;
    private readonly BpfOptions _bpf;
    private readonly Aggregator _aggregator;
    private readonly Func<KvmEventKind, string, FieldFormat?> _fieldOf;
    private readonly object _gate = new();
    private readonly Dictionary<SeriesKey, long> _last = new();
    private readonly Dictionary<int, (long PollNs, long FirstOld, int Vcpu)> _threadStates = new();
    private readonly HashSet<int> _tids = new();
    private readonly long[] _stats = new long[BpfLayout.StatSlots];
    private BpfObject? _object;
    private BpfMap? _counts, _threads, _statsMap;
    private SafeFd? _statsFd;
    private Shard? _shard;
    private Action? _refresher;
    private IReadOnlyList<TracepointState> _tracepoints = [];
    private IReadOnlyList<(string Name, int Fd)> _programs = [];
    private DateTime _nextSweep;
    private Thread? _watcher;
    private CancellationTokenSource? _stopWatching;

    public BpfSource(SourceOptions options, Aggregator aggregator, string tracefsRoot, BpfOptions? bpf = null)
    {
        _options = options;
        _bpf = bpf ?? new BpfOptions();
        _aggregator = aggregator;
        var formats = new TracefsFormats(tracefsRoot);
        Decoders = formats.Decoders();
        _fieldOf = BpfObjectLoader.FieldsOf(formats);
    }

    public string Name => "bpf";

    public KvmEventDecoders Decoders { get; }

    public IReadOnlyList<TracepointState> Tracepoints => _tracepoints;

    public bool HasRecords => false;

    /// <summary>Increments the counts map had no room for, even under "other" (kvmo_stats).</summary>
    public long MapFull { get { lock (_gate) return _stats[BpfLayout.StatMapFull]; } }

    /// <summary><see cref="MapFull"/> by family: a family's counts plus these are every increment its events made.</summary>
    public long[] MapFullByFamily()
    {
        lock (_gate)
            return _stats.AsSpan(BpfLayout.StatFamilyFull, MetricFamilies.Count).ToArray();
    }

    /// <summary>Threads the kernel's state map could not take (their pairing and halt state were skipped).</summary>
    public long StateFull { get { lock (_gate) return _stats[BpfLayout.StatStateFull]; } }

    public void Start()
    {
        try
        {
            _object = BpfObjectLoader.Load(_bpf, _fieldOf, Decoders.ExitReasons.ImpliedIsa);
            _programs = _object.Programs();
            var states = new List<TracepointState>();
            foreach (TracepointStatus s in Decoders.Statuses)
            {
                bool wanted = _options.Wants(s.Tracepoint);
                if (!s.Available || !wanted)
                {
                    states.Add(new TracepointState(s, false));
                    continue;
                }
                string missing = BpfLayout.MissingFields(s.Tracepoint.Kind, _fieldOf);
                if (missing.Length > 0)
                {
                    states.Add(new TracepointState(s with { Problem = $"its format has no {missing}" }, false));
                    continue;
                }
                string program = BpfLayout.ProgramOf(s.Tracepoint.Kind);
                try
                {
                    _object.AttachTracepoint(program, s.Tracepoint.System, s.Tracepoint.Name,
                        program == "kvmo_mmu" ? (ulong)s.Tracepoint.Kind : 0);
                    states.Add(new TracepointState(s, true));
                }
                catch (BpfException e)
                {
                    _options.Warn?.Invoke($"bpf: {e.Message}");
                    states.Add(new TracepointState(s with { Problem = e.Message }, false));
                }
            }
            if (!states.Any(t => t.Enabled))
                throw new BpfException("bpf: no program could be attached (none of the selected tracepoints exists, or every attach failed)");
            _tracepoints = states;
            _counts = new BpfMap(_object.MapFd("kvmo_counts"), BpfLayout.KeySize, 8, (int)_bpf.MapEntries, perCpu: true);
            _threads = new BpfMap(_object.MapFd("kvmo_threads"), 4, BpfLayout.ThreadStateSize, 16_384, perCpu: false);
            _statsMap = new BpfMap(_object.MapFd("kvmo_stats"), 4, 8, BpfLayout.StatSlots, perCpu: true);
            if (_bpf.Stats && !BpfProgramStats.SysctlEnabled())
                _statsFd = BpfProgramStats.EnableRunTime();
            _shard = _aggregator.Shards[0];
            _nextSweep = DateTime.UtcNow.AddMilliseconds(_options.DiscoveryIntervalMs);
            _refresher = Refresh;
            _aggregator.AddRefresher(_refresher);
            _stopWatching = new CancellationTokenSource();
            _watcher = new Thread(Watch) { IsBackground = true, Name = "kvmobserve bpf watcher" };
            _watcher.Start();
            _watching.Wait(); // its tid is known (UrgentThreads)
        }
        catch
        {
            Stop();
            throw;
        }
    }

    /// <summary>The programs' own cost, where the kernel accounts it (kernel.bpf_stats_enabled, or --bpf-stats).</summary>
    public IReadOnlyList<(string Program, ulong RunTimeNs, ulong Runs)> ProgramCosts()
    {
        var costs = new List<(string, ulong, ulong)>();
        lock (_gate)
        {
            if (_object is null)
                return costs;
            foreach ((string name, int fd) in _programs)
            {
                if (BpfProgramStats.Read(fd) is (ulong ns, ulong runs))
                    costs.Add((name, ns, runs));
            }
        }
        return costs;
    }

    /// <summary>Whether the kernel is accounting the programs' run time now.</summary>
    public bool CostAccounted => _statsFd is not null || BpfProgramStats.SysctlEnabled();

    /// <summary>Looks every <see cref="NewSeriesPollMs"/> at one counter the programs bump when they create a series (a new thread,
    /// a new key), and reads the maps at once when it grew: a new thread's series are added then, so the agent names
    /// its VM while it still runs, not at the next scrape, after a short-lived VM has gone.</summary>
    private void Watch()
    {
        _watcherTid = Sys.Gettid();
        _watching.Set();
        WaitHandle stop = _stopWatching!.Token.WaitHandle;
        byte[] key = BitConverter.GetBytes(BpfLayout.StatNewSeries);
        var value = new byte[8 * BpfMap.PossibleCpus];
        long seen = 0;
        while (!stop.WaitOne(NewSeriesPollMs))
        {
            long created;
            lock (_gate)
            {
                if (_statsMap is null)
                    return;
                created = _statsMap.TryLookup(key, value) ? BpfMap.SumPerCpu(value) : 0;
            }
            Interlocked.Increment(ref _wakeups);
            if (created != seen)
            {
                seen = created;
                Refresh();
            }
        }
    }

    private long _wakeups;
    private volatile int _watcherTid;
    private readonly ManualResetEventSlim _watching = new();

    /// <summary>The watcher adds a new thread's first series, and a VM can be named only while it runs: at nice 19 on
    /// busy CPUs it woke too late for VMs that lived a few seconds, whose counts then went to vm="unknown".</summary>
    public IReadOnlyList<int> UrgentThreads => _watcherTid != 0 ? [_watcherTid] : [];

    /// <summary>How often the watcher looks (one lookup of one per-CPU counter, ~50 syscalls a second): a VM that lives
    /// 60 ms must still be running when its first series is added, for its name to be read from procfs.</summary>
    private const int NewSeriesPollMs = 20;

    /// <summary>Times the watcher has woken to look for new threads.</summary>
    public long Wakeups => Interlocked.Read(ref _wakeups);

    /// <summary>Reads the maps and adds what grew since the last read to shard 0's series.</summary>
    public void Refresh()
    {
        lock (_gate)
        {
            if (_shard is null || _counts is null)
                return;
            lock (_shard.Gate)
                RefreshLocked();
        }
    }

    private void RefreshLocked()
    {
        // Which threads are gone is settled before the maps are read: a thread found gone after the read could have
        // counted between the read and its exit, and deleting its entries would lose those counts.
        HashSet<int>? gone = DateTime.UtcNow >= _nextSweep ? ExitedThreads() : null;
        ReadStats();
        ReadThreads();
        int n = _counts!.ReadAll();
        SeriesTable series = _shard!.Series;
        for (int i = 0; i < n; i++)
        {
            (int tgid, SeriesKey key) = BpfLayout.ReadKey(_counts.Key(i));
            _shard.NoteProcess(key.Tid, tgid);
            long total = BpfMap.SumPerCpu(_counts.Value(i));
            _last.TryGetValue(key, out long last);
            long delta = total - last;
            _tids.Add(key.Tid);
            if (delta <= 0)
                continue;
            _last[key] = total;
            if (key.Family is MetricFamily.HaltWakeups or MetricFamily.HaltDuration && (key.Label1 & BpfLayout.UnknownWindow) != 0)
                CountUnclassifiedHalts(series, key, delta);
            else
                series.Counter(key) += delta;
        }
        if (gone is not null)
        {
            Sweep(gone, n);
            _nextSweep = DateTime.UtcNow.AddMilliseconds(_options.DiscoveryIntervalMs);
        }
    }

    /// <summary>The threads seen in the maps since the last sweep that have exited.</summary>
    private HashSet<int> ExitedThreads()
    {
        var gone = new HashSet<int>();
        foreach (int tid in _tids)
        {
            if (!Directory.Exists($"/proc/{tid}"))
                gone.Add(tid);
        }
        _tids.Clear();
        return gone;
    }

    private void ReadStats()
    {
        int n = _statsMap!.ReadAll();
        for (int i = 0; i < n; i++)
        {
            int slot = BitConverter.ToInt32(_statsMap.Key(i));
            if ((uint)slot >= (uint)_stats.Length)
                continue;
            long total = BpfMap.SumPerCpu(_statsMap.Value(i));
            long delta = total - _stats[slot];
            if (delta <= 0)
                continue;
            _stats[slot] = total;
            if (slot is > 0 and < BpfLayout.StatMapFull)
                _shard!.AddEvents((KvmEventKind)slot, delta);
            else if (slot is BpfLayout.StatExitUnmatched or BpfLayout.StatExitTooLong) // as the record path counts them
                _aggregator.States.AddDropped(PairKind.Exit, PairDrop.Unmatched, delta);
        }
    }

    private void ReadThreads()
    {
        int n = _threads!.ReadAll();
        for (int i = 0; i < n; i++)
        {
            int tid = BitConverter.ToInt32(_threads.Key(i));
            (long pollNs, long firstOld, int vcpu) state = BpfLayout.ReadThreadState(_threads.Value(i));
            _tids.Add(tid);
            if (_threadStates.TryGetValue(tid, out var known) && known == state)
                continue;
            _threadStates[tid] = state;
            _aggregator.States.Learn(tid, state.vcpu, state.pollNs, state.firstOld);
        }
    }

    /// <summary>Halts the kernel counted before it knew their thread's poll window: classified here with the window
    /// they started with once the agent knows it, held by the thread's state until then (as the record path holds its
    /// own), counted as "unknown" where even that has no room.</summary>
    private void CountUnclassifiedHalts(SeriesTable series, SeriesKey key, long delta)
    {
        bool waited = (key.Label1 & 1) != 0;
        long firstOld = _threadStates.TryGetValue(key.Tid, out var state) ? state.FirstOld : -1;
        long window = _aggregator.States.ClassifyOrHold(key.Tid, waited, key.Family, key.Label2, delta, firstOld);
        if (window == -1)
            return; // held
        HaltOutcome outcome = window == ThreadStates.NoRoom ? HaltOutcome.Unknown : HeldHalts.Outcome(waited, window);
        series.Counter(key with { Label1 = (uint)outcome }) += delta;
    }

    /// <summary>Deletes what the maps hold of threads that had exited before the maps were last read, so their last
    /// counts are in: the maps are bounded, and a host starts and stops VMs for years.</summary>
    private void Sweep(HashSet<int> gone, int entries)
    {
        if (gone.Count == 0)
            return;
        for (int i = 0; i < entries; i++)
        {
            (_, SeriesKey key) = BpfLayout.ReadKey(_counts!.Key(i));
            if (gone.Contains(key.Tid))
            {
                _counts.Delete(_counts.Key(i));
                _last.Remove(key);
            }
        }
        foreach (int tid in gone)
        {
            _threads!.Delete(BitConverter.GetBytes(tid));
            _threadStates.Remove(tid);
        }
    }

    public void Stop()
    {
        _stopWatching?.Cancel();
        _watcher?.Join();
        _watcher = null;
        if (_refresher is not null)
        {
            _aggregator.RemoveRefresher(_refresher);
            Refresh(); // what the maps counted since the last read
            _refresher = null;
        }
        lock (_gate)
        {
            _shard = null;
            _object?.Dispose(); // links first: the programs stop running, then maps and programs go
            _object = null;
            _counts = _threads = _statsMap = null;
            _statsFd?.Dispose();
            _statsFd = null;
        }
        _stopWatching?.Dispose();
        _stopWatching = null;
        _watcherTid = 0; // a restart's watcher is another thread
        _watching.Reset();
    }

    public void Dispose() => Stop();
}
