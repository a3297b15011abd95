using System.Buffers.Binary;

namespace KvmObserve.Tests;

/// <summary>
/// Test-side writer of a perf mmap ring's data area, by the rules of kernel/events/ring_buffer.c: records are 8-byte
/// aligned, head runs freely, a record that reaches the end continues at offset 0. Samples carry
/// TID | TIME | CPU | RAW, as the sampling source asks.
/// </summary>
internal sealed class PerfRingEncoder(int size, ulong start)
{
    public byte[] Data { get; } = new byte[size];
    public ulong Tail { get; } = start;
    public ulong Head { get; private set; } = start;

    public PerfRingEncoder Sample(ulong time, int tid, int cpu, ReadOnlySpan<byte> raw, int pid = -1)
    {
        int rawSize = ((raw.Length + 4 + 7) & ~7) - 4; // raw_size + 4 is a multiple of 8
        var record = new byte[8 + 8 + 8 + 8 + 4 + rawSize];
        Header(record, 9, record.Length);
        BinaryPrimitives.WriteInt32LittleEndian(record.AsSpan(8), pid < 0 ? tid : pid);
        BinaryPrimitives.WriteInt32LittleEndian(record.AsSpan(12), tid);
        BinaryPrimitives.WriteUInt64LittleEndian(record.AsSpan(16), time);
        BinaryPrimitives.WriteInt32LittleEndian(record.AsSpan(24), cpu);
        BinaryPrimitives.WriteInt32LittleEndian(record.AsSpan(32), rawSize);
        raw.CopyTo(record.AsSpan(36));
        return Put(record);
    }

    public PerfRingEncoder Lost(ulong count)
    {
        var record = new byte[24];
        Header(record, 2, record.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(record.AsSpan(8), 77); // id
        BinaryPrimitives.WriteUInt64LittleEndian(record.AsSpan(16), count);
        return Put(record);
    }

    /// <summary>Any bytes as one record (for malformed bodies and unknown types).</summary>
    public PerfRingEncoder Raw(uint type, int size, int declaredSize = -1)
    {
        var record = new byte[size];
        Header(record, type, declaredSize < 0 ? size : declaredSize);
        return Put(record);
    }

    private static void Header(byte[] record, uint type, int size)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(record, type);
        BinaryPrimitives.WriteUInt16LittleEndian(record.AsSpan(6), (ushort)size);
    }

    private PerfRingEncoder Put(byte[] record)
    {
        if (Head - Tail + (ulong)record.Length > (ulong)Data.Length)
            throw new InvalidOperationException("ring full");
        for (int i = 0; i < record.Length; i++)
            Data[(int)((Head + (ulong)i) % (ulong)Data.Length)] = record[i];
        Head += (ulong)record.Length;
        return this;
    }
}
