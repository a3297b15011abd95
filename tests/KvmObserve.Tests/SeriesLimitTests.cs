using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Tests;

/// <summary>--series-limit is what a user gets per family, however the series fall on the readers: one reader (CPU)
/// seeing every VM's exits is the hardest case, since each exit also fills latency buckets in its table.</summary>
public sealed class SeriesLimitTests
{
    private static readonly uint[] Reasons = [1, 12, 30, 31, 32, 48, 49, 52];

    /// <summary><paramref name="vms"/> VMs of 2 vCPUs, each vCPU exiting <paramref name="each"/> times for each of 8
    /// reasons (every exit followed by its entry), all read by one CPU's reader.</summary>
    private static Aggregator Drive(int vms, int each, int seriesLimit)
    {
        Dictionary<string, EventFormat> formats = EventMix.Formats(name => Fixture.Format(name));
        var decoders = new KvmEventDecoders(tp => formats.GetValueOrDefault(tp.FullName));
        VmRegistry registry = VmRegistry.WithoutProcfs();
        var aggregator = new Aggregator(1, registry, new AggregatorOptions { FamilyLimit = seriesLimit, TopK = 16 });
        Shard shard = aggregator.Shards[0];
        var sink = new AggregatingSink(shard);
        ulong ts = 1_000_000;
        for (int vm = 0; vm < vms; vm++)
        {
            for (int vcpu = 0; vcpu < 2; vcpu++)
            {
                int tid = 10_000 + vm * 2 + vcpu;
                registry.Seed(tid, 10_000 + vm, $"vm-{vm}", "qemu-system-x86", $"uuid-{vm}", vcpu);
                byte[] entry = PayloadEncoder.Encode(formats["kvm:kvm_entry"], tid, ("vcpu_id", (ulong)vcpu));
                foreach (uint reason in Reasons)
                {
                    byte[] exit = PayloadEncoder.Encode(formats["kvm:kvm_exit"], tid, ("exit_reason", reason), ("isa", 1), ("vcpu_id", (ulong)vcpu));
                    for (int i = 0; i < each; i++)
                    {
                        lock (shard.Gate)
                        {
                            decoders.Decode(ts += 1_000, 0, exit, ref sink);
                            decoders.Decode(ts += 2_000, 0, entry, ref sink);
                        }
                    }
                }
            }
            if (vm % 50 == 0)
                aggregator.Fold(); // scrapes meanwhile: growing must not race a fold
        }
        shard.States.CaughtUp(0, ts);
        return aggregator;
    }

    [Fact]
    public void Twenty_thousand_exit_series_under_a_limit_of_20000_all_get_their_own_series()
    {
        // Before: the reader's table was a fixed 16,384 entries shared by every family, whatever --series-limit said.
        Aggregator aggregator = Drive(vms: 1_250, each: 3, seriesLimit: 20_000);
        IReadOnlyList<MergedSeries> series = aggregator.Snapshot();
        List<MergedSeries> exits = series.Where(s => s.Family == MetricFamily.Exits).ToList();
        Assert.Equal(20_000, exits.Count);
        Assert.All(exits, s => Assert.Equal(3, s.Value));
        Assert.Equal(0, aggregator.Overflow(MetricFamily.Exits));
        Assert.Equal(0, aggregator.Overflow(MetricFamily.ExitLatency));
        Assert.True(aggregator.Shards[0].Series.Growths > 0, "the reader's table never grew");
    }

    [Fact]
    public void Past_the_limit_a_family_keeps_exactly_the_limit_and_counts_the_rest_in_its_overflow()
    {
        Aggregator aggregator = Drive(vms: 625, each: 3, seriesLimit: 4_000);
        IReadOnlyList<MergedSeries> series = aggregator.Snapshot();
        List<MergedSeries> exits = series.Where(s => s.Family == MetricFamily.Exits).ToList();
        Assert.Equal(30_000, exits.Sum(s => s.Value)); // every exit, in a series of its own or the overflow's
        Assert.Equal(4_000, aggregator.SeriesOf(MetricFamily.Exits));
        Assert.True(aggregator.Overflow(MetricFamily.Exits) > 0);
    }
}
