using KvmObserve.Decoding.Format;
using KvmObserve.Decoding.RingBuffer;

namespace KvmObserve.Tests;

/// <summary>
/// Encoded ring-buffer pages with an Intel/AMD-like event mix from 8 vCPU threads: 45% kvm_exit, 45% kvm_entry, then
/// userspace exits, PIO and MSR records. Shared by the zero-allocation test and the decode benchmark, so both measure
/// the same thing.
/// </summary>
public static class EventMix
{
    /// <summary>The formats the mix needs, by tracepoint name, read by <paramref name="load"/> (file name to format).</summary>
    public static Dictionary<string, EventFormat> Formats(Func<string, EventFormat> load) => new()
    {
        ["kvm:kvm_exit"] = load("kvm_exit.format"),
        ["kvm:kvm_entry"] = load("kvm_entry.format"),
        ["kvm:kvm_userspace_exit"] = load("kvm_userspace_exit.format"),
        ["kvm:kvm_pio"] = load("kvm_pio.format"),
        ["kvm:kvm_msr"] = load("kvm_msr.format"),
    };

    /// <summary>Moves every page <paramref name="by"/> ns later (their header timestamps; records are deltas from
    /// them): the same pages read again are new records, as a reader's next drain would find. Returns the last record's
    /// time as moved, for the reader's "caught up to here".</summary>
    public static void Shift(byte[][] pages, PageHeaderFormat layout, ulong by)
    {
        foreach (byte[] page in pages)
        {
            Span<byte> stamp = page.AsSpan(layout.TimestampOffset, 8);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(stamp,
                System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(stamp) + by);
        }
    }

    /// <summary><paramref name="count"/> full pages (seeded, so always the same) and the records in them.</summary>
    /// <summary>Time from the first page's start to after the last record, as <see cref="Pages"/> makes them.</summary>
    public static ulong Span(byte[][] pages, PageHeaderFormat layout) =>
        System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(pages[^1].AsSpan(layout.TimestampOffset)) + 1_000_000
        - System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(pages[0].AsSpan(layout.TimestampOffset));

    public static (byte[][] Pages, int Events) Pages(IReadOnlyDictionary<string, EventFormat> formats, PageHeaderFormat layout, int count)
    {
        var random = new Random(7);
        uint[] reasons = [1, 12, 30, 31, 32, 48, 49, 52];
        var pages = new List<byte[]>();
        ulong ts = 1_000_000;
        int events = 0;
        for (int p = 0; p < count; p++)
        {
            var page = new PageEncoder(layout, ts);
            while (page.Free > 200)
            {
                int tid = 1000 + random.Next(8);
                int roll = random.Next(100);
                byte[] payload = roll switch
                {
                    < 45 => PayloadEncoder.Encode(formats["kvm:kvm_exit"], tid, ("exit_reason", reasons[random.Next(reasons.Length)]), ("isa", 1), ("vcpu_id", (ulong)(tid - 1000))),
                    < 90 => PayloadEncoder.Encode(formats["kvm:kvm_entry"], tid, ("vcpu_id", (ulong)(tid - 1000))),
                    < 94 => PayloadEncoder.Encode(formats["kvm:kvm_userspace_exit"], tid, ("reason", 2)),
                    < 97 => PayloadEncoder.Encode(formats["kvm:kvm_pio"], tid, ("rw", 1), ("port", 0x3f8 + (ulong)random.Next(4))),
                    _ => PayloadEncoder.Encode(formats["kvm:kvm_msr"], tid, ("ecx", 0x10 + (ulong)random.Next(4))),
                };
                ts += (ulong)random.Next(50, 500);
                page.Record(ts, payload);
                events++;
            }
            pages.Add(page.Build());
        }
        return (pages.ToArray(), events);
    }
}
