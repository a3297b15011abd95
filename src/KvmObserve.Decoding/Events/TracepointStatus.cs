namespace KvmObserve.Decoding.Events;

/// <summary>Whether a tracepoint can be decoded on this kernel, and if not, why.</summary>
public sealed record TracepointStatus(Tracepoint Tracepoint, bool Available, int Id, string? Problem);
