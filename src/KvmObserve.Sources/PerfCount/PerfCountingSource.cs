using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Events;
using KvmObserve.Native;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Sources.PerfCount;

/// <summary>
/// Counts kvm events in the kernel, as kvm_stat does: no record is copied. Each vCPU thread of each VM gets a group of
/// counters (<see cref="CounterPlan"/>: a total and a filtered counter per key, per tracepoint), its other threads the
/// kvmmmu totals; one group read per thread gives consistent counts. New VMs and threads are found by rescanning
/// procfs, at once when the system-wide totals (one group per CPU) show events no attached thread accounts for:
/// those events are reported as unattributed, never dropped silently.
/// </summary>
public sealed class PerfCountingSource : IEventSource
{
    private const int ReservedFds = 256; // the agent's own files, sockets and Kestrel

    private readonly SourceOptions _options;
    private readonly Aggregator _aggregator;
    private readonly IReadOnlyList<int> _cpus;
    private readonly CountingKeys _keys;
    private readonly uint _hostIsa;
    private readonly object _gate = new();
    private readonly Dictionary<int, ThreadCounters> _threads = new();
    private readonly List<CounterGroup> _systemGroups = new();
    private readonly long[] _retiredTotals = new long[Enum.GetValues<KvmEventKind>().Length];
    private readonly long[] _systemTotals = new long[Enum.GetValues<KvmEventKind>().Length];
    private readonly long[] _unattributed = new long[Enum.GetValues<KvmEventKind>().Length];
    private readonly CancellationTokenSource _stop = new();
    private Shard? _shard;
    private CounterPlan? _vcpuPlan, _otherPlan, _totalsPlan;
    private Thread? _thread;
    private Action? _refresher;
    private IReadOnlyList<TracepointState> _tracepoints = [];
    private DateTime _nextScan, _lastScan;
    private const int MinRescanMs = 200;
    private long _lastUnattributedSum;
    private int _openFds;
    private ulong _fdLimit;

    public PerfCountingSource(SourceOptions options, Aggregator aggregator, string tracefsRoot, IReadOnlyList<int> cpus,
        CountingKeys? keys = null, uint? hostIsa = null)
    {
        _options = options;
        _aggregator = aggregator;
        _cpus = cpus;
        _keys = keys ?? new CountingKeys();
        _hostIsa = hostIsa ?? HostIsa.Detect();
        Decoders = new TracefsFormats(tracefsRoot).Decoders();
    }

    public string Name => "perf-count";

    public KvmEventDecoders Decoders { get; }

    public IReadOnlyList<TracepointState> Tracepoints => _tracepoints;

    public bool HasRecords => false;

    private long _wakeups;

    /// <summary>Times its thread woke to read the counters (every poll timeout).</summary>
    public long Wakeups => Interlocked.Read(ref _wakeups);

    private Action<string>? Warn => _options.Warn;

    /// <summary>Events the system-wide counters saw that no attached thread accounts for (threads not yet attached).</summary>
    public long UnattributedOf(KvmEventKind kind) { lock (_gate) return _unattributed[(int)kind]; }

    public void Start()
    {
        _tracepoints = _options.Select(Decoders.Statuses);
        _vcpuPlan = CounterPlan.ForVcpuThreads(Decoders, _options.Wants, _hostIsa, _keys);
        _otherPlan = CounterPlan.ForOtherThreads(Decoders, _options.Wants);
        _totalsPlan = CounterPlan.TotalsOnly(Decoders, _options.Wants);
        if (_totalsPlan.Counters.Count == 0)
            throw new InvalidOperationException("perf-count: none of the selected tracepoints exists in this kernel");
        _shard = _aggregator.Shards[0];
        _fdLimit = FdLimit.Get().Current;

        try
        {
            foreach (int cpu in _cpus)
                _systemGroups.Add(OpenOrThrow(_totalsPlan, pid: -1, cpu, $"cpu{cpu}"));
            // The plan's filters are checked once, on this thread, so a kernel that rejects one fails here, named.
            // (Opened after the system groups, so closing it unregisters no tracepoint.)
            using (CounterGroup probe = OpenOrThrow(_vcpuPlan, pid: 0, cpu: -1, "this thread"))
            { }
            _openFds = _systemGroups.Sum(g => g.Size);
            _nextScan = DateTime.MinValue;
            Refresh();
            _refresher = Refresh;
            _aggregator.AddRefresher(_refresher);
            _thread = new Thread(Run) { IsBackground = true, Name = "kvmobserve perf-count" };
            _thread.Start();
        }
        catch
        {
            Stop();
            throw;
        }
    }

