using System.Buffers.Binary;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.RingBuffer;

/// <summary>
/// Parses one page of a tracefs ring buffer as read from per_cpu/cpuN/trace_pipe_raw (kernel/trace/ring_buffer.c).
/// <code>
/// page:    | u64 time_stamp | local_t commit | data[commit & 0x3fffffff] ... | (u64 missed count, if STORED) |
///          commit bit 31 RB_MISSED_EVENTS: events were lost before this page
///          commit bit 30 RB_MISSED_STORED: their count is the unsigned long at data[commit length]
/// event:   | type_len:5 | time_delta:27 | array[0]: u32 | ...
///   type_len 1..28  data, payload = type_len * 4 bytes starting at array[0]
///   type_len 0      data, array[0] = payload length + 4, payload starts at array[1]
///   type_len 29     padding: time_delta == 0 ends the page, else skip array[0] + 4 bytes
///   type_len 30     time extend: ts += array[0] &lt;&lt; 27 | time_delta (8 bytes)
///   type_len 31     absolute time stamp: ts = array[0] &lt;&lt; 27 | time_delta, top 5 bits from the page stamp
/// </code>
/// Data records advance the time by their time_delta; padding does not. Pure: no I/O, no allocation.
/// </summary>
public static class RingBufferPageReader
{
    public const uint MissedEventsFlag = 1u << 31;
    public const uint MissedStoredFlag = 1u << 30;
    public const uint CommitLengthMask = (1u << 30) - 1;

    private const int TimeShift = 27;
    private const ulong TimeStampMsb = 0xf8UL << 56;

    /// <summary>Reads every record of <paramref name="page"/> (exactly one page) into <paramref name="handler"/>.</summary>
    /// <returns>The number of data records delivered.</returns>
    public static int ReadPage<THandler>(ReadOnlySpan<byte> page, in PageHeaderFormat layout, ref THandler handler)
        where THandler : struct, IRingBufferRecordHandler
    {
        if (page.Length < layout.DataOffset)
        {
            handler.OnCorruptPage(0);
            return 0;
        }
        ulong pageStamp = BinaryPrimitives.ReadUInt64LittleEndian(page.Slice(layout.TimestampOffset));
        uint commit = BinaryPrimitives.ReadUInt32LittleEndian(page.Slice(layout.CommitOffset)); // low word holds flags + length
        int length = (int)(commit & CommitLengthMask);
        ReadOnlySpan<byte> data = page.Slice(layout.DataOffset);
        if (length > data.Length)
        {
            handler.OnCorruptPage(0);
            return 0;
        }

        (ulong missed, bool exact) = MissedBefore(page, layout);
        if (missed > 0)
            handler.OnEventsLost(missed, exact);

        return ReadEvents(data.Slice(0, length), pageStamp, ref handler);
    }

    /// <summary>The events the kernel lost before <paramref name="page"/>, as its commit word says: (0, true) when
    /// none; the count stored after the data (RB_MISSED_STORED); else (1, false): some, how many unknown.</summary>
    public static (ulong Count, bool Exact) MissedBefore(ReadOnlySpan<byte> page, in PageHeaderFormat layout)
    {
        if (page.Length < layout.DataOffset)
            return (0, true);
        uint commit = BinaryPrimitives.ReadUInt32LittleEndian(page.Slice(layout.CommitOffset));
        if ((commit & MissedEventsFlag) == 0)
            return (0, true);
        int length = (int)(commit & CommitLengthMask);
        ReadOnlySpan<byte> data = page.Slice(layout.DataOffset);
        if ((commit & MissedStoredFlag) != 0 && length + sizeof(ulong) <= data.Length)
            return (BinaryPrimitives.ReadUInt64LittleEndian(data.Slice(length)), true);
        return (1, false);
    }

