using KvmObserve.Decoding.Perf;

namespace KvmObserve.Tests;

public class PerfRingReaderTests
{
    private struct Collector : IPerfRecordHandler
    {
        public List<string> Seen;

        public static Collector Create() => new() { Seen = new List<string>() };

        public void OnSample(ulong time, int pid, int tid, int cpu, ReadOnlySpan<byte> raw) =>
            Seen.Add($"sample t={time} pid={pid} tid={tid} cpu={cpu} raw={Convert.ToHexString(raw)}");

        public void OnLost(ulong count) => Seen.Add($"lost {count}");

        public void OnMalformedRecord(uint type) => Seen.Add($"malformed {type}");

        public void OnCorruptRing(ulong position) => Seen.Add($"corrupt at {position}");
    }

    private static byte[] Raw(int length, byte seed) => Enumerable.Range(0, length).Select(i => (byte)(seed + i)).ToArray();

    /// <summary>Samples of several sizes and a LOST record, the sequence starting at every 8-byte offset of a small
    /// ring, so every record (and every header) is split over the end at some start.</summary>
    [Fact]
    public void Every_start_offset_reads_the_same_records()
    {
        const int size = 512;
        List<string>? expected = null;
        for (ulong start = 0; start < 3 * size; start += 8)
        {
            var ring = new PerfRingEncoder(size, start)
                .Sample(100, 7, 1, Raw(12, 1))
                .Lost(3)
                .Sample(200, 8, 0, Raw(36, 50))
                .Sample(300, 9, 1, Raw(4, 90))
                .Sample(400, 10, 1, Raw(60, 120));
            var c = Collector.Create();
            ulong tail = PerfRingReader.Read(ring.Data, ring.Tail, ring.Head, new byte[PerfRingReader.MaxRecordSize], ref c);
            Assert.Equal(ring.Head, tail);
            expected ??= c.Seen;
            Assert.Equal(expected, c.Seen);
        }
        Assert.Equal(5, expected!.Count);
        Assert.Equal("lost 3", expected[1]);
        Assert.StartsWith("sample t=200 pid=8 tid=8 cpu=0 raw=32333435", expected[2]);
    }

    [Fact]
    public void A_sample_tells_its_process_and_its_thread()
    {
        var ring = new PerfRingEncoder(256, 0).Sample(9, 41, 1, Raw(8, 0), pid: 40);
        var c = Collector.Create();
        PerfRingReader.Read(ring.Data, ring.Tail, ring.Head, new byte[PerfRingReader.MaxRecordSize], ref c);
        Assert.StartsWith("sample t=9 pid=40 tid=41 cpu=1 ", Assert.Single(c.Seen));
    }

    [Fact]
    public void A_record_split_over_the_end_is_delivered_whole()
    {
        var ring = new PerfRingEncoder(128, 96).Sample(5, 1, 0, Raw(40, 0)); // 80 bytes from offset 96: 32 at the end, 48 at the start
        var c = Collector.Create();
        PerfRingReader.Read(ring.Data, ring.Tail, ring.Head, new byte[PerfRingReader.MaxRecordSize], ref c);
        Assert.Equal($"sample t=5 pid=1 tid=1 cpu=0 raw={Convert.ToHexString(Raw(40, 0))}00000000", Assert.Single(c.Seen));
    }

    [Fact]
    public void Records_read_in_any_two_batches_give_the_same_sequence()
    {
        var ring = new PerfRingEncoder(512, 200).Sample(1, 1, 0, Raw(8, 0)).Lost(2).Sample(2, 2, 1, Raw(20, 9)).Sample(3, 3, 0, Raw(100, 3));
        var whole = Collector.Create();
        PerfRingReader.Read(ring.Data, ring.Tail, ring.Head, new byte[PerfRingReader.MaxRecordSize], ref whole);
        // The kernel publishes head only at record boundaries (sizes 48, 24, 56, 136): split at each of them.
        ulong[] boundaries = [ring.Tail, ring.Tail + 48, ring.Tail + 72, ring.Tail + 128, ring.Tail + 264];
        Assert.Equal(ring.Head, boundaries[^1]);
        foreach (ulong split in boundaries)
        {
            var c = Collector.Create();
            byte[] scratch = new byte[PerfRingReader.MaxRecordSize];
            ulong mid = PerfRingReader.Read(ring.Data, ring.Tail, split, scratch, ref c);
            PerfRingReader.Read(ring.Data, mid, ring.Head, scratch, ref c);
            Assert.Equal(whole.Seen, c.Seen);
        }
    }

    [Theory]
    [InlineData(0)]      // size 0 would never advance
    [InlineData(12)]     // not 8-byte aligned
    [InlineData(4096)]   // past the head
    public void A_torn_header_skips_to_the_head_and_says_so(int declared)
    {
        var ring = new PerfRingEncoder(256, 8).Sample(1, 1, 0, Raw(8, 0)).Raw(9, 16, declared).Sample(2, 2, 0, Raw(8, 0));
        var c = Collector.Create();
        ulong tail = PerfRingReader.Read(ring.Data, ring.Tail, ring.Head, new byte[PerfRingReader.MaxRecordSize], ref c);
        Assert.Equal(ring.Head, tail);
        Assert.Equal(2, c.Seen.Count);
        Assert.StartsWith("sample t=1", c.Seen[0]);
        Assert.Equal("corrupt at 56", c.Seen[1]);
    }

    [Fact]
    public void Fewer_bytes_than_a_header_before_the_head_is_corrupt()
    {
        var ring = new PerfRingEncoder(64, 0).Sample(1, 1, 0, Raw(4, 0));
        var c = Collector.Create();
        Assert.Equal(ring.Head + 4, PerfRingReader.Read(ring.Data, ring.Tail, ring.Head + 4, new byte[PerfRingReader.MaxRecordSize], ref c));
        Assert.Equal("corrupt at 40", c.Seen[^1]);
    }

    [Fact]
    public void A_sample_whose_raw_size_overruns_its_record_is_skipped_and_the_next_one_read()
    {
        var ring = new PerfRingEncoder(256, 0).Raw(9, 24).Raw(9, 48).Raw(1234, 16).Lost(1);
        var c = Collector.Create();
        PerfRingReader.Read(ring.Data, ring.Tail, ring.Head, new byte[PerfRingReader.MaxRecordSize], ref c);
        // a 24-byte sample is too short for its fields; a 48-byte one with raw_size 0 is an empty sample; type 1234 skipped
        Assert.Equal(["malformed 9", "sample t=0 pid=0 tid=0 cpu=0 raw=", "lost 1"], c.Seen);
    }

    [Fact]
    public void Random_bytes_never_throw_and_always_reach_the_head()
    {
        var random = new Random(7);
        byte[] scratch = new byte[PerfRingReader.MaxRecordSize];
        for (int round = 0; round < 2000; round++)
        {
            byte[] data = new byte[256];
            random.NextBytes(data);
            ulong tail = (ulong)random.Next(0, 1000);
            ulong head = tail + (ulong)random.Next(0, 257);
            var c = Collector.Create();
            Assert.Equal(head, PerfRingReader.Read(data, tail, head, scratch, ref c));
        }
    }
}