    private CounterGroup OpenOrThrow(CounterPlan plan, int pid, int cpu, string what)
    {
        EnsureFds(plan.Counters.Count);
        return CounterGroup.TryOpen(plan, pid, cpu, out int errno)
            ?? throw new NativeErrorException($"perf_event_open(counting group of {plan.Counters.Count}, {what})", errno);
    }

    private void Run()
    {
        string? lastWarning = null;
        while (!_stop.Token.WaitHandle.WaitOne(_options.PollTimeoutMs))
        {
            Interlocked.Increment(ref _wakeups);
            try
            {
                Refresh();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                if (e.Message != lastWarning) // one line per distinct problem, not one per poll
                    Warn?.Invoke($"perf-count: {e.Message}");
                lastWarning = e.Message;
            }
        }
    }

    /// <summary>Reads every group, adds what is new to the series, and attaches to threads that appeared.</summary>
    public void Refresh()
    {
        lock (_gate)
        {
            if (_shard is null)
                return;
            lock (_shard.Gate) // this thread is shard 0's writer now: compaction waits
                RefreshLocked();
        }
    }

    private void RefreshLocked()
    {
        {
            long[] attributed = CollectThreads();
            ReadSystemTotals();
            long unattributedSum = 0;
            for (int k = 0; k < _unattributed.Length; k++)
            {
                _unattributed[k] = Math.Max(0, _systemTotals[k] - attributed[k]);
                unattributedSum += _unattributed[k];
            }
            bool unseenThreads = unattributedSum > _lastUnattributedSum;
            _lastUnattributedSum = unattributedSum;
            DateTime now = DateTime.UtcNow;
            // A thread that cannot be attached (fd limit) keeps adding unattributed events: rescan at most 5 times a second.
            if ((unseenThreads && now >= _lastScan.AddMilliseconds(MinRescanMs)) || now >= _nextScan)
            {
                _aggregator.Registry.Scan();
                _lastScan = now;
                _nextScan = now.AddMilliseconds(_options.DiscoveryIntervalMs);
                AttachAndRetire();
                CollectThreads();
            }
        }
    }

    /// <summary>Collects every attached thread; returns the events per kind attributed so far (retired included).</summary>
    private long[] CollectThreads()
    {
        var attributed = (long[])_retiredTotals.Clone();
        foreach (ThreadCounters t in _threads.Values)
        {
            t.Collect(_shard!.Series);
            for (int k = 0; k < attributed.Length; k++)
                attributed[k] += t.Totals[k];
        }
        return attributed;
    }

    private void ReadSystemTotals()
    {
        Span<long> values = stackalloc long[_totalsPlan!.Counters.Count];
        var totals = new long[_systemTotals.Length];
        foreach (CounterGroup g in _systemGroups)
        {
            if (!g.TryRead(values))
                continue;
            foreach ((KvmEventKind kind, int counter) in _totalsPlan.Totals)
                totals[(int)kind] += values[counter];
        }
        for (int k = 0; k < totals.Length; k++)
        {
            long delta = totals[k] - _systemTotals[k];
            if (delta > 0)
                _shard!.AddEvents((KvmEventKind)k, delta);
            _systemTotals[k] = Math.Max(_systemTotals[k], totals[k]);
        }
    }

