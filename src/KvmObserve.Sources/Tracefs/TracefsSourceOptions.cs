namespace KvmObserve.Sources.Tracefs;

public sealed class TracefsSourceOptions
{
    /// <summary>Per-CPU ring buffer size of the private instance; 0 keeps the kernel's default.</summary>
    public int BufferSizeKb { get; set; }

    /// <summary>buffer_percent of the instance. 0 (default) wakes a reader as soon as records arrive, so threads are
    /// named while their VM still runs; under load readers drain continuously and it makes no difference.</summary>
    public int BufferPercent { get; set; }

    /// <summary>The longest a reader sleeps before it reads anyway (the kernel wakes it earlier at buffer_percent).</summary>
    public int PollTimeoutMs { get; set; } = 100;

    /// <summary>Mount tracefs at /sys/kernel/tracing when it is not mounted.</summary>
    public bool MountIfNeeded { get; set; } = true;

    /// <summary>Tracepoints to leave off (full names, "kvm:kvm_emulate_insn").</summary>
    public IReadOnlyCollection<string> Disabled { get; set; } = [];
}
