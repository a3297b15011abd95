using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Events;
using KvmObserve.Native;
using KvmObserve.Native.Kvm;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Sources.PerfCount;

/// <summary>
/// Counts kvm events in the kernel, as kvm_stat does: no record is copied. Each vCPU thread of each VM gets a group of
/// counters (<see cref="CounterPlan"/>: a total and a filtered counter per key, per tracepoint), its other threads the
/// kvmmmu totals; one group read per thread gives consistent counts, and each event is counted once, on its thread.
/// <para>
/// Events of threads not attached yet are caught by system-wide totals (one group per CPU), which run only in attach
/// windows: from the start, from each open of /dev/kvm (inotify), and from a poll that finds a VM with a vCPU fd it
/// had not before, until a scan finds a thread with counters for every vCPU fd of every VM: the vCPU threads a VMM
/// named for them at once; where the VMM does not name them (every thread gets counters), at a scan that attaches
/// nothing new, since the thread that will run a vCPU may start after its fd. A VMM that holds a VM fd and no vCPU fd
/// is setting a VM up: waited for, up to 5 s; one that holds neither (it closed its VM and lives on) runs no guest.
/// Meanwhile procfs is scanned every 40 ms, and what the system-wide totals count and no thread accounts for is
/// reported as unattributed. Outside windows they are off (left on, they counted every event a second time, which made
/// this source cost about 1.4x `perf stat -a`), and what the discovery thread's scans find is attached.
/// </para>
/// The unattributed count is a lower bound: the thread groups are read after the system-wide ones and before they
/// start, so an attached thread's event is never taken for an unattributed one; what the running vCPUs do while the
/// counters are read at a window's edges (tens of events) can be missed instead.
/// </summary>
public sealed class PerfCountingSource : IEventSource
{
    private const int ReservedFds = 256; // the agent's own files, sockets and Kestrel
    private const int MinRescanMs = 200;
    /// <summary>While a window is open: poll and rescan this often, so a new VM's threads get counters within tens of
    /// milliseconds (a scan of procfs takes 2-10 ms here) and the window is short.</summary>
    private const int WindowPollMs = 20, WindowRescanMs = 40;
    /// <summary>How long an open of /dev/kvm keeps a window open, from the last open: the VMM that opened it makes its VM
    /// fd within it (a capability probe makes none).</summary>
    private const int OpenGraceMs = 1000;
    /// <summary>How long a VMM that holds a VM fd and no vCPU fd keeps a window open: it is setting a VM up (QEMU
    /// allocates guest memory before it creates vCPUs), and its first vCPU may run as soon as it is created. One that
    /// holds no VM fd (it closed its VM and lives on) runs no guest: no window for it. A vCPU fd that appears later
    /// still opens one, at the next poll.</summary>
    private static readonly TimeSpan SetupGrace = TimeSpan.FromSeconds(5);
    private static readonly int Kinds = Enum.GetValues<KvmEventKind>().Length;

    private readonly SourceOptions _options;
    private readonly Aggregator _aggregator;
    private readonly IReadOnlyList<int> _cpus;
    private readonly CountingKeys _keys;
    private readonly uint _hostIsa;
    private readonly string _kvmDevice;
    private readonly object _gate = new();
    private readonly Dictionary<int, ThreadCounters> _threads = new();
    private readonly List<CounterGroup> _systemGroups = new();
    private readonly long[] _retiredTotals = new long[Kinds];
    private readonly long[] _systemTotals = new long[Kinds];     // last read; frozen while the system groups are off
    private readonly long[] _systemAtOpen = new long[Kinds];     // when the window opened
    private readonly long[] _attributedAtOpen = new long[Kinds]; // read just before it opened
    private readonly long[] _windowUnattributed = new long[Kinds];
    private readonly long[] _closedUnattributed = new long[Kinds];
    private readonly long[] _reportedEvents = new long[Kinds];
    private readonly long[] _attributed = new long[Kinds];      // CollectThreads' result
    private Shard? _shard;
    private CounterPlan? _vcpuPlan, _otherPlan, _totalsPlan;
    private Thread? _thread;
    private volatile bool _stopping;
    private SafeFd? _wake, _kvmOpens;
    private Action? _refresher;
    private IReadOnlyList<TracepointState> _tracepoints = [];
    private DateTime _lastScan;
    private long _scansSeen = -1; // the registry's ScansDone when this last attached
    private int _openFds;
    private ulong _fdLimit;

