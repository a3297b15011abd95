using System.Buffers;
using KvmObserve.Decoding.Format;
using KvmObserve.Decoding.RingBuffer;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Tests;

public class RingBufferPageReaderTests
{
    private static readonly PageHeaderFormat Layout = Fixture.PageHeader;

    private static CollectingRecordHandler Read(byte[] page)
    {
        var h = CollectingRecordHandler.Create();
        RingBufferPageReader.ReadPage(page, Layout, ref h);
        return h;
    }

    /// <summary>A mapped reader page read while the kernel appends to it: each call reads what was committed since
    /// the last, with the running time carried over, and altogether it is what one read of the whole page gives.</summary>
    [Fact]
    public void A_page_read_in_appended_parts_gives_each_record_once_with_its_time()
    {
        byte[] p = [1, 2, 3, 4, 5, 6, 7, 8];
        var encoder = new PageEncoder(Layout, 1000);
        var ends = new List<int>();
        ulong t = 1000;
        for (int i = 0; i < 20; i++)
        {
            t += i == 10 ? 1UL << 28 : 7; // a time extend in the middle
            encoder.Record(t, p);
            if (i is 2 or 9 or 10 or 19)
                ends.Add(Layout.DataSize - encoder.Free); // where the commit stood when the reader looked
        }
        byte[] page = encoder.Build();
        CollectingRecordHandler whole = Read(page);

        var parts = CollectingRecordHandler.Create();
        int position = 0;
        ulong timestamp = 0;
        int records = 0;
        foreach (int end in ends.Prepend(0).Append(ends[^1])) // nothing new at first and at the end: no records
            records += RingBufferPageReader.ReadAppended(page, Layout, end, ref position, ref timestamp, ref parts);
        Assert.Equal(20, records);
        Assert.Equal(whole.Records.Select(r => r.Timestamp), parts.Records.Select(r => r.Timestamp));
        Assert.Equal(0, parts.Corrupt);
        Assert.Equal(t, timestamp);
    }

    [Fact]
    public void Small_and_large_records_with_deltas()
    {
        byte[] small = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        byte[] large = Enumerable.Range(0, 200).Select(i => (byte)i).ToArray();
        byte[] page = new PageEncoder(Layout, 1000).Record(1005, small).Record(1100, large).Record(1100, small).Build();
        CollectingRecordHandler h = Read(page);
        Assert.Equal([1005UL, 1100UL, 1100UL], h.Records.Select(r => r.Timestamp));
        Assert.Equal(small, h.Records[0].Payload[..small.Length]);
        Assert.Equal(12, h.Records[0].Payload.Length); // padded to 4 bytes, as the kernel stores it
        Assert.Equal(large, h.Records[1].Payload);
        Assert.Equal(0, h.Corrupt);
        Assert.Equal(0UL, h.Lost);
    }

    [Fact]
    public void Time_extends_and_absolute_stamps()
    {
        ulong page0 = 0xf800_0000_0000_1000; // top 5 bits set: the absolute stamp must get them back
        byte[] p = [9, 9, 9, 9];
        byte[] page = new PageEncoder(Layout, page0)
            .Record(page0 + (1UL << 40), p)          // needs a time extend
            .AbsoluteStamp(page0 + (3UL << 45))
            .Record(page0 + (3UL << 45) + 7, p)
            .Build();
        CollectingRecordHandler h = Read(page);
        Assert.Equal([page0 + (1UL << 40), page0 + (3UL << 45) + 7], h.Records.Select(r => r.Timestamp));
    }

    [Fact]
    public void Padding_is_skipped_and_does_not_move_time()
    {
        byte[] p = [1, 1, 1, 1];
        byte[] page = new PageEncoder(Layout, 50).Record(60, p).Padding(24).Record(70, p).Build();
        CollectingRecordHandler h = Read(page);
        Assert.Equal([60UL, 70UL], h.Records.Select(r => r.Timestamp));
    }

    [Fact]
    public void Missed_events_stored_and_not_stored()
    {
        byte[] p = [1, 2, 3, 4];
        CollectingRecordHandler stored = Read(new PageEncoder(Layout, 0).Record(1, p).Build(missedEvents: 1234));
        Assert.Equal(1234UL, stored.Lost);
        Assert.Single(stored.Records);
        CollectingRecordHandler unstored = Read(new PageEncoder(Layout, 0).Record(1, p).Build(missedEvents: 99, missedStored: false));
        Assert.Equal(1UL, unstored.Lost);
        Assert.Equal(1, unstored.InexactLosses);
    }

