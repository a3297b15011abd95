using System.Buffers.Binary;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Tests;

// Shared with the benchmarks (linked there): one encoder for tests and measurements.

/// <summary>
/// Test-side encoder of ring-buffer pages, written from kernel/trace/ring_buffer.c's writer rules: small records get
/// type_len = ceil(len/4), larger ones type_len 0 with array[0] = len + 4; deltas over 27 bits need a time extend.
/// </summary>
internal sealed class PageEncoder(PageHeaderFormat layout, ulong pageStartStamp)
{
    private readonly byte[] _data = new byte[layout.DataSize];
    private int _length;
    private readonly ulong _pageStamp = pageStartStamp;
    private ulong _lastStamp = pageStartStamp;

    public int Free => _data.Length - _length;

    public PageEncoder Record(ulong timestamp, ReadOnlySpan<byte> payload)
    {
        ulong delta = timestamp - _lastStamp;
        if (delta >= 1UL << 27)
        {
            TimeExtend(delta);
            delta = 0;
        }
        _lastStamp = timestamp;
        int padded = (payload.Length + 3) & ~3;
        if (padded <= 28 * 4 && padded > 0)
        {
            Header((uint)(padded / 4), (uint)delta);
            payload.CopyTo(_data.AsSpan(_length));
            _length += padded;
        }
        else
        {
            Header(0, (uint)delta);
            Word((uint)(padded + 4));
            payload.CopyTo(_data.AsSpan(_length));
            _length += padded;
        }
        return this;
    }

    public PageEncoder TimeExtend(ulong delta)
    {
        Header(EventHeaderFormat.TimeExtendType, (uint)(delta & ((1 << 27) - 1)));
        Word((uint)(delta >> 27));
        return this;
    }

    /// <summary>An absolute stamp: 59 bits, the top 5 left to the reader to restore from the page stamp.</summary>
    public PageEncoder AbsoluteStamp(ulong timestamp)
    {
        ulong low = timestamp & ((1UL << 59) - 1);
        Header(EventHeaderFormat.TimeStampType, (uint)(low & ((1 << 27) - 1)));
        Word((uint)(low >> 27));
        _lastStamp = timestamp;
        return this;
    }

    /// <summary>A discarded record: padding with a non-zero delta and a length.</summary>
    public PageEncoder Padding(int bytes)
    {
        Header(EventHeaderFormat.PaddingType, 1);
        Word((uint)bytes);
        _length += bytes - 4;
        return this;
    }

    private void Header(uint typeLen, uint delta) => Word(typeLen | (delta << 5));

    private void Word(uint w)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_data.AsSpan(_length), w);
        _length += 4;
    }

    /// <summary>The page; commit carries the flags the kernel adds (local_add of RB_MISSED_* sign-extends).</summary>
    public byte[] Build(ulong? missedEvents = null, bool missedStored = true)
    {
        byte[] page = new byte[layout.PageSize];
        BinaryPrimitives.WriteUInt64LittleEndian(page.AsSpan(layout.TimestampOffset), _pageStamp);
        long commit = _length;
        _data.CopyTo(page, layout.DataOffset);
        if (missedEvents is ulong missed)
        {
            if (missedStored)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(page.AsSpan(layout.DataOffset + _length), missed);
                commit += 1L << 30;
            }
            commit += int.MinValue; // RB_MISSED_EVENTS is (1 << 31) as an int: adding it sign-extends
        }
        BinaryPrimitives.WriteInt64LittleEndian(page.AsSpan(layout.CommitOffset), commit);
        return page;
    }
}

/// <summary>Encodes tracepoint payloads from a format: common fields plus named values at the format's offsets.</summary>
internal static class PayloadEncoder
{
    public static byte[] Encode(EventFormat format, int tid, params (string Field, ulong Value)[] values)
    {
        int size = format.Fields.Max(f => f.End);
        byte[] payload = new byte[size];
        Write(payload, format, "common_type", (ulong)format.Id);
        Write(payload, format, "common_pid", (ulong)tid);
        foreach ((string field, ulong value) in values)
            Write(payload, format, field, value);
        return payload;
    }

    private static void Write(byte[] payload, EventFormat format, string name, ulong value)
    {
        FieldFormat f = format.Find(name) ?? throw new ArgumentException($"{format.Name} has no {name}");
        Span<byte> at = payload.AsSpan(f.Offset);
        switch (f.Size)
        {
            case 1: at[0] = (byte)value; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(at, (ushort)value); break;
            case 4: BinaryPrimitives.WriteUInt32LittleEndian(at, (uint)value); break;
            case 8: BinaryPrimitives.WriteUInt64LittleEndian(at, value); break;
            default: throw new ArgumentException($"{name}: size {f.Size}");
        }
    }
}
