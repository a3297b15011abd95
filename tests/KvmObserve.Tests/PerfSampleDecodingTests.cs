using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Decoding.Perf;

namespace KvmObserve.Tests;

/// <summary>A perf sample's raw data is the trace record (padded to 8 bytes with its size word): the tracefs decoders
/// read it unchanged.</summary>
public class PerfSampleDecodingTests
{
    private struct Handler(KvmEventDecoders decoders, Shard shard) : IPerfRecordHandler
    {
        private AggregatingSink _sink = new(shard);
        public void OnSample(ulong time, int pid, int tid, int cpu, ReadOnlySpan<byte> raw) => decoders.Decode(time, cpu, raw, ref _sink);
        public void OnLost(ulong count) => shard.CountLost(count, exact: true);
        public void OnMalformedRecord(uint type) => shard.CountDecodeError(KvmEventKind.None);
        public void OnCorruptRing(ulong position) => shard.CountCorruptPage();
    }

    [Fact]
    public void Samples_split_over_the_ring_end_decode_like_trace_records()
    {
        EventFormat pio = Fixture.Format("kvm_pio.format");
        EventFormat exit = Fixture.Format("kvm_userspace_exit.format");
        var decoders = new KvmEventDecoders(tp => tp.Name switch { "kvm_pio" => pio, "kvm_userspace_exit" => exit, _ => null });
        var shard = new Shard(0, 100);
        var ring = new PerfRingEncoder(1024, 1000); // starts 24 bytes before the end: the first sample wraps
        for (int i = 0; i < 5; i++)
        {
            ring.Sample((ulong)i, 4242, 0, PayloadEncoder.Encode(pio, 4242, ("rw", 1), ("port", 0x3f8), ("size", 1), ("count", 1)));
            ring.Sample((ulong)i, 4242, 0, PayloadEncoder.Encode(exit, 4242, ("reason", 2), ("errno", 0)));
        }
        ring.Lost(2);
        var handler = new Handler(decoders, shard);
        ulong tail = ring.Tail;
        byte[] scratch = new byte[PerfRingReader.MaxRecordSize];
        tail = PerfRingReader.Read(ring.Data, tail, ring.Head, scratch, ref handler);

        Assert.Equal(ring.Head, tail);
        Assert.Equal(5, shard.Series.Counter(new SeriesKey(4242, -1, MetricFamily.Pio, 0x3f8, 1)));
        Assert.Equal(5, shard.Series.Counter(new SeriesKey(4242, -1, MetricFamily.UserspaceExits, 2, 0)));
        Assert.Equal(2, shard.LostEvents);
        Assert.Equal(0, shard.DecodeErrorsOf(KvmEventKind.None));
    }
}
