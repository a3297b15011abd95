using System.Buffers;
using System.Text;
using KvmObserve.Agent.Hosting;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Exposition;
using KvmObserve.Sources.Tracefs;
using KvmObserve.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using OpenTelemetry.Exporter;

namespace KvmObserve.Tests;

/// <summary>
/// The agent's OTLP export (the OpenTelemetry SDK and its OTLP exporter, as `run` sets them up) against a receiver on
/// loopback, over gRPC and http/protobuf: the decoded request carries the resource and, for every sample /metrics
/// shows at the same moment, a data point with the same value and labels.
/// </summary>
[Collection("otlp")] // one MeterProvider at a time: each listens to every meter named KvmObserve in the process
public sealed class OtlpExportTests : IDisposable
{
    private const int Vm = 700, Vcpu0 = 701, Vcpu1 = 702;
    private readonly FakeProc _proc = new();
    private readonly ExpositionContext _context;

    public OtlpExportTests()
    {
        _proc.Vm(Vm, "qemu-system-x86", "qemu-system-x86_64\0-name\0guest=db\0", threads: [(Vm, "qemu-system-x86"), (Vcpu0, "CPU 0/KVM"), (Vcpu1, "CPU 1/KVM")]);
        var formats = new Dictionary<string, EventFormat>
        {
            ["kvm:kvm_pio"] = Fixture.Format("kvm_pio.format"),
            ["kvm:kvm_vcpu_wakeup"] = Fixture.Format("kvm_vcpu_wakeup.format"),
        };
        var decoders = new KvmEventDecoders(tp => formats.GetValueOrDefault(tp.FullName));
        var registry = new VmRegistry(_proc.Root);
        var aggregator = new Aggregator(1, registry);
        registry.Scan();
        // Real records through the tracefs page path: 300 PIO writes to 0x3f8 and 200 reads of 0x60, 40 halts.
        var records = new List<(ulong Ts, byte[] Payload)>();
        ulong ts = 1_000;
        for (int i = 0; i < 500; i++)
            records.Add((ts += 100, PayloadEncoder.Encode(formats["kvm:kvm_pio"], i % 2 == 0 ? Vcpu0 : Vcpu1,
                ("rw", i < 300 ? 1UL : 0UL), ("port", i < 300 ? 0x3f8UL : 0x60UL), ("size", 1), ("count", 1))));
        for (int i = 0; i < 40; i++)
            records.Add((ts += 100, PayloadEncoder.Encode(formats["kvm:kvm_vcpu_wakeup"], Vcpu0, ("ns", 5_000UL * (ulong)(i + 1)), ("waited", (ulong)(i % 2)), ("valid", 1))));
        var pages = new List<byte>();
        foreach ((ulong Ts, byte[] Payload)[] chunk in records.Chunk(100))
        {
            var page = new PageEncoder(Fixture.PageHeader, chunk[0].Ts);
            foreach ((ulong t, byte[] payload) in chunk)
                page.Record(t, payload);
            pages.AddRange(page.Build(null));
        }
        var handler = new RecordHandler(decoders, aggregator.Shards[0]);
        var buffer = new ReadOnlySequence<byte>(pages.ToArray());
        PageStreamParser.ParsePages(ref buffer, Fixture.PageHeader, ref handler);
        _context = new ExpositionContext
        {
            Aggregator = aggregator,
            SourceName = "tracefs",
            Tracepoints = [new TracepointRow("kvm:kvm_pio", true, true)],
            ExitReasons = decoders.ExitReasons,
            UserspaceExitReasons = decoders.UserspaceExitReasons,
            Schedstat = new SchedstatCollector(registry, _proc.Root),
        };
    }

    public void Dispose() => _proc.Dispose();