    // The attach window
    private bool _windowOpen, _alwaysOpen;
    private bool _kvmOpenPending; // an open of /dev/kvm no attach has followed yet
    private DateTime _openedAt, _kvmOpenedAt;
    private TimeSpan _windowTime;
    private long _windows;
    private readonly Dictionary<VmInfo, IReadOnlyList<int>> _countedVcpuFds = new(); // each VM's vCPU fds when all had counters
    private readonly HashSet<VmInfo> _namingVmms = new(); // VMMs seen to name their vCPU threads
    private readonly Dictionary<VmInfo, DateTime> _settingUp = new(); // VMMs seen holding a VM fd and no vCPU fd: since when

    public PerfCountingSource(SourceOptions options, Aggregator aggregator, string tracefsRoot, IReadOnlyList<int> cpus,
        CountingKeys? keys = null, uint? hostIsa = null, string kvmDevice = KvmDevice.Node)
    {
        _options = options;
        _aggregator = aggregator;
        _cpus = cpus;
        _keys = keys ?? new CountingKeys();
        _hostIsa = hostIsa ?? HostIsa.Detect();
        _kvmDevice = kvmDevice;
        Decoders = new TracefsFormats(tracefsRoot).Decoders();
    }

    private volatile int _tid;
    private readonly ManualResetEventSlim _running = new();

    /// <summary>Its own thread: it answers each open of /dev/kvm by starting the system-wide counters, and the vCPU of
    /// a VMM that runs its VM right after the open (`overhead`'s) runs uncounted until it does. At nice 19, 4 of 11
    /// `overhead` rounds missed 298-913 of 55,000 exits; at its starting nice, the worst of 11 rounds missed 144-687 (three
    /// runs).</summary>
    public IReadOnlyList<int> UrgentThreads => _tid != 0 ? [_tid] : [];

    public string Name => "perf-count";

    public KvmEventDecoders Decoders { get; }

    public IReadOnlyList<TracepointState> Tracepoints => _tracepoints;

    public bool HasRecords => false;

    private long _wakeups;

    /// <summary>Times its thread woke (every poll timeout, and each open of /dev/kvm). Outside a window a wake-up reads
    /// a counter only when a scan is due.</summary>
    public long Wakeups => Interlocked.Read(ref _wakeups);

    private Action<string>? Warn => _options.Warn;

    /// <summary>Events the system-wide counters saw that no attached thread accounts for (threads not yet attached).</summary>
    public long UnattributedOf(KvmEventKind kind)
    {
        lock (_gate)
            return _closedUnattributed[(int)kind] + _windowUnattributed[(int)kind];
    }

    /// <summary>How many counters a thread has (its plan's), 0 when it has none: which plan each thread of a VMM got.</summary>
    public int CountersOn(int tid)
    {
        lock (_gate)
            return _threads.TryGetValue(tid, out ThreadCounters? t) ? t.Plan.Counters.Count : 0;
    }

