using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Storms;
using KvmObserve.Exposition;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// Runs the exit-storm detector at its tick on a thread of its own: one log line when a VM's storm starts (with its
/// top reasons) and one when it ends; with --flight-recorder, a recording of each storm's first seconds.
/// </summary>
internal sealed class StormService(StormDetector detector, Aggregator aggregator, SourceService source,
    ILogger<StormService> logger) : IHostedService
{
    private readonly CancellationTokenSource _stop = new();
    private Thread? _thread;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        detector.Started = start =>
        {
            string vcpus = start.Vcpus.Count == 0 ? "" : $" (vCPUs {string.Join(",", start.Vcpus)} each over the threshold)";
            string reasons = string.Join(", ", start.TopReasons.Select(r => $"{r.Reason} {r.Share:P0}"));
            Log.StormStarted(logger, start.Vm, start.Rate, start.Baseline, vcpus, reasons.Length == 0 ? "-" : reasons);
            source.Recorder?.Trigger(start.Vm, ThreadStates.MonotonicNow());
        };
        detector.Ended = end => Log.StormEnded(logger, end.Vm, end.Duration.TotalSeconds, end.PeakRate, end.Exits);
        _thread = new Thread(Run) { IsBackground = true, Name = "kvmobserve storms" };
        _thread.Start();
        return Task.CompletedTask;
    }

    private void Run()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        bool named = false;
        while (!_stop.Token.WaitHandle.WaitOne(detector.Options.Tick))
        {
            if (source.Context is not ExpositionContext context)
                continue;
            if (!named)
            {
                detector.Describe = (f, l1, l2) => ReasonNames.Describe(context, f, l1, l2); // the source's reason tables
                named = true;
            }
            try
            {
                detector.Tick(aggregator, clock.Elapsed);
                if (source.Recorder?.Poll(ThreadStates.MonotonicNow()) is (string vm, string path))
                    Log.RecordingWritten(logger, vm, path);
            }
            catch (IOException e)
            {
                Log.SourceWarning(logger, $"flight recording not written: {e.Message}");
            }
        }
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        _stop.Cancel();
        _thread?.Join();
        return Task.CompletedTask;
    }
}
