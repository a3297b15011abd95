namespace KvmObserve.Aggregation.Storms;

/// <summary>When the storm detector calls a VM's (or one vCPU's) exit rate a storm. README documents each.</summary>
public sealed record StormOptions
{
    /// <summary>Exits per second below which nothing is a storm, however far above its baseline (an idle VM that
    /// wakes up is not a storm).</summary>
    public double FloorPerSecond { get; init; } = 20_000;

    /// <summary>How many times its own baseline the rate must be.</summary>
    public double Factor { get; init; } = 4;

    /// <summary>The rate is measured over this much recent time.</summary>
    public TimeSpan Window { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>The rate must stay above the threshold this long before a storm starts.</summary>
    public TimeSpan Hold { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>The rate must stay below the threshold this long before a storm ends.</summary>
    public TimeSpan EndHold { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Time constant of the moving baseline (an exponentially weighted mean of the rate, frozen while the
    /// rate is above the threshold, so a storm does not become its own baseline).</summary>
    public TimeSpan Baseline { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>History a VM needs before it can storm: a VM that starts busy has no baseline to compare with.</summary>
    public TimeSpan Warmup { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How often the detector looks.</summary>
    public TimeSpan Tick { get; init; } = TimeSpan.FromMilliseconds(250);
}
