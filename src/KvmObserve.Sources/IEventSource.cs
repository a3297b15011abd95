using KvmObserve.Decoding.Events;

namespace KvmObserve.Sources;

/// <summary>A way of getting kvm events out of the kernel. Owns every kernel resource it creates.</summary>
public interface IEventSource : IDisposable
{
    /// <summary>The source label of the agent's own metrics (tracefs, perf, ...).</summary>
    string Name { get; }

    /// <summary>Each known tracepoint: available on this kernel, and whether this source enabled it.</summary>
    IReadOnlyList<TracepointState> Tracepoints { get; }

    void Start();

    /// <summary>Stops reading, delivers what the kernel still buffers, and releases every kernel resource.</summary>
    void Stop();
}

public sealed record TracepointState(TracepointStatus Status, bool Enabled);
