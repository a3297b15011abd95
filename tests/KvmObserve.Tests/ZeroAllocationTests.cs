using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Decoding.RingBuffer;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Tests;

/// <summary>
/// The hot path allocates nothing: one million encoded records of an Intel/AMD-like mix (kvm_exit/kvm_entry pairs from
/// 8 vCPU threads, userspace exits, PIO, MSR) decoded and aggregated, as a tracefs reader does per page, after one warm-up
/// pass that creates the series and thread states.
/// </summary>
public sealed class ZeroAllocationTests
{
    [Fact]
    public void A_million_records_decoded_and_aggregated_allocate_zero_bytes()
    {
        var formats = new Dictionary<string, EventFormat>
        {
            ["kvm:kvm_exit"] = Fixture.Format("kvm_exit.format"),
            ["kvm:kvm_entry"] = Fixture.Format("kvm_entry.format"),
            ["kvm:kvm_userspace_exit"] = Fixture.Format("kvm_userspace_exit.format"),
            ["kvm:kvm_pio"] = Fixture.Format("kvm_pio.format"),
            ["kvm:kvm_msr"] = Fixture.Format("kvm_msr.format"),
        };
        var decoders = new KvmEventDecoders(tp => formats.GetValueOrDefault(tp.FullName));
        var shard = new Shard(0, 20_000);
        var random = new Random(7);
        uint[] reasons = [1, 12, 30, 31, 32, 48, 49, 52];
        PageHeaderFormat layout = Fixture.PageHeader;
        var pages = new List<byte[]>();
        ulong ts = 1_000_000;
        int events = 0;
        for (int p = 0; p < 64; p++)
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

        int Pass()
        {
            var handler = new RecordHandler(decoders, shard);
            int n = 0;
            foreach (byte[] page in pages)
                n += RingBufferPageReader.ReadPage(page, layout, ref handler);
            return n;
        }

        Assert.Equal(events, Pass()); // warm-up: series entries, thread slots, JIT
        int passes = (1_000_000 + events - 1) / events;
        long before = GC.GetAllocatedBytesForCurrentThread();
        long decoded = 0;
        for (int i = 0; i < passes; i++)
            decoded += Pass();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(decoded >= 1_000_000, $"only {decoded} records");
        Assert.Equal(0, allocated);
        Assert.Equal(0, Enum.GetValues<KvmEventKind>().Sum(k => shard.DecodeErrorsOf(k)));
        Assert.Equal(0, shard.CorruptPages);
        Assert.True(shard.EventsOf(KvmEventKind.Exit) > 400_000);
    }
}
