namespace KvmObserve.Sources;

/// <summary>What this host offers the agent, probed once at start (and by doctor).</summary>
/// <param name="BpfProblem">Why the bpf source cannot run here (libbpf, the built object, the kernel's verdict on
/// loading it), or null when it can.</param>
public sealed record HostCapabilities(string? TracefsRoot, string? TracefsProblem, string? PerfProblem, string? BpfProblem);

/// <summary>
/// Picks the event source for --source. auto prefers the BPF programs, which count and key every event in the kernel
/// (nothing per event copied to user space); without them, counting with perf (nothing copied) when every enabled
/// metric is a plain count, and streaming records otherwise through tracefs: measured here on a PIO exit loop, a perf
/// sampling ring added about 1.7x what a tracefs instance adds (perf builds and copies each sample on top of the
/// trace record).
/// </summary>
public static class SourceSelection
{
    public static readonly string[] Sources = ["auto", "bpf", "tracefs", "perf", "perf-count", "replay"];

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
            case "bpf":
                if (host.BpfProblem is not null)
                    throw new InvalidOperationException($"--source bpf: {host.BpfProblem}");
                return ("bpf", "requested");
        }
        if (host.BpfProblem is null)
            return ("bpf", "BPF programs count and key every event in the kernel: nothing per event is copied to user space");
        string noBpf = $"BPF cannot run here ({host.BpfProblem})";
        if (recordGroups.Count > 0)
            return ("tracefs", $"{noBpf}; {string.Join(",", recordGroups)} need records (their keys are learnt from them); tracefs streams records at the least cost");
        if (host.PerfProblem is not null)
            return ("tracefs", $"{noBpf}; every enabled metric is a plain count, but perf_event_open does not work here ({host.PerfProblem})");
        return ("perf-count", $"{noBpf}; every enabled metric is a plain count: counted in the kernel, no records copied");
    }
}
