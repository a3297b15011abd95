using KvmObserve.Aggregation.Series;

namespace KvmObserve.Aggregation;

/// <summary>
/// A thread's halts that ended while the poll window they started with was unknown, kept as exactly what classifying
/// them later needs: per "waited" flag, a count per latency bucket and the sum of their ns. Its size is fixed, however
/// many halts it holds, so none is ever turned away for want of room.
/// </summary>
public sealed class HeldHalts
{
    private readonly long[] _buckets = new long[2 * LatencyBuckets.Count];
    private readonly long[] _sumNs = new long[2];
    private readonly long[] _count = new long[2];

    /// <summary>Trace time of the first halt held since the last <see cref="Clear"/>.</summary>
    public ulong Since { get; private set; }

    public long Total => _count[0] + _count[1];

    public void Add(ulong ns, bool waited, ulong timestamp)
    {
        if (Total == 0)
            Since = timestamp;
        int w = waited ? 1 : 0;
        _buckets[w * LatencyBuckets.Count + LatencyBuckets.Index(ns)]++;
        _sumNs[w] += (long)ns;
        _count[w]++;
    }

    /// <summary>Adds what a source that counts in the kernel counted: <paramref name="value"/> more wakeups (family
    /// HaltWakeups) or more of one latency bucket or of the ns sum (HaltDuration, bucket in <paramref name="label2"/>).</summary>
    public void AddCounted(bool waited, MetricFamily family, ulong label2, long value, ulong timestamp)
    {
        if (Since == 0)
            Since = timestamp;
        int w = waited ? 1 : 0;
        if (family == MetricFamily.HaltWakeups)
            _count[w] += value;
        else if (LatencyBuckets.BucketOf(label2) == LatencyBuckets.SumSlot)
            _sumNs[w] += value;
        else
            _buckets[w * LatencyBuckets.Count + LatencyBuckets.BucketOf(label2)] += value;
    }

    public long Count(bool waited) => _count[waited ? 1 : 0];

    public long SumNs(bool waited) => _sumNs[waited ? 1 : 0];

    /// <summary>What counting these halts adds, for a window of <paramref name="pollNs"/>: per outcome, the wakeups
    /// (label2 0 of kvm_halt_wakeups), each non-empty latency bucket, and the ns sum (of kvm_halt_seconds).</summary>
    public IEnumerable<(MetricFamily Family, uint Outcome, ulong Label2, long Value)> Counts(long pollNs)
    {
        foreach (bool waited in new[] { false, true })
        {
            long n = Count(waited);
            if (n == 0)
                continue;
            uint outcome = (uint)Outcome(waited, pollNs);
            yield return (MetricFamily.HaltWakeups, outcome, 0, n);
            for (int b = 0; b < LatencyBuckets.Count; b++)
            {
                long inBucket = _buckets[(waited ? LatencyBuckets.Count : 0) + b];
                if (inBucket != 0)
                    yield return (MetricFamily.HaltDuration, outcome, LatencyBuckets.Label2(0, b), inBucket);
            }
            yield return (MetricFamily.HaltDuration, outcome, LatencyBuckets.Label2(0, LatencyBuckets.SumSlot), SumNs(waited));
        }
    }

    /// <summary>A copy to classify outside the owner's lock; this one is emptied.</summary>
    public HeldHalts Take()
    {
        var copy = new HeldHalts { Since = Since };
        _buckets.CopyTo(copy._buckets, 0);
        _sumNs.CopyTo(copy._sumNs, 0);
        _count.CopyTo(copy._count, 0);
        Clear();
        return copy;
    }

    public void Clear()
    {
        Array.Clear(_buckets);
        Array.Clear(_sumNs);
        Array.Clear(_count);
        Since = 0;
    }

    /// <summary>The outcome of a halt that started with window <paramref name="pollNs"/> (-1: unknown).</summary>
    public static HaltOutcome Outcome(bool waited, long pollNs) => (waited, pollNs) switch
    {
        (_, < 0) => HaltOutcome.Unknown,
        (false, 0) => HaltOutcome.Immediate,
        (false, _) => HaltOutcome.PollSuccess,
        (true, 0) => HaltOutcome.Waited,
        (true, _) => HaltOutcome.PollFail,
    };
}
