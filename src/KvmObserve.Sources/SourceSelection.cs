namespace KvmObserve.Sources;

/// <summary>What this host offers the agent, probed once at start (and by doctor).</summary>
public sealed record HostCapabilities(string? TracefsRoot, string? TracefsProblem, string? PerfProblem);

/// <summary>
/// Picks the event source for --source. auto prefers counting in the kernel (nothing copied) when every enabled metric
/// is a plain count, and streams records otherwise through tracefs: measured here on a PIO exit loop, a perf
/// sampling ring added about 1.7x what a tracefs instance adds (perf builds and copies each sample on top of the
/// trace record).
/// </summary>
public static class SourceSelection
{
    public static readonly string[] Sources = ["auto", "tracefs", "perf", "perf-count", "replay"];

    /// <summary>The source to run and why; a requested source this host cannot run is an error naming the reason.</summary>
    public static (string Source, string Reason) Choose(string requested, IReadOnlyList<string> metricGroups, HostCapabilities host)
    {
        if (host.TracefsRoot is null)
            throw new InvalidOperationException($"no source can run: every one reads the tracepoints' formats from tracefs, and {host.TracefsProblem}");
        IReadOnlyList<string> recordGroups = MetricSelection.RecordGroups(metricGroups);
        switch (requested)
        {
            case "tracefs":
                return ("tracefs", "requested");
            case "perf":
            case "perf-count":
                if (host.PerfProblem is not null)
                    throw new InvalidOperationException($"--source {requested}: perf_event_open does not work here: {host.PerfProblem}");
                return (requested, "requested");
        }
        if (recordGroups.Count > 0)
            return ("tracefs", $"{string.Join(",", recordGroups)} need records (their keys are learnt from them); tracefs streams records at the least cost");
        if (host.PerfProblem is not null)
            return ("tracefs", $"every enabled metric is a plain count, but perf_event_open does not work here ({host.PerfProblem})");
        return ("perf-count", "every enabled metric is a plain count: counted in the kernel, no records copied");
    }
}
