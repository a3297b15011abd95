using KvmObserve.Aggregation;
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
}

/// <summary>One row of kvmobserve_tracepoint_info.</summary>
public sealed record TracepointRow(string Event, bool Available, bool Enabled);
