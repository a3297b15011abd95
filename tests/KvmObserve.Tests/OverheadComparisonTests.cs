using KvmObserve.Agent.Overhead;

namespace KvmObserve.Tests;

/// <summary>How `overhead` tells whether a source adds more than its reference: per-round differences, and a
/// distribution-free interval for their median.</summary>
public class OverheadComparisonTests
{
    [Fact]
    public void The_median_interval_is_the_order_statistics_that_keep_95_percent()
    {
        // n = 13: P(Bin(13, 1/2) <= 2) = 92/8192, so the 3rd smallest and 3rd largest, 97.75%
        double[] thirteen = [13, 1, 12, 2, 11, 3, 10, 4, 9, 5, 8, 6, 7];
        (double low, double high, double coverage) = Stats.MedianInterval(thirteen)!.Value;
        Assert.Equal((3, 11), (low, high));
        Assert.Equal(1 - 2 * 92 / 8192.0, coverage, 6);
        // n = 11: P(<= 1) = 12/2048; P(<= 2) = 67/2048 would leave less than 95%
        Assert.Equal((2, 10), Stats.MedianInterval([.. Enumerable.Range(1, 11).Select(i => (double)i)]) is var (l, h, _) ? (l, h) : default);
        // n = 6: the smallest and the largest, 1 - 2/64; n = 5 cannot reach 95%
        Assert.Equal(1 - 2 / 64.0, Stats.MedianInterval([1, 2, 3, 4, 5, 6])!.Value.Coverage, 6);
        Assert.Null(Stats.MedianInterval([1, 2, 3, 4, 5]));
    }

    private static ArmResult Arm(string key, double[] added, double[] baselines)
    {
        var arm = new ArmResult(key, key);
        for (int r = 0; r < added.Length; r++)
        {
            arm.BaselineNs.Add(baselines[r]);
            arm.PerExitNs.Add(baselines[r] + added[r]);
        }
        return arm;
    }

    [Fact]
    public void A_source_is_judged_on_its_per_round_differences_and_their_interval()
    {
        // Baselines drift by thousands of ns between rounds; within a round both arms see the same machine.
        double[] drift = [8300, 9100, 8400, 10200, 8500, 8350, 9900, 8700, 8450, 9300, 8600, 8800, 8380];
        double[] reference = [900, 1400, 950, 2100, 1000, 920, 1900, 1100, 980, 1500, 1050, 1200, 940];
        var refArm = Arm("perf-stat", reference, drift);

        Comparison above = OverheadRun.Compare(Arm("perf-count", [.. reference.Select((v, i) => v + 60 + 10 * (i % 3))], drift), refArm);
        Assert.Equal("adds more than its reference", above.Verdict);
        Assert.Equal(70, above.MedianDifferenceNs);
        Assert.Equal(13, above.RoundsAbove);

        Comparison below = OverheadRun.Compare(Arm("perf-count", [.. reference.Select(v => v - 50)], drift), refArm);
        Assert.Equal("adds no more than its reference", below.Verdict);
        Assert.Equal(0, below.RoundsAbove);

        double[] noise = [-300, 250, -120, 400, -80, 60, -500, 90, 30, -40, 150, -200, 10];
        Comparison mixed = OverheadRun.Compare(Arm("perf-count", [.. reference.Zip(noise, (v, n) => v + n)], drift), refArm);
        Assert.Equal("not told apart from its reference in this run", mixed.Verdict);
        Assert.Equal(10, mixed.MedianDifferenceNs);
        Assert.Equal(7, mixed.RoundsAbove);
        Assert.True(mixed.Interval is (< 0, > 0, _));
    }
}
