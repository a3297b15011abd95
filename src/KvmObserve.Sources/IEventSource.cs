using KvmObserve.Decoding.Events;

namespace KvmObserve.Sources;

/// <summary>A way of getting kvm events out of the kernel. Owns every kernel resource it creates.</summary>
public interface IEventSource : IDisposable
{
    /// <summary>The source label of the agent's own metrics (tracefs, perf, ...).</summary>
    string Name { get; }

    /// <summary>Each known tracepoint: available on this kernel, and whether this source enabled it.</summary>
    IReadOnlyList<TracepointState> Tracepoints { get; }

    /// <summary>The decoders built from this kernel's format files (and its exit reason tables).</summary>
    KvmEventDecoders Decoders { get; }

    /// <summary>Readers that failed (each has stopped); empty while all run.</summary>
    IEnumerable<(int Cpu, Exception Error)> Failures => [];

    /// <summary>Events the source knows happened but cannot attribute to a VM (a counting source's threads not yet
    /// attached); 0 for record sources, which attribute every record.</summary>
    long UnattributedOf(KvmEventKind kind) => 0;

    /// <summary>Times the source's threads woke to read the kernel (a ring reader's poll returns, the bpf source's
    /// look for new series); 0 for a source that reads only when scraped.</summary>
    long Wakeups => 0;

    /// <summary>A counting source's attach windows (the time its system-wide counters ran to catch threads not yet
    /// attached): how many so far, and their seconds in all; null for sources without them.</summary>
    (long Windows, double Seconds)? AttachWindows => null;

    /// <summary>Whether the source sees records (what a flight recording keeps); false for sources that count in
    /// the kernel.</summary>
    bool HasRecords => true;

    /// <summary>Threads of the source, once started, that must answer the kernel at once and so keep the nice the
    /// agent started with when the agent lowers its own (`--nice`); empty for most.</summary>
    IReadOnlyList<int> UrgentThreads => [];

    void Start();

    /// <summary>Stops reading, delivers what the kernel still buffers, and releases every kernel resource.</summary>
    void Stop();
}

public sealed record TracepointState(TracepointStatus Status, bool Enabled);
