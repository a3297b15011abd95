using KvmObserve.Decoding.Events;

namespace KvmObserve.Sources;

/// <summary>Settings every source reads; each applies what fits it (a counting source has no ring).</summary>
public sealed class SourceOptions
{
    /// <summary>Per-CPU ring size in KiB; 0: the source's default (4 MiB for both tracefs and perf).</summary>
    public int BufferKb { get; set; }

    /// <summary>How full a ring gets before its reader is woken (tracefs buffer_percent, perf wakeup watermark);
    /// null: the source's default (25 for both). 0 wakes the reader at every record: measured here, that
    /// made a PIO exit 2.6x (tracefs) to 34x (perf) slower; the poll timeout drains the rings anyway.</summary>
    public int? WakeupPercent { get; set; }

    /// <summary>The longest a reader sleeps before it reads anyway.</summary>
    public int PollTimeoutMs { get; set; } = 100;

    /// <summary>Where a source says what it could not do and works around (one log line each): a tracepoint it could
    /// not attach, a thread it could not count, a ring buffer it reads through copies.</summary>
    public Action<string>? Warn { get; set; }

    /// <summary>tracefs source: read the ring buffers through their memory map (Linux 6.10+), not read() copies.</summary>
    public bool MapRingBuffer { get; set; }

    /// <summary>How often a counting source rescans procfs for new VMs and threads when nothing else prompts it.</summary>
    public int DiscoveryIntervalMs { get; set; } = 2_000;

    /// <summary>Mount tracefs at /sys/kernel/tracing when it is not mounted (format files live there).</summary>
    public bool MountIfNeeded { get; set; } = true;

    /// <summary>Tracepoints to read ("kvm_pio" or "kvm:kvm_pio"); null: every one in the catalogue.</summary>
    public IReadOnlyCollection<string>? Events { get; set; }

    public bool Wants(Tracepoint tracepoint) =>
        Events is null || Events.Contains(tracepoint.Name) || Events.Contains(tracepoint.FullName);

    /// <summary>Each known tracepoint, enabled when this kernel has it and it is wanted (for sources whose enabling
    /// cannot fail separately; tracefs asks its instance).</summary>
    public IReadOnlyList<TracepointState> Select(IEnumerable<TracepointStatus> statuses) =>
        statuses.Select(s => new TracepointState(s, s.Available && Wants(s.Tracepoint))).ToList();
}
