using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Exposition;
using KvmObserve.Native;
using KvmObserve.Native.Kvm;
using KvmObserve.Sources;
using KvmObserve.Sources.Bpf;
using KvmObserve.Sources.Perf;
using KvmObserve.Sources.PerfCount;
using KvmObserve.Sources.Recording;
using KvmObserve.Sources.Tracefs;
using KvmObserve.Aggregation.Storms;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// Picks and runs the event source for the lifetime of the host, and a housekeeping thread that names new threads as
/// soon as their first series appears (while their VMs still run) and rescans procfs for VMs.
/// </summary>
internal sealed class SourceService(AgentOptions options, Aggregator aggregator, SchedstatCollector schedstat,
    StormDetector storms, ILogger<SourceService> logger) : IHostedService
{
    private const int SchedstatIntervalMs = 500;
    private const int MaintainIntervalMs = 500;
    private IEventSource? _source;
    private Thread? _housekeeping;
    private readonly CancellationTokenSource _stop = new();
    private int _stopped;

    public ExpositionContext? Context { get; private set; }

    public IEventSource? Source => _source;

    /// <summary>tracefs (found or mounted), whether perf_event_open opens a kvm tracepoint here, and whether the BPF
    /// programs load (loaded and released at once).</summary>
    public static HostCapabilities Probe(bool mountIfNeeded)
    {
        string? root = TracefsLocator.Find(mountIfNeeded, out string? tracefsProblem);
        string? perfProblem = null;
        if (root is not null)
        {
            string idFile = Path.Combine(root, "events", "kvm", "kvm_userspace_exit", "id");
            if (!File.Exists(idFile))
                perfProblem = "the kvm tracepoints are not in this kernel (is the kvm module loaded?)";
            else if (KernelProbes.TryPerfTracepoint(int.Parse(File.ReadAllText(idFile).Trim(), System.Globalization.CultureInfo.InvariantCulture)) is int errno and not 0)
                perfProblem = $"{KernelProbes.ErrorText(errno)} (errno {errno}; needs CAP_PERFMON or root, and kernel.perf_event_paranoid)";
        }
        string? bpfProblem = root is null ? "tracefs is needed for the events' formats" : BpfObjectLoader.Probe(root);
        return new HostCapabilities(root, tracefsProblem, perfProblem, bpfProblem);
    }

    public static IEventSource Create(string name, SourceOptions sourceOptions, Aggregator aggregator, string root, BpfOptions? bpf = null,
        CountingKeys? keys = null) => name switch
    {
        "bpf" => new BpfSource(sourceOptions, aggregator, root, bpf),
        "tracefs" => new TracefsSource(sourceOptions, aggregator, root),
        "perf" => new PerfSamplingSource(sourceOptions, aggregator, root, CpuTopology.OnlineCpus()),
        "perf-count" => new PerfCountingSource(sourceOptions, aggregator, root, CpuTopology.OnlineCpus(), keys),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "not a source"),
    };

    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (options.Replay is string recording)
        {
            var replay = new ReplaySource(recording, aggregator, schedstat, speed: 1, loop: true);
            _source = replay;
            Log.SourcePicked(logger, "replay", options.Source, $"--replay {recording}");
            _source.Start();
            Log.ReplayStarted(logger, recording, replay.Header.Records, replay.Header.Vm, replay.Header.Host);
            Publish("--replay");
            SetNice();
            return Task.CompletedTask;
        }

        HostCapabilities host = Probe(mountIfNeeded: true);
        (string name, string reason) = SourceSelection.Choose(options.Source, options.Metrics, host);
        Log.SourcePicked(logger, name, options.Source, reason);
        var sourceOptions = new SourceOptions
        {
            BufferKb = options.BufferSizeKb,
            WakeupPercent = options.WakeupPercent,
            PollTimeoutMs = options.PollTimeoutMs,
            MapRingBuffer = options.TracefsMmap,
            Warn = message => Log.SourceWarning(logger, message),
            DiscoveryIntervalMs = options.DiscoveryIntervalMs,
            Events = MetricSelection.TracepointsFor(options.Metrics),
        };
        // Whatever source runs, instances of agents that died are removed (the tracefs source would do it again).
        foreach (string stale in TracefsInstance.RemoveStale(host.TracefsRoot!))
            Log.StaleInstanceRemoved(logger, stale);
        _source = Create(name, sourceOptions, aggregator, host.TracefsRoot!,
            new BpfOptions { MapEntries = options.BpfMapEntries, Stats = options.BpfStats }, new CountingKeys { Keyed = options.CountKeys });
        if (options.FlightRecorderDirectory is string directory)
        {
            if (!_source.HasRecords)
                Log.SourceWarning(logger, $"--flight-recorder: off, because source {name} counts in the kernel and has no records to keep (use --source tracefs or perf)");
            else
            {
                Recorder = new FlightRecorder(aggregator, directory, options.FlightRecorderSeconds, name,
                    new TracefsFormats(host.TracefsRoot!).Texts(), FlightRecorder.DefaultBytesPerCpu(aggregator.Shards.Count));
                schedstat.Sampled = Recorder.OnSchedstat;
            }
        }
        _source.Start();
        foreach (TracepointState t in _source.Tracepoints)
        {
            if (!t.Enabled)
                Log.TracepointUnavailable(logger, t.Status.Tracepoint.FullName, t.Status.Problem ?? "not selected by --metrics");
        }
        if (!_source.Decoders.ExitReasons.FromFormat)
            Log.BuiltInExitReasons(logger);
        Log.SourceStarted(logger, _source.Name, _source.Tracepoints.Count(t => t.Enabled), _source.Tracepoints.Count,
            CpuTopology.OnlineCpus().Count, host.TracefsRoot!);
        if (KvmDevice.Problem() is string missing)
            Log.NoKvmDevice(logger, missing);
        Publish(reason);
        SetNice(); // after the source and the housekeeping threads started: every one but the urgent ones
        return Task.CompletedTask;
    }

    /// <summary>Sets the threads' nice, but for the source's urgent threads and those that read VMs from procfs: a VM's
    /// name, vCPUs and run time can be read only while it runs, and a VM that lives a few seconds on busy CPUs outlived
    /// a nice-19 scan (and a nice-19 schedstat sampler, starved exactly when vCPUs wait for their CPUs).</summary>
    private void SetNice()
    {
        (int? nice, string reason) = ThreadNice.For(options.Nice, _source!.HasRecords);
        if (nice is int n)
        {
            _threadsStarted.Wait();
            ThreadNice.Apply(n, [.. _source.UrgentThreads, _discoveryTid, _namingTid, _vmEventsTid, _stealTid]);
            Log.NiceSet(logger, n, reason);
        }
    }

    /// <summary>What the renderer needs to know of a running source (the agent's, or `replay`'s).</summary>
    public static ExpositionContext ContextFor(IEventSource source, Aggregator aggregator, string requested, string reason,
        SchedstatCollector? schedstat, StormDetector? storms) => new()
    {
        Aggregator = aggregator,
        SourceName = source.Name,
        SourceRequested = requested,
        SourceReason = reason,
        Tracepoints = source.Tracepoints
            .Select(t => new TracepointRow(t.Status.Tracepoint.FullName, t.Status.Available, t.Enabled)).ToList(),
        ExitReasons = source.Decoders.ExitReasons,
        UserspaceExitReasons = source.Decoders.UserspaceExitReasons,
        Unattributed = source.UnattributedOf,
        Wakeups = () => source.Wakeups,
        FailedReaders = () => source.Failures.Count(),
        AttachWindows = source.AttachWindows is null ? null : () => source.AttachWindows,
        Bpf = source is BpfSource bpf
            ? () => new BpfSelf(bpf.CostAccounted, bpf.ProgramCosts(), bpf.MapFullByFamily(), bpf.StateFull)
            : null,
        Schedstat = schedstat,
        Storms = storms,
    };

    /// <summary>The flight recorder, when --flight-recorder is set and the source has records.</summary>
    public FlightRecorder? Recorder { get; private set; }

    /// <summary>Makes the running source's aggregates readable and starts the housekeeping threads.</summary>
    private void Publish(string reason)
    {
        Context = ContextFor(_source!, aggregator, options.Source, reason, schedstat, storms);
        aggregator.Registry.Scan();
        _housekeeping = new Thread(Housekeeping) { IsBackground = true, Name = "kvmobserve housekeeping" };
        _housekeeping.Start();
        // The procfs walk for VMs takes tens of ms on a busy host: on its own thread, so naming a new thread at its
        // first series (housekeeping) never waits behind it.
        _discovery = new Thread(Discovery) { IsBackground = true, Name = "kvmobserve discovery" };
        _discovery.Start();
        _naming = new Thread(Naming) { IsBackground = true, Name = "kvmobserve naming" };
        _naming.Start();
        _steal = new Thread(SampleSchedstat) { IsBackground = true, Name = "kvmobserve schedstat" };
        _steal.Start();
        if (KvmUevents.TryOpen(out int errno) is KvmUevents uevents)
        {
            _vmEvents = new Thread(() => VmEvents(uevents)) { IsBackground = true, Name = "kvmobserve vm events" };
            _vmEvents.Start();
        }
        else
        {
            Log.NoVmUevents(logger, errno);
            _threadsStarted.Signal();
        }
    }

    private Thread? _discovery;
    private readonly CountdownEvent _threadsStarted = new(4);
    private int _discoveryTid, _namingTid, _vmEventsTid, _stealTid;

    /// <summary>Scans every interval after the last scan, whoever did it: a source that scans on its own (perf-count,
    /// in its attach windows and when this thread is late) moves the next one on, so procfs is not walked twice.</summary>
    private void Discovery()
    {
        _discoveryTid = Sys.Gettid();
        _threadsStarted.Signal();
        var interval = TimeSpan.FromMilliseconds(options.DiscoveryIntervalMs);
        DateTime turn = DateTime.UtcNow; // this thread's last turn: a registry that never scans (detached) is no busy loop
        while (true)
        {
            DateTime last = aggregator.Registry.LastScanAt > turn ? aggregator.Registry.LastScanAt : turn;
            TimeSpan wait = last + interval - DateTime.UtcNow;
            if (_stop.Token.WaitHandle.WaitOne(wait > TimeSpan.Zero ? wait : TimeSpan.Zero))
                return;
            aggregator.Registry.Scan(unlessWithin: interval * 0.9); // (a wait can end a little early)
            turn = DateTime.UtcNow;
        }
    }

    private Thread? _naming;
    private Thread? _vmEvents;
    private readonly SafeFd _stopFd = new(Sys.EventFd());

    /// <summary>Registers each VM as KVM announces its creation, while its process runs: a scan every interval misses
    /// a VM that lives less, and its threads, gone by the time their records are read, could not be told apart from
    /// any other process's (the sources then give each record's process, <see cref="Shard.NoteProcess"/>).</summary>
    private void VmEvents(KvmUevents uevents)
    {
        _vmEventsTid = Sys.Gettid();
        _threadsStarted.Signal();
        var pids = new List<int>();
        using (uevents)
        {
            while (!_stop.IsCancellationRequested)
            {
                uevents.Wait(_stopFd, 1_000);
                pids.Clear();
                bool complete = uevents.ReadCreated(pids);
                foreach (int pid in pids)
                    aggregator.Registry.Learn(pid);
                if (!complete)
                    aggregator.Registry.Scan(); // some were dropped: which, only procfs can tell now
            }
        }
    }

    /// <summary>Names a thread as soon as its first series appears, while its VM still runs: on its own thread, so a
    /// fold, a compaction or a schedstat sample never delays it.</summary>
    private void Naming()
    {
        _namingTid = Sys.Gettid();
        _threadsStarted.Signal();
        WaitHandle[] wake = [_stop.Token.WaitHandle, aggregator.NewSeries];
        while (WaitHandle.WaitAny(wake, 250) != 0)
            aggregator.ResolveNewThreads();
    }

    private Thread? _steal;

    /// <summary>Reads every VM thread's schedstat each interval, between scrapes too: a thread's last reading before
    /// it exits is what its run and steal time keep.</summary>
    private void SampleSchedstat()
    {
        _stealTid = Sys.Gettid();
        _threadsStarted.Signal();
        do
            schedstat.Sample();
        while (!_stop.Token.WaitHandle.WaitOne(SchedstatIntervalMs));
    }

    private void Housekeeping()
    {
        var reported = new HashSet<int>();
        DateTime nextMaintain = DateTime.UtcNow;
        while (!_stop.Token.WaitHandle.WaitOne(250))
        {
            if (DateTime.UtcNow >= nextMaintain)
            {
                nextMaintain = DateTime.UtcNow.AddMilliseconds(MaintainIntervalMs);
                // Fold what the readers counted, rank hot keys, forget VMs past their grace and hot-path entries
                // that are done with.
                foreach (string vm in aggregator.Maintain(DateTime.UtcNow))
                {
                    schedstat.Forget(vm);
                    Log.VmExpired(logger, vm);
                }
            }
            foreach ((int cpu, Exception error) in _source!.Failures)
            {
                if (reported.Add(cpu))
                    Log.ReaderFailed(logger, cpu, error.Message);
            }
        }
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _stopped, 1) == 1)
            return Task.CompletedTask; // stopped already (a failed start stops it before the host does)
        _stop.Cancel();
        Sys.Write(_stopFd, BitConverter.GetBytes(1L));
        _housekeeping?.Join();
        _discovery?.Join();
        _naming?.Join();
        _steal?.Join();
        _vmEvents?.Join();
        _stopFd.Dispose();
        if (_source is not null)
        {
            _source.Stop();
            Log.SourceStopped(logger, _source.Name);
        }
        Recorder?.Dispose();
        return Task.CompletedTask;
    }
}
