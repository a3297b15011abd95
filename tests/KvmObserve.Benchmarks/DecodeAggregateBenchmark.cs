using BenchmarkDotNet.Attributes;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Decoding.RingBuffer;
using KvmObserve.Sources.Tracefs;
using KvmObserve.Tests;

namespace KvmObserve.Benchmarks;

/// <summary>Decode + aggregate over encoded pages with an Intel/AMD-like mix: kvm_exit/kvm_entry pairs dominate,
/// with some userspace exits, pio and msr records, from 8 vCPU threads. Reports ns per event and bytes per event.</summary>
[MemoryDiagnoser]
public class DecodeAggregateBenchmark
{
    private const int Pages = 256;
    private byte[][] _pages = [];
    private KvmEventDecoders _decoders = null!;
    private Shard _shard = null!;
    private PageHeaderFormat _layout;

    public int EventsPerIteration { get; private set; }

    [GlobalSetup]
    public void Setup()
    {
        string Dir(string f) => Path.Combine(AppContext.BaseDirectory, "Fixtures", f);
        var formats = new Dictionary<string, EventFormat>
        {
            ["kvm:kvm_exit"] = EventFormatParser.Parse("kvm", File.ReadAllText(Dir("kvm_exit.format"))),
            ["kvm:kvm_entry"] = EventFormatParser.Parse("kvm", File.ReadAllText(Dir("kvm_entry.format"))),
            ["kvm:kvm_userspace_exit"] = EventFormatParser.Parse("kvm", File.ReadAllText(Dir("kvm_userspace_exit.format"))),
            ["kvm:kvm_pio"] = EventFormatParser.Parse("kvm", File.ReadAllText(Dir("kvm_pio.format"))),
            ["kvm:kvm_msr"] = EventFormatParser.Parse("kvm", File.ReadAllText(Dir("kvm_msr.format"))),
        };
        _decoders = new KvmEventDecoders(tp => formats.GetValueOrDefault(tp.FullName));
        _layout = PageHeaderFormat.Parse(File.ReadAllText(Dir("header_page")));
        _shard = new Shard(0, 20_000);
        var random = new Random(7);
        uint[] reasons = [1, 12, 30, 31, 32, 48, 49, 52];
        var pages = new List<byte[]>();
        ulong ts = 1_000_000;
        int events = 0;
        for (int p = 0; p < Pages; p++)
        {
            var page = new PageEncoder(_layout, ts);
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
        _pages = pages.ToArray();
        EventsPerIteration = events;
        Console.WriteLine($"// {events} events in {Pages} pages ({events / (double)Pages:F1} per page)");
    }

    [Benchmark(OperationsPerInvoke = 1)]
    public int DecodeAndAggregatePages()
    {
        var handler = new RecordHandler(_decoders, _shard);
        int records = 0;
        foreach (byte[] page in _pages)
            records += RingBufferPageReader.ReadPage(page, _layout, ref handler);
        return records;
    }
}