    private string Render()
    {
        var buffer = new ArrayBufferWriter<byte>();
        MetricsRenderer.Render(buffer, _context);
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    [Theory]
    [InlineData(OtlpOptions.Grpc)]
    [InlineData(OtlpOptions.HttpProtobuf)]
    public async Task The_receiver_decodes_what_metrics_shows_with_the_resource(string protocol)
    {
        await using OtlpReceiver receiver = await OtlpReceiver.StartAsync();
        OtlpExportProtocol p = OtlpOptions.ParseProtocol(protocol);
        var endpoint = new Uri(p == OtlpExportProtocol.Grpc ? $"http://127.0.0.1:{receiver.GrpcPort}" : $"http://127.0.0.1:{receiver.HttpPort}/v1/metrics");
        var service = new OtlpService(new OtlpOptions(endpoint, p, "x-tenant=kvm", TimeSpan.FromMilliseconds(300), TimeSpan.FromSeconds(5)),
            () => _context, NullLogger<OtlpService>.Instance);
        await service.StartAsync(CancellationToken.None);
        OtlpExport export = receiver.WaitFor(e => e.Points.Any(pt => pt.Metric == "kvm.pio.count"), TimeSpan.FromSeconds(20));
        Metrics scrape = Metrics.Parse(Render());
        await service.StopAsync(CancellationToken.None);

        Assert.Equal(protocol, export.Protocol);
        Assert.Equal("kvmobserve", export.Resource["service.name"]);
        Assert.Equal(OtlpService.Version, export.Resource["service.version"]);
        Assert.Equal(Environment.MachineName, export.Resource["host.name"]);
        if (File.Exists("/etc/machine-id"))
            Assert.Equal(File.ReadAllText("/etc/machine-id").Trim(), export.Resource["host.id"]);
        Assert.Equal(OtelInstruments.MeterName, export.Scope);

        // Every sample of /metrics (histogram buckets and the scrape's own duration aside) is a data point with the
        // same labels and value.
        var byName = OtelNames.Families.ToDictionary(f => f.Name);
        int compared = 0;
        foreach ((string name, Dictionary<string, string> labels, double value) in scrape.Samples)
        {
            if (name.EndsWith("_bucket", StringComparison.Ordinal) || name is "kvmobserve_scrape_duration_seconds"
                or "kvmobserve_cpu_seconds_total" or "kvmobserve_resident_memory_bytes" or "kvmobserve_gc_heap_bytes"
                or "kvmobserve_gc_collections_total" or "kvmobserve_allocated_bytes_total" or "kvmobserve_collector_duration_seconds"
                or "process_cpu_seconds_total" or "process_resident_memory_bytes" or "process_virtual_memory_bytes" or "process_open_fds")
                continue; // these change between the scrape and the export: present, below
            (string family, string suffix) = byName.ContainsKey(name) ? (name, "")
                : name.EndsWith("_count", StringComparison.Ordinal) ? (name[..^6], ".count") : (name[..^4], ".sum");
            (string otel, _) = OtelNames.Of(family, byName[family].Type);
            OtlpPoint point = Assert.Single(export.Points, pt => pt.Metric == otel + suffix
                && pt.Attributes.Count == labels.Count && labels.All(l => pt.Attributes.GetValueOrDefault(l.Key) == l.Value));
            Assert.Equal(value, point.Value, 9);
            Assert.Equal(byName[family].Type is "counter" or "histogram", point.Monotonic);
            compared++;
        }
        Assert.True(scrape.Sum("kvm_pio_total", ("vm", "db"), ("port", "0x3f8"), ("direction", "out")) == 300, Render());
        Assert.Equal(40, scrape.Sum("kvm_halt_seconds_count", ("vm", "db")));
        Assert.True(compared > 20, $"only {compared} samples compared");
        Assert.Contains(export.Points, pt => pt.Metric == "kvmobserve.cpu" && pt.Value > 0 && pt.Monotonic);
        Assert.Contains(export.Points, pt => pt.Metric == "kvmobserve.resident_memory_bytes" && pt.Value > 1 << 20);
        Assert.Contains(export.Points, pt => pt.Metric == "process.cpu" && pt.Value > 0 && pt.Monotonic);
        Assert.Contains(export.Points, pt => pt.Metric == "process.open_fds" && pt.Value > 0 && !pt.Monotonic);
        Assert.Contains(export.Points, pt => pt.Metric == "kvmobserve.build_info" && pt.Attributes.GetValueOrDefault("revision") is { Length: > 0 });
        Assert.Contains(export.Points, pt => pt.Metric == "kvmobserve.gc_heap_bytes" && pt.Value > 0);
        Assert.Contains(export.Points, pt => pt.Metric == "kvmobserve.allocated_bytes" && pt.Value > 0 && pt.Monotonic);
        OtlpPoint pio = export.Points.Single(pt => pt.Metric == "kvm.pio.count" && pt.Attributes["port"] == "0x60");
        Assert.Equal(200, pio.Value);
        Assert.True(pio.IsInt);
        Assert.Equal("s", export.Points.First(pt => pt.Metric == "kvm.halt.duration.sum").Unit);
    }

    [Fact]
    public void Every_family_has_its_own_otel_name()
    {
        var names = OtelNames.Families.Select(f => OtelNames.Of(f.Name, f.Type).Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.Contains("kvm.exit.count", names);
        Assert.Contains("kvmobserve.events_lost", names);
        Assert.All(names, n => Assert.Matches("^[a-z][a-z0-9_.]*$", n));
    }
}
