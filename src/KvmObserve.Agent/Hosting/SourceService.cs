using KvmObserve.Aggregation;
using KvmObserve.Exposition;
using KvmObserve.Sources;
using KvmObserve.Sources.Tracefs;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// Runs the event source for the lifetime of the host, and a housekeeping thread that names new threads as soon as their
/// first series appears (while their VMs still run) and rescans procfs for VMs.
/// </summary>
internal sealed class SourceService(AgentOptions options, Aggregator aggregator, ILogger<SourceService> logger) : IHostedService
{
    private TracefsSource? _source;
    private Thread? _housekeeping;
    private readonly CancellationTokenSource _stop = new();

    public ExpositionContext? Context { get; private set; }

    public IEventSource? Source => _source;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        string root = TracefsLocator.Find(mountIfNeeded: true, out string? problem)
            ?? throw new InvalidOperationException(problem);
        var sourceOptions = new TracefsSourceOptions
        {
            BufferSizeKb = options.BufferSizeKb,
            PollTimeoutMs = options.PollTimeoutMs,
        };
        _source = new TracefsSource(sourceOptions, aggregator, root);
        _source.Start();
        foreach (string stale in _source.RemovedStale)
            Log.StaleInstanceRemoved(logger, stale);
        foreach (TracepointState t in _source.Tracepoints)
        {
            if (!t.Enabled)
                Log.TracepointUnavailable(logger, t.Status.Tracepoint.FullName, t.Status.Problem ?? "disabled");
        }
        if (!_source.Decoders.ExitReasons.FromFormat)
            Log.BuiltInExitReasons(logger);
        Log.SourceStarted(logger, _source.Name, _source.Tracepoints.Count(t => t.Enabled), _source.Tracepoints.Count,
            _source.Cpus.Count, root);

        Context = new ExpositionContext
        {
            Aggregator = aggregator,
            SourceName = _source.Name,
            Tracepoints = _source.Tracepoints
                .Select(t => new TracepointRow(t.Status.Tracepoint.FullName, t.Status.Available, t.Enabled)).ToList(),
            ExitReasons = _source.Decoders.ExitReasons,
            UserspaceExitReasons = _source.Decoders.UserspaceExitReasons,
        };
        aggregator.Registry.Scan();
        _housekeeping = new Thread(Housekeeping) { IsBackground = true, Name = "kvmobserve housekeeping" };
        _housekeeping.Start();
        return Task.CompletedTask;
    }

    private void Housekeeping()
    {
        var reported = new HashSet<int>();
        DateTime nextScan = DateTime.UtcNow;
        WaitHandle[] wake = [_stop.Token.WaitHandle, aggregator.NewSeries];
        while (WaitHandle.WaitAny(wake, 250) != 0)
        {
            aggregator.ResolveNewThreads();
            if (DateTime.UtcNow >= nextScan)
            {
                aggregator.Registry.Scan();
                nextScan = DateTime.UtcNow.AddMilliseconds(options.DiscoveryIntervalMs);
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
        _stop.Cancel();
        _housekeeping?.Join();
        if (_source is not null)
        {
            _source.Stop();
            Log.SourceStopped(logger, _source.Name);
        }
        return Task.CompletedTask;
    }
}
