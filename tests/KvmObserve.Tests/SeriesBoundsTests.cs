using System.Buffers;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Tests;

/// <summary>No label grows without bound: the hot-path tables, the per-VM top K, the per-family limit, the grace
/// period after a VM exits. And nothing is lost on the way: what does not get its own series is counted elsewhere.</summary>
public sealed class SeriesBoundsTests : IDisposable
{
    private readonly FakeProc _proc = new();

    public void Dispose() => _proc.Dispose();

    private sealed class Folded : IFoldVisitor
    {
        public readonly Dictionary<SeriesKey, long> Values = new();
        public bool Fold(in SeriesKey key, long delta)
        {
            Values[key] = Values.GetValueOrDefault(key) + delta;
            return true;
        }
    }

    private struct Forward(Folded into) : IFoldVisitor
    {
        public bool Fold(in SeriesKey key, long delta) => into.Fold(key, delta);
    }

    [Fact]
    public void A_full_shard_table_counts_past_its_limit_under_the_threads_other_key_then_the_family_overflow()
    {
        var table = new SeriesTable(seriesLimit: 3); // reserve: 16 entries for "other" keys
        for (int port = 0; port < 10; port++)
            table.Counter(new SeriesKey(1, -1, MetricFamily.Pio, (uint)port, 1)) += 2;
        Assert.Equal(4, table.Count); // 3 ports and thread 1's "other" (direction kept)
        Assert.Equal(14, table.Counter(new SeriesKey(1, -1, MetricFamily.Pio, MetricFamilies.OtherKey, 1)));
        for (int tid = 2; tid < 40; tid++)
            table.Counter(new SeriesKey(tid, -1, MetricFamily.Msr, 0x10, 0))++;
        Assert.Equal(3 + table.Reserve, table.Count);
        Assert.Equal(38 - (table.Reserve - 1), table.Overflow(MetricFamily.Msr));

        var folded = new Folded();
        var visit = new Forward(folded);
        table.Fold(ref visit);
        Assert.Equal(10 * 2 + 38, folded.Values.Values.Sum()); // every increment, once
        table.Fold(ref visit);
        Assert.Equal(10 * 2 + 38, folded.Values.Values.Sum()); // nothing twice
    }

    [Fact]
    public void Compaction_drops_only_entries_that_are_fully_folded()
    {
        var table = new SeriesTable(seriesLimit: 100);
        table.Counter(new SeriesKey(7, -1, MetricFamily.Pio, 1, 0)) += 5;
        table.Counter(new SeriesKey(8, -1, MetricFamily.Pio, 1, 0)) += 5;
        var visit = new Forward(new Folded());
        table.Fold(ref visit);
        table.Counter(new SeriesKey(8, -1, MetricFamily.Pio, 1, 0)) += 1; // not folded yet
        Assert.Equal(1, table.Compact((key, _) => true));
        Assert.Equal(1, table.Count);
        Assert.Equal(6, table.Counter(new SeriesKey(8, -1, MetricFamily.Pio, 1, 0)));
    }

    [Fact]
    public void Only_the_hottest_keys_of_a_vm_keep_series_and_every_series_stays_monotonic()
    {
        var store = new SeriesStore(familyLimit: 1000, topK: 2);
        store.Add("web", -1, MetricFamily.Pio, 0x3f8, 1, 10); // fills the top 2
        store.Add("web", -1, MetricFamily.Pio, 0x70, 1, 20);
        store.Add("web", -1, MetricFamily.Pio, 0xcf8, 1, 500); // no room: "other"
        Assert.Equal([0x70u, 0x3f8u, MetricFamilies.OtherKey], Ports(store));
        store.Rank(1); // 0xcf8 runs 50x hotter than the coolest kept key: it takes its place
        store.Add("web", -1, MetricFamily.Pio, 0xcf8, 1, 7);
        store.Add("web", -1, MetricFamily.Pio, 0x3f8, 1, 3); // no series any more: "other"
        store.Rank(1); // 0x3f8 (1.5/s) is not twice as hot as 0x70 (5/s): no swap back
        List<MergedSeries> series = store.Export();
        Assert.Equal([0x70u, 0xcf8u, MetricFamilies.OtherKey], Ports(store));
        Assert.Equal(7, series.Single(s => s.Label1 == 0xcf8).Value); // starts at 0 when it enters
        Assert.Equal(20, series.Single(s => s.Label1 == 0x70).Value);
        Assert.Equal(500 + 3, series.Single(s => s.Label1 == MetricFamilies.OtherKey).Value);
        Assert.Equal(3, store.SeriesOf(MetricFamily.Pio));
        Assert.Equal(0, store.OverflowOf(MetricFamily.Pio));
    }

    private static List<uint> Ports(SeriesStore store) =>
        store.Export().Where(s => s.Family == MetricFamily.Pio).Select(s => s.Label1).ToList();