    /// <summary>Attach windows so far, and how long they were open in all: the time the events of attached threads were counted twice.</summary>
    public (long Windows, double Seconds)? AttachWindows
    {
        get
        {
            lock (_gate)
                return (_windows, (_windowTime + (_windowOpen ? DateTime.UtcNow - _openedAt : TimeSpan.Zero)).TotalSeconds);
        }
    }

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
            _wake = new SafeFd(Sys.EventFd());
            _kvmOpens = Sys.TryInotify(_kvmDevice, Sys.InOpen, out int inotifyErrno);
            if (_kvmOpens is null)
            {
                _alwaysOpen = true;
                Warn?.Invoke($"perf-count: cannot watch {_kvmDevice} for new VMs ({KernelErrorText(inotifyErrno)}): the "
                    + "system-wide counters stay on, so every event is counted twice");
            }
            // Opened counting: the first window, until the first scans have attached every VM there is
            foreach (int cpu in _cpus)
                _systemGroups.Add(OpenOrThrow(_totalsPlan, pid: -1, cpu, $"cpu{cpu}"));
            _windowOpen = true;
            _openedAt = DateTime.UtcNow;
            _windows = 1;
            // The plan's filters are checked once, on this thread, so a kernel that rejects one fails here, named.
            // (Opened after the system groups, so closing it unregisters no tracepoint.)
            using (CounterGroup probe = OpenOrThrow(_vcpuPlan, pid: 0, cpu: -1, "this thread"))
            { }
            _openFds = _systemGroups.Sum(g => g.Size);
            Refresh();
            _refresher = Refresh;
            _aggregator.AddRefresher(_refresher);
            _thread = new Thread(Run) { IsBackground = true, Name = "kvmobserve perf-count" };
            _thread.Start();
            _running.Wait(); // its tid is known (UrgentThreads)
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
        _tid = Sys.Gettid();
        _running.Set();
        while (!_stopping)
        {
            bool kvmOpened = false;
            if (_kvmOpens is not null)
            {
                int woke = Sys.PollReadable(_kvmOpens, _wake!, WindowPaced ? WindowPollMs : _options.PollTimeoutMs);
                kvmOpened = woke == 1 && Sys.DrainNonBlocking(_kvmOpens);
            }
            else
            {
                Sys.PollReadable(_wake!, _wake!, _options.PollTimeoutMs);
            }
            if (_stopping)
                break;
            Interlocked.Increment(ref _wakeups);
            try
            {
                Refresh(kvmOpened, poll: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                if (e.Message != lastWarning) // one line per distinct problem, not one per poll
                    Warn?.Invoke($"perf-count: {e.Message}");
                lastWarning = e.Message;
            }
        }
    }

    /// <summary>A window is open (and closes once every VM is attached): poll at its pace.</summary>
    private bool WindowPaced
    {
        get { lock (_gate) return _windowOpen && !_alwaysOpen; }
    }

    /// <summary>Reads every group, adds what is new to the series, and attaches to threads that appeared.</summary>
    public void Refresh() => Refresh(kvmOpened: false, poll: false);

    private void Refresh(bool kvmOpened, bool poll)
    {
        lock (_gate)
        {
            if (_shard is null)
                return;
            lock (_shard.Gate) // this thread is shard 0's writer now: compaction waits
                RefreshLocked(kvmOpened, poll);
        }
    }

