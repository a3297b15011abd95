using System.Buffers.Binary;

namespace KvmObserve.Aggregation.Recording;

/// <summary>
/// The flight recorder's memory of one CPU's most recent raw records: a ring of fixed chunks, the oldest chunk reused
/// whole when the ring is full. Only the CPU's reader appends, under its shard's <see cref="Shard.Gate"/>; whoever
/// copies records out takes that lock too. One copy per record, no allocation.
/// <code>
/// chunk:  | record | record | ... |      record: | u64 timestamp | u32 length | payload[length] | pad to 4 |
/// </code>
/// </summary>
public sealed class RecordLog
{
    public const int ChunkSize = 64 * 1024;
    private const int RecordHeader = 12;

    private readonly byte[][] _chunks;
    private readonly int[] _used;
    private int _current;
    private long _reused;

    /// <param name="bytes">Memory for this CPU; whole chunks, at least two.</param>
    public RecordLog(int bytes)
    {
        int count = Math.Max(2, bytes / ChunkSize);
        _chunks = new byte[count][];
        for (int i = 0; i < count; i++)
            _chunks[i] = new byte[ChunkSize];
        _used = new int[count];
    }

    /// <summary>Chunks overwritten so far: records older than the oldest chunk are gone.</summary>
    public long Reused => _reused;

    public void Append(ulong timestamp, ReadOnlySpan<byte> payload)
    {
        int size = RecordHeader + ((payload.Length + 3) & ~3);
        if (size > ChunkSize)
            return; // a tracepoint record is at most a page
        if (_used[_current] + size > ChunkSize)
        {
            _current = (_current + 1) % _chunks.Length;
            if (_used[_current] != 0)
                _reused++;
            _used[_current] = 0;
        }
        Span<byte> at = _chunks[_current].AsSpan(_used[_current], size);
        BinaryPrimitives.WriteUInt64LittleEndian(at, timestamp);
        BinaryPrimitives.WriteInt32LittleEndian(at[8..], payload.Length);
        payload.CopyTo(at[RecordHeader..]);
        _used[_current] += size;
    }

    /// <summary>Calls <paramref name="visit"/> with each kept record from <paramref name="from"/> to
    /// <paramref name="to"/> (inclusive), oldest chunk first. The caller holds the shard's gate.</summary>
    public void CopyOut(ulong from, ulong to, Action<ulong, ReadOnlySpan<byte>> visit)
    {
        for (int n = 1; n <= _chunks.Length; n++)
        {
            int c = (_current + n) % _chunks.Length;
            ReadOnlySpan<byte> chunk = _chunks[c].AsSpan(0, _used[c]);
            while (chunk.Length >= RecordHeader)
            {
                ulong ts = BinaryPrimitives.ReadUInt64LittleEndian(chunk);
                int length = BinaryPrimitives.ReadInt32LittleEndian(chunk[8..]);
                if (ts >= from && ts <= to)
                    visit(ts, chunk.Slice(RecordHeader, length));
                chunk = chunk[(RecordHeader + ((length + 3) & ~3))..];
            }
        }
    }
}
