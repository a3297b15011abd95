using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace KvmObserve.Decoding.Perf;

/// <summary>
/// Parses the records between tail and head of a perf mmap ring (include/uapi/linux/perf_event.h,
/// kernel/events/ring_buffer.c). head and tail run freely; a record starts at position &amp; (size - 1) and may wrap
/// past the end of the data area, its header included.
/// <code>
/// record:  | u32 type | u16 misc | u16 size | body (size - 8 bytes) |            8-byte aligned, size counts the header
/// SAMPLE with sample_type = TID | TIME | CPU | RAW (what the sampling source asks for):
///          | u32 pid | u32 tid | u64 time | u32 cpu | u32 res | u32 raw_size | raw (raw_size bytes: the trace record,
///          common_type first, padded so that raw_size + 4 is a multiple of 8) |
/// LOST:    | u64 id | u64 lost | (sample_id, when sample_id_all) |
/// LOST_SAMPLES: | u64 lost | ...
/// </code>
/// Pure: no I/O, no allocation; a record split over the end is copied into the caller's scratch buffer.
/// </summary>
public static class PerfRingReader
{
    public const int HeaderSize = 8;

    /// <summary>The largest record (size is a u16): the scratch buffer must hold this much.</summary>
    public const int MaxRecordSize = ushort.MaxValue;

    private const int SampleFixedSize = HeaderSize + 4 + 4 + 8 + 4 + 4 + 4; // up to and including raw_size

    /// <summary>Delivers every record in [tail, head) and returns the position the caller should store as data_tail.</summary>
    /// <param name="data">The data area, a power of two in size.</param>
    public static ulong Read<THandler>(ReadOnlySpan<byte> data, ulong tail, ulong head, Span<byte> scratch, ref THandler handler)
        where THandler : struct, IPerfRecordHandler
    {
        if (!System.Numerics.BitOperations.IsPow2(data.Length))
            throw new ArgumentException("the perf data area is a power of two in size", nameof(data));
        ulong mask = (ulong)data.Length - 1;
        if (head - tail > (ulong)data.Length && tail < head)
        {
            // More than the ring holds: the positions are wrong, and no record boundary in between can be trusted.
            handler.OnCorruptRing(tail);
            return head;
        }
        while (tail < head)
        {
            ulong available = head - tail;
            int offset = (int)(tail & mask);
            if (available < HeaderSize)
            {
                handler.OnCorruptRing(tail);
                return head;
            }
            ulong header = offset + HeaderSize <= data.Length
                ? BinaryPrimitives.ReadUInt64LittleEndian(data.Slice(offset))
                : ReadWrapped64(data, offset);
            uint type = (uint)header;
            int size = (int)(header >> 48);
            if (size < HeaderSize || (size & 7) != 0 || (ulong)size > available)
            {
                handler.OnCorruptRing(tail);
                return head;
            }
            ReadOnlySpan<byte> record = offset + size <= data.Length
                ? data.Slice(offset, size)
                : CopyWrapped(data, offset, size, scratch);
            Dispatch(type, record, ref handler);
            tail += (ulong)size;
        }
        return tail;
    }

    private static void Dispatch<THandler>(uint type, ReadOnlySpan<byte> record, ref THandler handler)
        where THandler : struct, IPerfRecordHandler
    {
        switch (type)
        {
            case 9: // PERF_RECORD_SAMPLE
                if (record.Length < SampleFixedSize)
                {
                    handler.OnMalformedRecord(type);
                    return;
                }
                uint rawSize = BinaryPrimitives.ReadUInt32LittleEndian(record.Slice(SampleFixedSize - 4));
                if (rawSize > (uint)(record.Length - SampleFixedSize))
                {
                    handler.OnMalformedRecord(type);
                    return;
                }
                int pid = BinaryPrimitives.ReadInt32LittleEndian(record.Slice(HeaderSize));
                int tid = BinaryPrimitives.ReadInt32LittleEndian(record.Slice(HeaderSize + 4));
                ulong time = BinaryPrimitives.ReadUInt64LittleEndian(record.Slice(HeaderSize + 8));
                int cpu = BinaryPrimitives.ReadInt32LittleEndian(record.Slice(HeaderSize + 16));
                handler.OnSample(time, pid, tid, cpu, record.Slice(SampleFixedSize, (int)rawSize));
                return;
            case 2: // PERF_RECORD_LOST: u64 id, u64 lost
                if (record.Length < HeaderSize + 16)
                    handler.OnMalformedRecord(type);
                else
                    handler.OnLost(BinaryPrimitives.ReadUInt64LittleEndian(record.Slice(HeaderSize + 8)));
                return;
            case 13: // PERF_RECORD_LOST_SAMPLES: u64 lost
                if (record.Length < HeaderSize + 8)
                    handler.OnMalformedRecord(type);
                else
                    handler.OnLost(BinaryPrimitives.ReadUInt64LittleEndian(record.Slice(HeaderSize)));
                return;
            default:
                return; // other record types (none are asked for) are skipped whole
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ulong ReadWrapped64(ReadOnlySpan<byte> data, int offset)
    {
        Span<byte> bytes = stackalloc byte[HeaderSize];
        int first = data.Length - offset;
        data.Slice(offset, first).CopyTo(bytes);
        data.Slice(0, HeaderSize - first).CopyTo(bytes.Slice(first));
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ReadOnlySpan<byte> CopyWrapped(ReadOnlySpan<byte> data, int offset, int size, Span<byte> scratch)
    {
        int first = data.Length - offset;
        data.Slice(offset, first).CopyTo(scratch);
        data.Slice(0, size - first).CopyTo(scratch.Slice(first));
        return scratch.Slice(0, size);
    }
}