    /// <summary>
    /// Reads the records a page gained since the last call: those in its data area from <paramref name="position"/>
    /// up to <paramref name="end"/> (bytes). For a page being read while the kernel still writes to it (the mapped
    /// ring buffer's reader page): the caller keeps <paramref name="position"/> and <paramref name="timestamp"/> (the
    /// running time of the last record) between calls, starting at 0 and the page's time stamp.
    /// </summary>
    public static int ReadAppended<THandler>(ReadOnlySpan<byte> page, in PageHeaderFormat layout, int end, ref int position,
        ref ulong timestamp, ref THandler handler)
        where THandler : struct, IRingBufferRecordHandler
    {
        if (page.Length < layout.DataOffset || end > page.Length - layout.DataOffset || position > end || position < 0)
        {
            handler.OnCorruptPage(position);
            position = end;
            return 0;
        }
        ulong pageStamp = BinaryPrimitives.ReadUInt64LittleEndian(page.Slice(layout.TimestampOffset));
        if (position == 0)
            timestamp = pageStamp;
        int records = ReadEvents(page.Slice(layout.DataOffset, end), pageStamp, ref handler, position, timestamp, out timestamp);
        position = end;
        return records;
    }

    private static int ReadEvents<THandler>(ReadOnlySpan<byte> data, ulong pageStamp, ref THandler handler)
        where THandler : struct, IRingBufferRecordHandler
    {
        return ReadEvents(data, pageStamp, ref handler, 0, pageStamp, out _);
    }

    /// <summary>The records of <paramref name="data"/> from <paramref name="pos"/> on, with the running time
    /// <paramref name="ts"/> (a local in the loop: kept in a register); <paramref name="lastTs"/> is where it ended.</summary>
    private static int ReadEvents<THandler>(ReadOnlySpan<byte> data, ulong pageStamp, ref THandler handler, int pos, ulong ts, out ulong lastTs)
        where THandler : struct, IRingBufferRecordHandler
    {
        int records = 0;
        while (pos < data.Length)
        {
            if (data.Length - pos < sizeof(uint))
            {
                handler.OnCorruptPage(pos);
                goto Done;
            }
            uint header = BinaryPrimitives.ReadUInt32LittleEndian(data.Slice(pos));
            int typeLen = (int)(header & 0x1f);
            uint delta = header >> 5;

            if (typeLen is > 0 and <= EventHeaderFormat.DataMaxTypeLen)
            {
                int size = 4 + typeLen * 4;
                if (size > data.Length - pos)
                {
                    handler.OnCorruptPage(pos);
                    goto Done;
                }
                ts += delta;
                handler.OnRecord(ts, data.Slice(pos + 4, typeLen * 4));
                records++;
                pos += size;
                continue;
            }

            if (typeLen == EventHeaderFormat.PaddingType && delta == 0)
                goto Done; // the rest of the page is empty

            if (data.Length - pos < 8)
            {
                handler.OnCorruptPage(pos);
                goto Done;
            }
            uint array0 = BinaryPrimitives.ReadUInt32LittleEndian(data.Slice(pos + 4));
            switch (typeLen)
            {
                case 0:
                {
                    // array[0] counts itself plus the payload
                    if (array0 < 4 || array0 > (uint)(data.Length - pos - 4))
                    {
                        handler.OnCorruptPage(pos);
                        goto Done;
                    }
                    ts += delta;
                    handler.OnRecord(ts, data.Slice(pos + 8, (int)array0 - 4));
                    records++;
                    pos += 4 + (int)array0;
                    break;
                }
                case EventHeaderFormat.PaddingType:
                    if (array0 > (uint)(data.Length - pos - 4))
                    {
                        handler.OnCorruptPage(pos);
                        goto Done;
                    }
                    pos += 4 + (int)Math.Max(array0, 4u);
                    break;
                case EventHeaderFormat.TimeExtendType:
                    ts += ((ulong)array0 << TimeShift) | delta;
                    pos += 8;
                    break;
                default: // EventHeaderFormat.TimeStampType
                    ts = FixAbsoluteTimestamp(((ulong)array0 << TimeShift) | delta, pageStamp);
                    pos += 8;
                    break;
            }
        }
    Done: // every way out: the end of the data, of the page's records, or a corrupt header (reported)
        lastTs = ts;
        return records;
    }

    /// <summary>An absolute stamp keeps 59 bits; the top 5 come from a full stamp taken earlier (the page's).</summary>
    public static ulong FixAbsoluteTimestamp(ulong absolute, ulong saved)
    {
        if ((saved & TimeStampMsb) != 0)
        {
            absolute |= saved & TimeStampMsb;
            if (absolute < saved)
                absolute += 1UL << 59;
        }
        return absolute;
    }
}
