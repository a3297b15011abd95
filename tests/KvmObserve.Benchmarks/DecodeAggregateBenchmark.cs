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
    private ulong _span, _end;

    public int EventsPerIteration { get; private set; }

    [GlobalSetup]
    public void Setup()
    {
        string Dir(string f) => Path.Combine(AppContext.BaseDirectory, "Fixtures", f);
        Dictionary<string, EventFormat> formats = EventMix.Formats(f => EventFormatParser.Parse("kvm", File.ReadAllText(Dir(f))));
        _decoders = new KvmEventDecoders(tp => formats.GetValueOrDefault(tp.FullName));
        _layout = PageHeaderFormat.Parse(File.ReadAllText(Dir("header_page")));
        _shard = new Shard(0, 20_000);
        (_pages, int events) = EventMix.Pages(formats, _layout, Pages);
        EventsPerIteration = events;
        _span = EventMix.Span(_pages, _layout);
        Console.WriteLine($"// {events} events in {Pages} pages ({events / (double)Pages:F1} per page)");
    }

    [Benchmark(OperationsPerInvoke = 1)]
    public int DecodeAndAggregatePages()
    {
        // A reader's drain: new records each time (the pages moved later), then "caught up", which closes the pairs.
        EventMix.Shift(_pages, _layout, _span);
        _end += _span;
        var handler = new RecordHandler(_decoders, _shard);
        int records = 0;
        foreach (byte[] page in _pages)
            records += RingBufferPageReader.ReadPage(page, _layout, ref handler);
        _shard.States.CaughtUp(0, _end + 1_000_000);
        return records;
    }
}
