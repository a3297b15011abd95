using System.Diagnostics;
using KvmObserve.Aggregation.Discovery;

namespace KvmObserve.Exposition;

public static partial class MetricsRenderer
{
    /// <summary>How one collection of a scrape went, as node_exporter's scrape_collector_success and _duration_seconds.</summary>
    private readonly record struct Collection(bool Succeeded, double Seconds);

    /// <summary>Run and steal time; a procfs that cannot be read this once leaves the families empty and the
    /// collection failed, where it would have failed the whole scrape.</summary>
    private static Collection CollectSchedstat(MetricWriter w, SchedstatCollector? schedstat)
    {
        if (schedstat is null)
            return new Collection(true, 0);
        long started = Stopwatch.GetTimestamp();
        IReadOnlyList<SchedstatCollector.Totals> totals;
        bool succeeded = true;
        try
        {
            totals = schedstat.Collect();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            totals = [];
            succeeded = false;
        }
        WriteSchedstat(w, totals);
        return new Collection(succeeded, Stopwatch.GetElapsedTime(started).TotalSeconds);
    }

    private static void WriteCollectors(MetricWriter w, ExpositionContext context, Collection source, Collection schedstat)
    {
        w.Family("kvmobserve_collector_success", "gauge",
            "Whether this scrape's collection succeeded: the source's (every reader running, its counters read) and schedstat's.");
        w.Begin("kvmobserve_collector_success").Label("collector", context.SourceName).Value(source.Succeeded ? 1L : 0L);
        if (context.Schedstat is not null)
            w.Begin("kvmobserve_collector_success").Label("collector", "schedstat").Value(schedstat.Succeeded ? 1L : 0L);
        w.Family("kvmobserve_collector_duration_seconds", "gauge",
            "How long this scrape's collection took: the source's (its counters read, every CPU's counts folded) and schedstat's.");
        w.Begin("kvmobserve_collector_duration_seconds").Label("collector", context.SourceName).Value(source.Seconds);
        if (context.Schedstat is not null)
            w.Begin("kvmobserve_collector_duration_seconds").Label("collector", "schedstat").Value(schedstat.Seconds);
    }
}