    /// <summary>100,000 distinct ports driven as kvm_pio records through the tracefs page path.</summary>
    private static Aggregator DrivePorts(FakeProc proc, int vms, AggregatorOptions options)
    {
        var formats = new Dictionary<string, EventFormat> { ["kvm:kvm_pio"] = Fixture.Format("kvm_pio.format") };
        var decoders = new KvmEventDecoders(tp => formats.GetValueOrDefault(tp.FullName));
        var registry = new VmRegistry(proc.Root);
        for (int v = 0; v < vms; v++)
            proc.Vm(700 + 10 * v, "qemu-system-x86", $"qemu-system-x86_64\0-name\0vm{v}\0", threads: [(701 + 10 * v, "CPU 0/KVM")]);
        registry.Scan();
        var aggregator = new Aggregator(1, registry, options);
        Shard shard = aggregator.Shards[0];
        var handler = new RecordHandler(decoders, shard);
        var page = new PageEncoder(Fixture.PageHeader, 0);
        ulong ts = 0;
        for (int port = 0; port < 100_000; port++)
        {
            byte[] payload = PayloadEncoder.Encode(formats["kvm:kvm_pio"], 701 + 10 * (port % vms), ("rw", 1), ("port", (ulong)port),
                ("size", 1), ("count", 1));
            if (page.Free < 64)
            {
                var buffer = new ReadOnlySequence<byte>(page.Build());
                PageStreamParser.ParsePages(ref buffer, Fixture.PageHeader, ref handler);
                page = new PageEncoder(Fixture.PageHeader, ts);
            }
            page.Record(++ts, payload);
            if (port % 10_000 == 9_999)
                aggregator.Maintain(DateTime.UtcNow); // folds as the housekeeping loop does
        }
        var last = new ReadOnlySequence<byte>(page.Build());
        PageStreamParser.ParsePages(ref last, Fixture.PageHeader, ref handler);
        aggregator.Maintain(DateTime.UtcNow);
        return aggregator;
    }

    [Fact]
    public void A_hundred_thousand_ports_keep_each_vm_at_its_top_k_and_other()
    {
        Aggregator aggregator = DrivePorts(_proc, vms: 4, new AggregatorOptions { TopK = 16, ShardSeries = 4096 });
        List<MergedSeries> pio = aggregator.Snapshot().Where(s => s.Family == MetricFamily.Pio).ToList();
        Assert.Equal(4 * 17, pio.Count);
        Assert.All(pio.GroupBy(s => s.Vm), vm => Assert.Equal(17, vm.Count()));
        Assert.Equal(100_000, pio.Sum(s => s.Value) + aggregator.Overflow(MetricFamily.Pio));
        Assert.Equal(0, aggregator.Overflow(MetricFamily.Pio));
        // A reader's table grows as it fills, but never past its bound (8x the family limit).
        SeriesTable table = aggregator.Shards[0].Series;
        Assert.True(table.Count <= table.MaxSeriesLimit + table.Reserve, $"{table.Count} entries");
        Assert.Equal(aggregator.Options.MaxShardSeries, table.MaxSeriesLimit);
    }

    [Fact]
    public void A_hundred_thousand_ports_keep_the_family_at_its_limit_and_count_the_overflow()
    {
        // Top K out of the way: every port would have its own series but for the family limit.
        Aggregator aggregator = DrivePorts(_proc, vms: 1, new AggregatorOptions { TopK = 1_000_000, FamilyLimit = 1000, ShardSeries = 200_000 });
        List<MergedSeries> pio = aggregator.Snapshot().Where(s => s.Family == MetricFamily.Pio).ToList();
        Assert.Equal(1000, aggregator.SeriesOf(MetricFamily.Pio));
        Assert.Equal(1001, pio.Count); // the limit, and the overflow series
        MergedSeries overflow = pio.Single(s => s.Vm == SeriesStore.OverflowVm);
        Assert.Equal(99_000, overflow.Value);
        Assert.Equal(99_000, aggregator.Overflow(MetricFamily.Pio));
        Assert.Equal(100_000, pio.Sum(s => s.Value));
    }

    [Fact]
    public void An_exited_vm_keeps_its_series_for_the_grace_period_and_one_restarted_under_its_name_continues_them()
    {
        var registry = new VmRegistry(_proc.Root);
        var aggregator = new Aggregator(1, registry, new AggregatorOptions { VmGrace = TimeSpan.FromMinutes(1) });
        void Count(int tid, long n)
        {
            lock (aggregator.Shards[0].Gate)
                aggregator.Shards[0].Series.Counter(new SeriesKey(tid, -1, MetricFamily.Pio, 0x3f8, 1)) += n;
        }
        long Total() => aggregator.Snapshot().Where(s => s.Vm == "web").Sum(s => s.Value);

        _proc.Vm(800, "qemu-system-x86", "qemu-system-x86_64\0-name\0web\0", start: 5000, threads: [(801, "CPU 0/KVM")]);
        registry.Scan();
        Count(801, 10);
        Assert.Equal(10, Total());
        _proc.Exit(800);
        registry.Scan();
        DateTime exited = registry.Vms().Single().ExitedAt!.Value;
        aggregator.Maintain(exited.AddSeconds(30));
        Assert.Equal(10, Total()); // within the grace period
        Assert.Equal(0, aggregator.Shards[0].Series.Count); // its hot-path entries went, folded

        _proc.Vm(900, "qemu-system-x86", "qemu-system-x86_64\0-name\0web\0", start: 6000, threads: [(901, "CPU 0/KVM")]);
        registry.Scan();
        Count(901, 5);
        Assert.Equal(15, Total()); // continues
        aggregator.Maintain(exited.AddSeconds(90));
        Assert.Equal(15, Total()); // the old process expired, the name lives on

        _proc.Exit(900);
        registry.Scan();
        aggregator.Maintain(DateTime.UtcNow.AddMinutes(2));
        Assert.DoesNotContain(aggregator.Snapshot(), s => s.Vm == "web");
        Assert.Empty(registry.Vms());
        Assert.Equal(0, aggregator.SeriesOf(MetricFamily.Pio));
    }
}
