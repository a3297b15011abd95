using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Native;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Sources.Perf;

/// <summary>
/// Streams kvm records through perf: per CPU, a PERF_TYPE_TRACEPOINT sampling event (period 1, PERF_SAMPLE_RAW) for
/// each tracepoint, all into one mmap ring per CPU. A sample's raw data is the same trace record tracefs gives, so the
/// same decoders read it. Lost samples are counted per CPU. Every fd is a SafeFd opened close-on-exec: nothing
/// outlives the process, even after SIGKILL.
/// </summary>
public sealed class PerfSamplingSource : IEventSource
{
    public const int DefaultRingKb = 4096;
    /// <summary>Waking the reader costs the guests more than anything else here: at every sample (0) a PIO exit took
    /// 34x longer; at 25% the wakeups are amortised over thousands of samples.</summary>
    public const int DefaultWakeupPercent = 25;

    private readonly SourceOptions _options;
    private readonly Aggregator _aggregator;
    private readonly IReadOnlyList<int> _cpus;
    private readonly List<PerfCpuRing> _rings = new();
    private SafeFd? _wake;
    private IReadOnlyList<TracepointState> _tracepoints = [];

    public PerfSamplingSource(SourceOptions options, Aggregator aggregator, string tracefsRoot, IReadOnlyList<int> cpus)
    {
        _options = options;
        _aggregator = aggregator;
        _cpus = cpus;
        Formats = new TracefsFormats(tracefsRoot);
        Decoders = Formats.Decoders();
    }

    public string Name => "perf";

    public TracefsFormats Formats { get; }

    public KvmEventDecoders Decoders { get; }

    public IReadOnlyList<TracepointState> Tracepoints => _tracepoints;

    public IReadOnlyList<int> Cpus => _rings.Select(r => r.Cpu).ToList();

    public long Wakeups => _rings.Sum(r => Interlocked.Read(ref r.Wakeups));

    public IEnumerable<(int Cpu, Exception Error)> Failures =>
        _rings.Where(r => r.Failure is not null).Select(r => (r.Cpu, r.Failure!));

    /// <summary>Data pages per ring: the buffer size rounded up to a power of two pages.</summary>
    public static int DataPages(int bufferKb)
    {
        long bytes = (long)(bufferKb > 0 ? bufferKb : DefaultRingKb) * 1024;
        long pages = Math.Max(1, (bytes + Environment.SystemPageSize - 1) / Environment.SystemPageSize);
        return (int)System.Numerics.BitOperations.RoundUpToPowerOf2((ulong)pages);
    }

    public void Start()
    {
        _tracepoints = _options.Select(Decoders.Statuses);
        List<int> ids = _tracepoints.Where(t => t.Enabled).Select(t => t.Status.Id).ToList();
        if (ids.Count == 0)
            throw new InvalidOperationException("perf: none of the selected tracepoints exists in this kernel");

        try
        {
            _wake = new SafeFd(Sys.EventFd());
            int pages = DataPages(_options.BufferKb);
            int wakeup = _options.WakeupPercent ?? DefaultWakeupPercent;
            foreach (int cpu in _cpus)
            {
                if (cpu >= _aggregator.Shards.Count)
                    throw new InvalidOperationException($"cpu{cpu} has no shard ({_aggregator.Shards.Count} shards)");
                _rings.Add(new PerfCpuRing(cpu, ids, pages, wakeup, _wake, Decoders, _aggregator.Shards[cpu],
                    _options.PollTimeoutMs));
            }
            foreach (PerfCpuRing r in _rings)
                r.Start();
        }
        catch
        {
            Stop();
            throw;
        }
    }

    public void Stop()
    {
        foreach (PerfCpuRing r in _rings)
            r.RequestStop();
        if (_wake is not null && !_wake.IsClosed)
            Sys.Write(_wake, BitConverter.GetBytes(1UL));
        // Closing the last perf event of a tracepoint makes the kernel wait for an RCU grace period under event_mutex
        // (perf_trace_destroy): ~35 ms a tracepoint here, ~0.8 s for all 24. Closing from many threads gained nothing.
        foreach (PerfCpuRing r in _rings)
            r.Join();
        _rings.Clear();
        _wake?.Dispose();
        _wake = null;
    }

    public void Dispose() => Stop();
}