    private void AttachAndRetire()
    {
        var alive = new HashSet<int>();
        foreach (VmInfo vm in _aggregator.Registry.Vms())
        {
            if (vm.ExitedAt is not null)
                continue;
            IReadOnlyList<(int Tid, int Vcpu)> threads = _aggregator.Registry.ThreadsOf(vm);
            // VMMs that name their vCPU threads (QEMU, load) get the exit counters on those only; others on every thread.
            bool named = threads.Any(t => t.Vcpu >= 0);
            foreach ((int tid, int vcpu) in threads)
            {
                alive.Add(tid);
                CounterPlan plan = vcpu >= 0 || !named ? _vcpuPlan! : _otherPlan!;
                if (_threads.TryGetValue(tid, out ThreadCounters? have))
                {
                    if (have.Plan == plan || plan == _otherPlan)
                        continue;
                    Retire(have); // a thread that named itself a vCPU after it was first seen
                }
                Attach(tid, plan);
            }
        }
        foreach (ThreadCounters t in _threads.Values.Where(t => !alive.Contains(t.Tid)).ToList())
            Retire(t);
    }

    private void Attach(int tid, CounterPlan plan)
    {
        if (plan.Counters.Count == 0 || !EnsureFds(plan.Counters.Count))
            return;
        CounterGroup? group = CounterGroup.TryOpen(plan, tid, cpu: -1, out int errno);
        if (group is null)
        {
            if (errno != 3) // ESRCH: the thread has just exited
                Warn?.Invoke($"perf-count: cannot attach to thread {tid}: {KernelErrorText(errno)}");
            return;
        }
        var counters = new ThreadCounters(tid, plan, group);
        _threads[tid] = counters;
        _openFds += group.Size;
        counters.Collect(_shard!.Series);
    }

    /// <summary>Takes a thread's last counts (a counter outlives its exited task) and closes its group.</summary>
    private void Retire(ThreadCounters t)
    {
        t.Collect(_shard!.Series);
        for (int k = 0; k < _retiredTotals.Length; k++)
            _retiredTotals[k] += t.Totals[k];
        _threads.Remove(t.Tid);
        _openFds -= t.Fds;
        t.Dispose();
    }

    private bool _fdWarned;

    /// <summary>Raises RLIMIT_NOFILE when the next group would not fit; says so once when it cannot.</summary>
    private bool EnsureFds(int more)
    {
        ulong needed = (ulong)(_openFds + more + ReservedFds);
        if (needed <= _fdLimit)
            return true;
        _fdLimit = FdLimit.RaiseTo(Math.Max(needed, _fdLimit * 2));
        if (needed <= _fdLimit)
            return true;
        if (!_fdWarned)
        {
            _fdWarned = true;
            Warn?.Invoke($"perf-count: RLIMIT_NOFILE is {_fdLimit} and cannot be raised to {needed}: threads beyond it are not "
                + "counted per VM (their events show as unattributed); raise the hard limit (LimitNOFILE=) to count them");
        }
        return false;
    }

    private static string KernelErrorText(int errno) => $"{KernelProbes.ErrorText(errno)} (errno {errno})";


    public void Stop()
    {
        _stop.Cancel();
        if (_thread is not null && _thread.ThreadState != ThreadState.Unstarted)
            _thread.Join();
        _thread = null;
        if (_refresher is not null)
        {
            _aggregator.RemoveRefresher(_refresher);
            _refresher = null;
        }
        lock (_gate)
        {
            if (_shard is not null)
            {
                CollectThreads();
                ReadSystemTotals();
            }
            foreach (ThreadCounters t in _threads.Values)
                t.Dispose();
            foreach (CounterGroup g in _systemGroups)
                g.Dispose();
            _threads.Clear();
            _systemGroups.Clear();
            _openFds = 0;
            _shard = null;
        }
    }

    public void Dispose() => Stop();
}