    /// <summary>A fold (<paramref name="poll"/> false: a scrape, the storm detector, housekeeping) reads every group. A
    /// poll of this source's own thread outside a window reads none: it looks for what needs a window (an open of
    /// /dev/kvm, a vCPU fd without counters) and attaches what the registry's last scan found; the counts keep in the
    /// kernel until the next fold. Reading them at every poll (10 a second) was a fifth of this source's CPU, and each
    /// read of a running vCPU's group interrupts its CPU (an IPI of about 13 us here).
    /// <para>
    /// Regular scans of procfs are the discovery thread's; this thread scans in a window (every 40 ms), and on its own
    /// only when that thread is late (none runs, or it is starved). It scanned every 2 s as well, under this source's
    /// locks: an open of /dev/kvm that came meanwhile waited for the scan, and the VM's first exits went uncounted.
    /// </para></summary>
    private void RefreshLocked(bool kvmOpened, bool poll)
    {
        DateTime now = DateTime.UtcNow;
        VmRegistry registry = _aggregator.Registry;
        if (kvmOpened)
        {
            // A VMM may be starting: count what its threads do before they are attached, from now on
            OpenWindow();
            _kvmOpenPending = true;
            _kvmOpenedAt = now;
        }
        bool fdsChanged = !_windowOpen && VcpuFdsChanged();
        if (fdsChanged)
            OpenWindow(); // perhaps a vCPU added to a running VM: catch it until it has counters
        bool learnt = registry.ScansDone != _scansSeen; // someone scanned since this last attached
        DateTime lastScan = registry.LastScanAt > _lastScan ? registry.LastScanAt : _lastScan;
        bool scanLate = now >= lastScan.AddMilliseconds(_options.DiscoveryIntervalMs * 1.5);
        if (poll && !_windowOpen && !learnt && !scanLate)
            return;
        long[]? attributed = null; // read only in a window, or in a fold
        bool grew = false;
        if (_windowOpen)
        {
            ReadSystemTotals(); // first: what the threads have counted since can only lower the estimate
            attributed = CollectThreads();
            grew = UpdateWindow(attributed);
        }
        else if (!poll)
        {
            attributed = CollectThreads();
        }

        bool paced = _windowOpen && !_alwaysOpen;
        bool rescanDue = kvmOpened || fdsChanged || now >= _lastScan.AddMilliseconds(paced ? WindowRescanMs : MinRescanMs);
        bool scan = scanLate || (rescanDue && (grew || paced));
        if (scan || learnt)
        {
            if (scan)
            {
                registry.Scan();
                _lastScan = now;
            }
            _scansSeen = registry.ScansDone;
            (bool complete, bool byName, bool attached) = AttachAndRetire(deciding: paced);
            if (attributed is not null)
                attributed = CollectThreads();
            // The grace runs from the last open, whatever is attached meanwhile: when VMMs start together, one VM's
            // vCPU ended the wait of opens whose VMs were still to come (inotify merges opens close together), and
            // each of 12 VMs started at once ran ~30% of its exits uncounted. A VM fd made in it holds the window on.
            if (_kvmOpenPending && now >= _kvmOpenedAt.AddMilliseconds(OpenGraceMs))
                _kvmOpenPending = false;
            if (!complete)
                OpenWindow(); // a vCPU without counters (added to a running VM, or past the fd limit)
            else if (paced && !_kvmOpenPending && (!attached || byName))
                CloseWindow(); // each vCPU fd has its named thread counted, or every thread had counters at the last scan too
            // (Not waiting for the unattributed estimate to stop growing: it is read while the attached threads run,
            // so it creeps up by the few events of each read's gap, and a busy VM would hold the window open.)
        }
        if (attributed is not null)
            ReportEvents(attributed);
    }

    /// <summary>Whether a VM has a vCPU fd it had not when all of them had counters (two stat(2) calls per VM; its
    /// fds are walked again only when its threads or fds changed in number).</summary>
    private bool VcpuFdsChanged()
    {
        foreach ((VmInfo vm, IReadOnlyList<int> counted) in _countedVcpuFds)
        {
            IReadOnlyList<int> now = _aggregator.Registry.VcpuFds(vm);
            if (vm.ExitedAt is null && !ReferenceEquals(now, counted) && now.Except(counted).Any())
                return true; // a vCPU index that had no counters (fewer is no reason: a VM going away)
        }
        return false;
    }

    /// <summary>Starts the system-wide counters, after reading what the threads have counted so far.</summary>
    private void OpenWindow()
    {
        if (_windowOpen)
            return;
        Array.Copy(CollectThreads(), _attributedAtOpen, Kinds);
        Array.Copy(_systemTotals, _systemAtOpen, Kinds); // they kept their counts while off
        foreach (CounterGroup g in _systemGroups)
            g.Enable();
        _windowOpen = true;
        _openedAt = DateTime.UtcNow; // not the poll's time: a window can open and close within one poll's scan
        _windows++;
    }

    /// <summary>Stops the system-wide counters, then takes the window's last estimate from the threads and them. A
    /// stopped counter keeps its count, so the threads are read first: a running vCPU's events between the stop and
    /// the threads' read are counted by its thread and not by the system-wide totals, and are taken off the estimate
    /// (a lower bound); the read of the totals no longer widens that gap.</summary>
    private void CloseWindow()
    {
        foreach (CounterGroup g in _systemGroups)
            g.Disable();
        long[] attributed = CollectThreads();
        ReadSystemTotals();
        UpdateWindow(attributed);
        for (int k = 0; k < Kinds; k++)
        {
            _closedUnattributed[k] += _windowUnattributed[k];
            _windowUnattributed[k] = 0;
        }
        _windowOpen = false;
        _windowTime += DateTime.UtcNow - _openedAt;
        ReportEvents(attributed);
    }

