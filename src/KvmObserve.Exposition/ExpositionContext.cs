using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Exposition;

/// <summary>What the renderer reads: the aggregates and the few facts about the source that label them.</summary>
public sealed class ExpositionContext
{
    public required Aggregator Aggregator { get; init; }
    public required string SourceName { get; init; }
    public required IReadOnlyList<TracepointRow> Tracepoints { get; init; }
    public required ExitReasonTables ExitReasons { get; init; }
    public required IReadOnlyDictionary<long, string> UserspaceExitReasons { get; init; }

    /// <summary>What --source asked for (auto, tracefs, ...) and why <see cref="SourceName"/> was picked.</summary>
    public string SourceRequested { get; init; } = "";
    public string SourceReason { get; init; } = "";

    /// <summary>Run and steal time of the VMs' threads (null: not collected).</summary>
    public KvmObserve.Aggregation.Discovery.SchedstatCollector? Schedstat { get; init; }

    /// <summary>The exit-storm detector (null: none runs).</summary>
    public KvmObserve.Aggregation.Storms.StormDetector? Storms { get; init; }

    /// <summary>Events the source counted but could not attribute to a VM, per kind.</summary>
    public Func<KvmEventKind, long> Unattributed { get; init; } = static _ => 0;

    /// <summary>The source's readers that stopped on an error (a CPU whose ring could not be read).</summary>
    public Func<int> FailedReaders { get; init; } = static () => 0;

    /// <summary>Times the source woke to read the kernel.</summary>
    public Func<long> Wakeups { get; init; } = static () => 0;

    /// <summary>A counting source's attach windows so far and their time in seconds (null: the source has none).</summary>
    public Func<(long Windows, double Seconds)?>? AttachWindows { get; init; }

    /// <summary>The bpf source's own state and cost (null: another source runs).</summary>
    public Func<BpfSelf>? Bpf { get; init; }
}

/// <summary>What the bpf source tells of itself: its programs' cost as the kernel accounts it (only while run-time
/// accounting is on), and increments its bounded maps had no room for (the counts map's by MetricFamily).</summary>
public sealed record BpfSelf(bool CostAccounted, IReadOnlyList<(string Program, ulong RunTimeNs, ulong Runs)> Programs,
    IReadOnlyList<long> MapFull, long StateFull);

/// <summary>One row of kvmobserve_tracepoint_info.</summary>
public sealed record TracepointRow(string Event, bool Available, bool Enabled);
