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
public sealed partial class PerfCountingSource : IEventSource
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
            // From the last open, whatever is attached meanwhile: inotify merges opens close together, so one VM's
            // vCPU says nothing of the VMs still to come. A VM fd made in the grace holds the window on (SettingUp).
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