    /// <summary>This window's unattributed events: system-wide less attributed since it opened. It only grows, and
    /// each reading is at or below the truth (system totals read first), so its maximum is kept; true when it grew.</summary>
    private bool UpdateWindow(long[] attributed)
    {
        bool grew = false;
        for (int k = 0; k < Kinds; k++)
        {
            long estimate = (_systemTotals[k] - _systemAtOpen[k]) - (attributed[k] - _attributedAtOpen[k]);
            if (estimate > _windowUnattributed[k])
            {
                _windowUnattributed[k] = estimate;
                grew = true;
            }
        }
        return grew;
    }

    /// <summary>kvmobserve_events_total: what the threads counted plus what no thread did.</summary>
    private void ReportEvents(long[] attributed)
    {
        for (int k = 0; k < Kinds; k++)
        {
            long total = attributed[k] + _closedUnattributed[k] + _windowUnattributed[k];
            long delta = total - _reportedEvents[k];
            if (delta > 0)
            {
                _shard!.AddEvents((KvmEventKind)k, delta);
                _reportedEvents[k] = total;
            }
        }
    }

    /// <summary>Collects every attached thread; returns the events per kind attributed so far (retired included).</summary>
    private long[] CollectThreads()
    {
        long[] attributed = _attributed; // one buffer, read by the caller before the next collect
        Array.Copy(_retiredTotals, attributed, Kinds);
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
        Span<long> totals = stackalloc long[Kinds];
        foreach (CounterGroup g in _systemGroups)
        {
            if (!g.TryRead(values))
                return; // keep the last reading: a partial sum would look like fewer events
            foreach ((KvmEventKind kind, int counter) in _totalsPlan.Totals)
                totals[(int)kind] += values[counter];
        }
        for (int k = 0; k < Kinds; k++)
            _systemTotals[k] = Math.Max(_systemTotals[k], totals[k]);
    }

    /// <summary>Attaches to the threads of every running VM that have no counters yet, and retires the counters of
    /// threads gone. Complete: every VM has vCPU fds, and a thread with counters for each (its named vCPU threads; every
    /// thread of a VMM that does not name them). By name: complete, and every VM's vCPU fds matched to the threads
    /// named for them (in a VMM that does not name them, the thread that will run a vCPU may not exist yet, so one
    /// scan more confirms it). Changed: a thread was attached. While a window is open (<paramref name="deciding"/>: it
    /// closes on what this finds), each VM's fds are walked afresh, not taken from the registry's cache.</summary>
    private (bool Complete, bool ByName, bool Changed) AttachAndRetire(bool deciding)
    {
        var alive = new HashSet<int>();
        DateTime now = DateTime.UtcNow;
        bool complete = true, byName = true, changed = false;
        foreach (VmInfo vm in _aggregator.Registry.Vms())
        {
            if (vm.ExitedAt is not null)
                continue;
            IReadOnlyList<(int Tid, int Vcpu)> threads = _aggregator.Registry.ThreadsOf(vm);
            if (threads.Count == 0)
                continue; // exited since the scan
            // VMMs that name their vCPU threads (QEMU, load) get the exit counters on those only; others on every thread.
            // Once named, always: a VMM between two VMs has no vCPU thread, and is no less one that names them.
            if (threads.Any(t => t.Vcpu >= 0))
                _namingVmms.Add(vm);
            bool named = _namingVmms.Contains(vm);
            IReadOnlyList<int> vcpuFds = _aggregator.Registry.VcpuFds(vm, fresh: deciding); // HoldsVmFd reads this walk
            foreach ((int tid, int vcpu) in threads)
            {
                alive.Add(tid);
                // With no vCPU fd, no thread of it can run a vCPU. A VMM that creates its vCPU fds before their threads
                // (as `load` and Firecracker do) looks, until those threads are named, like one that does not name
                // them: every thread gets the vCPU plan then, and goes back to the kvmmmu counters once the VMM is
                // seen to name them. (They kept it: `overhead`'s VMM ran with 145 counters on each of its ~20
                // threads, every fold read them all, and the agent held 1,400 fds where 300 do.)
                CounterPlan plan = vcpu >= 0 || (!named && vcpuFds.Count > 0) ? _vcpuPlan! : _otherPlan!;
                if (_threads.TryGetValue(tid, out ThreadCounters? have))
                {
                    if (have.Plan == plan)
                        continue;
                    Retire(have); // its counts so far stay in its series; the new group counts on from there
                }
                if (Attach(tid, plan, out bool exited))
                {
                    changed = true;
                }
                else if (exited)
                {
                    alive.Remove(tid);
                }
            }
            bool counted = vcpuFds.Count > 0
                ? (named
                    ? vcpuFds.All(i => threads.Any(t => t.Vcpu == i && _threads.TryGetValue(t.Tid, out ThreadCounters? c) && c.Plan == _vcpuPlan))
                    // A thread that exited since the scan needs no counters: it opened a window until the next scan
                    : threads.All(t => _threads.ContainsKey(t.Tid) || !alive.Contains(t.Tid)))
                : !SettingUp(vm, now);
            if (vcpuFds.Count > 0)
                _settingUp.Remove(vm);
            if (counted)
                _countedVcpuFds[vm] = vcpuFds;
            else
                _countedVcpuFds.Remove(vm);
            complete &= counted;
            byName &= named;
        }
        ForgetExited(_countedVcpuFds);
        ForgetExited(_settingUp);
        _namingVmms.RemoveWhere(v => v.ExitedAt is not null);
        foreach (ThreadCounters t in _threads.Values.Where(t => !alive.Contains(t.Tid)).ToList())
            Retire(t);
        return (complete, complete && byName, changed);
    }

