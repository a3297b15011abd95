using System.Buffers;
using BenchmarkDotNet.Attributes;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Exposition;
using KvmObserve.Tests;

namespace KvmObserve.Benchmarks;

/// <summary>
/// One /metrics scrape of a host with 10,000 counter series in the kvm families: 250 VMs of 2 vCPUs, each vCPU with
/// 20 exit reasons (kvm_exits_total{vm,vcpu,reason}), plus the agent's own metrics. What a scrape costs the agent,
/// fold of the shards included.
/// </summary>
[MemoryDiagnoser]
public class RenderBenchmark
{
    public const int Vms = 250, Vcpus = 2, Reasons = 20;

    private ExpositionContext _context = null!;
    private readonly ArrayBufferWriter<byte> _buffer = new(4 << 20);

    [GlobalSetup]
    public void Setup()
    {
        string Dir(string f) => Path.Combine(AppContext.BaseDirectory, "Fixtures", f);
        Dictionary<string, EventFormat> formats = EventMix.Formats(f => EventFormatParser.Parse("kvm", File.ReadAllText(Dir(f))));
        var decoders = new KvmEventDecoders(tp => formats.GetValueOrDefault(tp.FullName));
        VmRegistry registry = VmRegistry.WithoutProcfs();
        var aggregator = new Aggregator(2, registry, new AggregatorOptions { FamilyLimit = 20_000 });
        for (int vm = 0; vm < Vms; vm++)
        {
            int pid = 100_000 + vm * 10;
            for (int vcpu = 0; vcpu < Vcpus; vcpu++)
            {
                int tid = pid + 1 + vcpu;
                registry.Seed(tid, pid, $"vm-{vm}", "qemu", "", vcpu);
                Shard shard = aggregator.Shards[vcpu % aggregator.Shards.Count];
                for (uint reason = 0; reason < Reasons; reason++)
                    shard.Series.Counter(new SeriesKey(tid, vcpu, MetricFamily.Exits, reason * 2 + 1, 1)) += 1000 + reason;
            }
        }
        _context = new ExpositionContext
        {
            Aggregator = aggregator,
            SourceName = "tracefs",
            Tracepoints = [],
            ExitReasons = decoders.ExitReasons,
            UserspaceExitReasons = decoders.UserspaceExitReasons,
        };
        Render();
        string text = System.Text.Encoding.UTF8.GetString(_buffer.WrittenSpan);
        int series = text.Split('\n').Count(l => l.StartsWith("kvm_exits_total{", StringComparison.Ordinal));
        Console.WriteLine($"// {series} kvm_exits_total series, {_buffer.WrittenCount} bytes per scrape");
        if (series != Vms * Vcpus * Reasons)
            throw new InvalidOperationException($"expected {Vms * Vcpus * Reasons} series, rendered {series}");
    }

    [Benchmark]
    public int Render()
    {
        _buffer.ResetWrittenCount();
        MetricsRenderer.Render(_buffer, _context);
        return _buffer.WrittenCount;
    }
}
