using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Native;

namespace KvmObserve.Sources.Tracefs;

/// <summary>
/// Streams kvm records through a private tracefs instance: enables every known tracepoint this kernel has, reads each
/// CPU's trace_pipe_raw and parses the pages itself. Stop, Dispose and a crash all end with the instance removed (the
/// last by the next start's stale clean-up).
/// </summary>
public sealed class TracefsSource : IEventSource
{
    private readonly SourceOptions _options;
    private readonly Aggregator _aggregator;
    private readonly List<CpuReader> _readers = new();
    private TracefsInstance? _instance;
    private SafeFd? _wake;
    private List<TracepointState> _tracepoints = new();

    /// <summary>buffer_percent: the reader wakes when a quarter of the ring is full, or at the poll timeout. Waking at
    /// every record made a PIO exit 2.6x slower; waking at half of the kernel's 1.4 MiB let four busy vCPUs on two
    /// cores starve the readers until the ring overwrote records, now and then.</summary>
    public const int DefaultWakeupPercent = 25;

    /// <summary>Per-CPU ring of the instance: 4 MiB, so a reader starved for a moment loses nothing.</summary>
    public const int DefaultBufferKb = 4096;

    public TracefsSource(SourceOptions options, Aggregator aggregator, string tracefsRoot)
    {
        _options = options;
        _aggregator = aggregator;
        Formats = new TracefsFormats(tracefsRoot);
        Decoders = Formats.Decoders();
    }

    public string Name => "tracefs";

    public TracefsFormats Formats { get; }

    public KvmEventDecoders Decoders { get; }

    public IReadOnlyList<TracepointState> Tracepoints => _tracepoints;

    public IReadOnlyList<int> Cpus => _readers.Select(r => r.Cpu).ToList();

    public long Wakeups => _readers.Sum(r => Interlocked.Read(ref r.Wakeups));

    public void Start()
    {
        string? headerProblem = Formats.CheckEventHeader();
        if (headerProblem is not null)
            throw new NotSupportedException($"tracefs ring buffer layout not supported: {headerProblem}");
        PageHeaderFormat layout = Formats.PageHeader();

        TracefsInstance.RemoveStale(Formats.Root); // instances of agents that died; the agent logs them itself
        _instance = TracefsInstance.Create(Formats.Root);
        try
        {
            _instance.SetBufferSizeKb(_options.BufferKb > 0 ? _options.BufferKb : DefaultBufferKb);
            _instance.SetBufferPercent(_options.WakeupPercent ?? DefaultWakeupPercent);
            _instance.SetTraceClock("mono");
            var states = new List<TracepointState>();
            foreach (TracepointStatus status in Decoders.Statuses)
            {
                bool wanted = status.Available && _options.Wants(status.Tracepoint);
                bool enabled = wanted && _instance.Enable(status.Tracepoint.System, status.Tracepoint.Name);
                states.Add(new TracepointState(status, enabled));
            }
            _tracepoints = states;
            ThreadCreations? creations = null;
            if (!_aggregator.Registry.Detached && Formats.Event(ThreadCreations.Event) is EventFormat newTask
                && _instance.Enable(ThreadCreations.Event.System, ThreadCreations.Event.Name))
                creations = new ThreadCreations(newTask);

            _wake = new SafeFd(Sys.EventFd());
            IReadOnlyList<int> cpus = _instance.Cpus();
            foreach (int cpu in cpus)
            {
                if (cpu >= _aggregator.Shards.Count)
                    throw new InvalidOperationException($"cpu{cpu} has no shard ({_aggregator.Shards.Count} shards)");
                var reader = new CpuReader(cpu, _instance.PipeRawPath(cpu), _wake, layout, Decoders,
                    _aggregator.Shards[cpu], _options.PollTimeoutMs, _options.MapRingBuffer, creations);
                _readers.Add(reader);
                if (reader.MapFailure is string failure)
                    _options.Warn?.Invoke(failure);
            }
            foreach (CpuReader r in _readers)
                r.Start();
        }
        catch
        {
            Stop();
            throw;
        }
    }

    /// <summary>Reader failures so far (a reader that failed has stopped).</summary>
    public IEnumerable<(int Cpu, Exception Error)> Failures =>
        _readers.Where(r => r.Failure is not null).Select(r => (r.Cpu, r.Failure!));

    public void Stop()
    {
        if (_instance is null)
            return;
        try
        {
            _instance.StopRecording();
        }
        catch (IOException) { }
        foreach (CpuReader r in _readers)
            r.RequestStop();
        if (_wake is not null)
            Sys.Write(_wake, BitConverter.GetBytes(1UL));
        foreach (CpuReader r in _readers)
            r.Join();
        _readers.Clear();
        _wake?.Dispose();
        _wake = null;
        _instance.Dispose();
        _instance = null;
    }

    public void Dispose() => Stop();
}