    private static void ForgetExited<T>(Dictionary<VmInfo, T> byVm)
    {
        foreach (VmInfo gone in byVm.Keys.Where(v => v.ExitedAt is not null).ToList())
            byVm.Remove(gone);
    }

    /// <summary>Whether a VMM without vCPU fds is setting a VM up: it holds a VM fd, for less than
    /// <see cref="SetupGrace"/> so far.</summary>
    private bool SettingUp(VmInfo vm, DateTime now)
    {
        if (!_aggregator.Registry.HoldsVmFd(vm))
        {
            _settingUp.Remove(vm);
            return false;
        }
        if (!_settingUp.TryGetValue(vm, out DateTime since))
            _settingUp[vm] = since = now;
        return now - since < SetupGrace;
    }

    /// <summary>Opens a thread's group; <paramref name="exited"/> when the thread has exited since the scan (ESRCH).</summary>
    private bool Attach(int tid, CounterPlan plan, out bool exited)
    {
        exited = false;
        if (plan.Counters.Count == 0 || !EnsureFds(plan.Counters.Count))
            return false;
        CounterGroup? group = CounterGroup.TryOpen(plan, tid, cpu: -1, out int errno);
        if (group is null)
        {
            exited = errno == 3; // ESRCH
            if (!exited)
                Warn?.Invoke($"perf-count: cannot attach to thread {tid}: {KernelErrorText(errno)}");
            return false;
        }
        var counters = new ThreadCounters(tid, plan, group);
        _threads[tid] = counters;
        _openFds += group.Size;
        counters.Collect(_shard!.Series);
        return true;
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
        _stopping = true;
        if (_wake is not null && !_wake.IsClosed)
            Sys.Write(_wake, BitConverter.GetBytes(1UL));
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
                lock (_shard.Gate) // as in Refresh: a compaction of the shard waits for the last counts
                {
                    if (_windowOpen)
                        CloseWindow(); // its last estimate, and its time
                    else
                        ReportEvents(CollectThreads());
                }
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
        _kvmOpens?.Dispose();
        _kvmOpens = null;
        _wake?.Dispose();
        _wake = null;
    }

    public void Dispose()
    {
        Stop();
        _running.Dispose();
    }
}
