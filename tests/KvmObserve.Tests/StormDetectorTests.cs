using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Series;
using KvmObserve.Aggregation.Storms;
using Xunit;

namespace KvmObserve.Tests;

public class StormDetectorTests
{
    private static readonly StormOptions Options = new() { FloorPerSecond = 5_000, Factor = 4 };

    /// <summary>Drives the detector at its tick with counters that grow at the given rate per vCPU.</summary>
    private sealed class Driver(StormDetector detector, string vm = "vm-a", int vcpus = 2)
    {
        private readonly double[] _counts = new double[vcpus];
        public TimeSpan Now;
        public readonly List<StormStart> Starts = new();
        public readonly List<(TimeSpan At, StormEnd End)> Ends = new();
        public readonly List<TimeSpan> StartTimes = new();

        public Driver Attach()
        {
            detector.Started = s => { Starts.Add(s); StartTimes.Add(Now); };
            detector.Ended = e => Ends.Add((Now, e));
            return this;
        }

        /// <summary>Runs for <paramref name="seconds"/> with each vCPU exiting to the VMM at its rate (per second).</summary>
        public void Run(double seconds, params double[] ratePerVcpu)
        {
            TimeSpan tick = detector.Options.Tick;
            for (TimeSpan end = Now + TimeSpan.FromSeconds(seconds); Now < end;)
            {
                Now += tick;
                var counters = new List<CounterValue>();
                for (int v = 0; v < _counts.Length; v++)
                {
                    _counts[v] += ratePerVcpu[Math.Min(v, ratePerVcpu.Length - 1)] * tick.TotalSeconds;
                    counters.Add(new CounterValue(vm, v, MetricFamily.UserspaceExits, 2, 0, (long)_counts[v]));
                }
                counters.Add(new CounterValue(vm, -1, MetricFamily.Msr, 0x10, 0, (long)(Now.TotalSeconds * 100)));
                detector.Observe(Now, counters);
            }
        }
    }

    [Fact]
    public void A_jump_to_several_times_the_baseline_starts_a_storm_within_a_second_and_ends_after_it()
    {
        var detector = new StormDetector(Options)
        {
            Describe = (f, l1, _) => f == MetricFamily.UserspaceExits ? $"userspace {l1}" : $"{f} {l1}",
        };
        var d = new Driver(detector).Attach();
        d.Run(20, 1_000); // 2,000/s for the VM: its baseline
        Assert.Empty(d.Starts);
        Assert.False(detector.Vms().Single().Active);

        TimeSpan stormAt = d.Now;
        d.Run(5, 20_000);
        StormStart start = Assert.Single(d.Starts);
        TimeSpan reaction = d.StartTimes[0] - stormAt;
        Assert.InRange(reaction, TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(1));
        Assert.Equal("vm-a", start.Vm);
        Assert.Equal([0, 1], start.Vcpus);
        Assert.InRange(start.Baseline, 1_900, 2_100);
        Assert.True(start.Rate >= 4 * start.Baseline);
        Assert.Equal("userspace 2", start.TopReasons[0].Reason);
        Assert.True(start.TopReasons[0].Share > 0.99);
        Assert.Equal(new VmStorms("vm-a", true, 1), detector.Vms().Single());

        TimeSpan calmAt = d.Now;
        d.Run(5, 1_000);
        (TimeSpan endedAt, StormEnd end) = Assert.Single(d.Ends);
        Assert.InRange(endedAt - calmAt, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2.5));
        Assert.InRange(end.PeakRate, 39_000, 41_000);
        Assert.InRange(end.Duration, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(7));
        Assert.Equal(new VmStorms("vm-a", false, 1), detector.Vms().Single());

        // The baseline did not learn the storm: the same jump again is a second storm.
        d.Run(10, 1_000);
        d.Run(3, 20_000);
        Assert.Equal(2, d.Starts.Count);
        Assert.InRange(d.Starts[1].Baseline, 1_900, 2_300);
        Assert.Equal(new VmStorms("vm-a", true, 2), detector.Vms().Single());
    }

    [Fact]
    public void One_vcpu_storming_is_named_and_makes_its_vm_storm()
    {
        var detector = new StormDetector(Options);
        var d = new Driver(detector, vcpus: 8).Attach();
        d.Run(20, 500, 500, 500, 500, 500, 500, 500, 500); // 4,000/s for the VM
        d.Run(3, 500, 500, 500, 8_000, 500, 500, 500, 500); // vCPU 3 at 16x its own baseline
        StormStart start = Assert.Single(d.Starts);
        Assert.Equal([3], start.Vcpus);
    }

    [Fact]
    public void Nothing_under_the_floor_is_a_storm_however_far_above_its_baseline()
    {
        var detector = new StormDetector(Options);
        var d = new Driver(detector).Attach();
        d.Run(20, 10);
        d.Run(5, 2_000); // 200x the baseline, but 4,000/s for the VM: under the 5,000 floor
        Assert.Empty(d.Starts);
    }

    [Fact]
    public void A_vm_that_starts_busy_has_no_baseline_and_does_not_storm_until_it_has_one()
    {
        var detector = new StormDetector(Options);
        var d = new Driver(detector).Attach();
        d.Run(4, 20_000); // within the warm-up
        Assert.Empty(d.Starts);
        d.Run(10, 20_000); // busy is its normal
        Assert.Empty(d.Starts);
    }

    [Fact]
    public void A_short_spike_under_the_hold_time_is_not_a_storm()
    {
        var detector = new StormDetector(Options with { Window = TimeSpan.FromMilliseconds(250) });
        var d = new Driver(detector).Attach();
        d.Run(20, 1_000);
        d.Run(0.25, 50_000);
        d.Run(5, 1_000);
        Assert.Empty(d.Starts);
    }

    [Fact]
    public void Where_kvm_exit_counts_exist_they_are_the_exits_and_other_events_are_not_added()
    {
        var detector = new StormDetector(Options);
        var starts = new List<StormStart>();
        detector.Started = starts.Add;
        TimeSpan now = TimeSpan.Zero;
        for (int i = 1; i <= 100; i++)
        {
            now += detector.Options.Tick;
            detector.Observe(now,
            [
                new("vm-b", 0, MetricFamily.Exits, 30, 1, i * 500L), // 2,000/s throughout
                new("vm-b", 0, MetricFamily.UserspaceExits, 2, 0, i < 60 ? i * 10L : i * 50_000L), // a storm, if counted
            ]);
        }
        Assert.Empty(starts);
    }

    [Fact]
    public void A_series_that_leaves_the_top_k_takes_nothing_back_from_the_baseline()
    {
        var detector = new StormDetector(Options);
        var starts = new List<StormStart>();
        detector.Started = starts.Add;
        TimeSpan now = TimeSpan.Zero;
        long steady = 0, churning = 0;
        for (int i = 1; i <= 100; i++)
        {
            now += detector.Options.Tick;
            steady += i <= 80 ? 500 : 10_000; // 2,000/s, then 40,000/s from 20 s on
            var counters = new List<CounterValue> { new("vm-c", -1, MetricFamily.Msr, 0x11, 0, steady) };
            // 1,000/s on an MSR whose series leaves the VM's top K every tenth tick and comes back from zero, as the
            // store does it.
            if (i % 10 == 0)
                churning = 0;
            else
            {
                churning += 250;
                counters.Add(new CounterValue("vm-c", -1, MetricFamily.Msr, 0x10, 0, churning));
            }
            detector.Observe(now, counters);
        }
        StormStart start = Assert.Single(starts);
        Assert.InRange(start.Baseline, 2_700, 3_000); // 3,000/s less the ticks the churning series was away
    }
}
