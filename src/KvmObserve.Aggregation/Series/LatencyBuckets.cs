namespace KvmObserve.Aggregation.Series;

/// <summary>
/// Exponential histogram buckets: upper bounds 250 ns × 2^i for i = 0..22 (250 ns to about 1.05 s), then +Inf.
/// Bucket i holds observations in (250·2^(i-1), 250·2^i] ns, so a boundary value lands in the lower bucket, as
/// Prometheus's "le" says.
/// </summary>
public static class LatencyBuckets
{
    public const ulong FirstBoundNs = 250;

    /// <summary>Finite upper bounds.</summary>
    public const int Bounds = 23;

    /// <summary>Buckets including +Inf.</summary>
    public const int Count = Bounds + 1;

    /// <summary>The Label2 bucket byte that holds the sum (ns) of a histogram's observations.</summary>
    public const int SumSlot = 0xff;

    public static int Index(ulong ns)
    {
        if (ns <= FirstBoundNs)
            return 0;
        ulong q = (ns - 1) / FirstBoundNs; // ≥ 1
        int i = System.Numerics.BitOperations.Log2(q) + 1;
        return i < Bounds ? i : Bounds;
    }

    public static ulong UpperBoundNs(int index) => FirstBoundNs << index;

    public static double UpperBoundSeconds(int index) => UpperBoundNs(index) / 1e9;

    public static ulong Label2(ulong extra, int bucket) => extra << 8 | (uint)bucket;

    public static int BucketOf(ulong label2) => (int)(label2 & 0xff);

    public static ulong ExtraOf(ulong label2) => label2 >> 8;
}