    /// <summary>The mapped reader asks the page alone, before it parses any of it (kernels since 6.15 flag the
    /// reader page and leave the meta page's count at 0).</summary>
    [Fact]
    public void Missed_events_are_read_from_the_page_header_alone()
    {
        byte[] p = [1, 2, 3, 4];
        Assert.Equal((1234UL, true), RingBufferPageReader.MissedBefore(new PageEncoder(Layout, 0).Record(1, p).Build(missedEvents: 1234), Layout));
        Assert.Equal((1UL, false), RingBufferPageReader.MissedBefore(new PageEncoder(Layout, 0).Record(1, p).Build(missedEvents: 99, missedStored: false), Layout));
        Assert.Equal((0UL, true), RingBufferPageReader.MissedBefore(new PageEncoder(Layout, 0).Record(1, p).Build(), Layout));
        Assert.Equal((0UL, true), RingBufferPageReader.MissedBefore(new byte[8], Layout)); // shorter than a header
    }

    [Fact]
    public void An_empty_page_has_no_records()
    {
        CollectingRecordHandler h = Read(new PageEncoder(Layout, 5).Build());
        Assert.Empty(h.Records);
        Assert.Equal(0, h.Corrupt);
    }

    [Fact]
    public void A_record_running_past_commit_is_corrupt_and_stops_the_page()
    {
        byte[] page = new PageEncoder(Layout, 0).Record(1, new byte[8]).Build();
        page[Layout.CommitOffset] = 6; // commit now ends inside the record
        CollectingRecordHandler h = Read(page);
        Assert.Empty(h.Records);
        Assert.Equal(1, h.Corrupt);
    }

    [Fact]
    public void Truncated_and_random_pages_never_throw()
    {
        var random = new Random(1234);
        byte[] good = new PageEncoder(Layout, 0).Record(1, new byte[40]).Record(2, new byte[300]).Build();
        for (int cut = 0; cut < good.Length; cut += 7)
            Read(good[..cut]);
        for (int i = 0; i < 2000; i++)
        {
            byte[] page = (byte[])good.Clone();
            for (int flips = random.Next(1, 20); flips > 0; flips--)
                page[random.Next(page.Length)] = (byte)random.Next(256);
            if (i % 3 == 0)
                random.NextBytes(page);
            CollectingRecordHandler h = Read(page);
            Assert.All(h.Records, r => Assert.True(r.Payload.Length <= Layout.DataSize));
        }
    }

    [Fact]
    public void Pages_split_at_every_offset_across_pipe_segments_parse_the_same()
    {
        byte[] p = Enumerable.Range(0, 36).Select(i => (byte)i).ToArray();
        byte[] page1 = new PageEncoder(Layout, 100).Record(101, p).Record(102, p).Build();
        byte[] page2 = new PageEncoder(Layout, 200).Record(205, new byte[150]).Build(missedEvents: 3);
        byte[] stream = [.. page1, .. page2];

        var whole = CollectingRecordHandler.Create();
        var wholeBuffer = new ReadOnlySequence<byte>(stream);
        Assert.Equal(2, PageStreamParser.ParsePages(ref wholeBuffer, Layout, ref whole));

        for (int split = 1; split < stream.Length; split++)
        {
            ReadOnlySequence<byte> buffer = Segments.Of(stream[..split], stream[split..]);
            var h = CollectingRecordHandler.Create();
            Assert.Equal(2, PageStreamParser.ParsePages(ref buffer, Layout, ref h));
            Assert.Equal(0, buffer.Length);
            Assert.Equal(whole.Records.Select(r => (r.Timestamp, Convert.ToHexString(r.Payload))),
                h.Records.Select(r => (r.Timestamp, Convert.ToHexString(r.Payload))));
            Assert.Equal(3UL, h.Lost);
        }
    }

    [Fact]
    public void A_partial_page_waits_for_the_rest()
    {
        byte[] page = new PageEncoder(Layout, 0).Record(1, new byte[4]).Build();
        var buffer = new ReadOnlySequence<byte>(page, 0, page.Length - 1);
        var h = CollectingRecordHandler.Create();
        Assert.Equal(0, PageStreamParser.ParsePages(ref buffer, Layout, ref h));
        Assert.Equal(page.Length - 1, buffer.Length);
    }
}

internal sealed class Segments : ReadOnlySequenceSegment<byte>
{
    private Segments(byte[] data, long runningIndex)
    {
        Memory = data;
        RunningIndex = runningIndex;
    }

    public static ReadOnlySequence<byte> Of(byte[] first, byte[] second)
    {
        var a = new Segments(first, 0);
        var b = new Segments(second, first.Length);
        a.Next = b;
        return new ReadOnlySequence<byte>(a, 0, b, second.Length);
    }
}
