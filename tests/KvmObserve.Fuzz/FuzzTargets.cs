using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using KvmObserve.Agent.Hosting;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Decoding.Perf;
using KvmObserve.Decoding.RingBuffer;
using KvmObserve.Exposition;
using KvmObserve.Sources.Perf;
using KvmObserve.Sources.Recording;
using KvmObserve.Sources.Tracefs;
using KvmObserve.Tests;

namespace KvmObserve.Fuzz;

/// <summary>One reader of bytes from outside the agent, driven as the agent drives it. <see cref="Run"/> either
/// returns, or throws the one error the reader documents for bad input (<see cref="IsRejection"/>); anything else
/// is a defect.</summary>
public abstract class FuzzTarget
{
    public abstract string Name { get; }

    /// <summary>Real inputs (from this project's kernels' format files and encoders) to mutate.</summary>
    public abstract IReadOnlyList<byte[]> Seeds { get; }

    /// <summary>Words the reader keys on, for text inputs.</summary>
    public virtual IReadOnlyList<string> Tokens => [];

    public abstract void Run(byte[] input);

    public virtual bool IsRejection(Exception e) => false;

    public static IReadOnlyList<FuzzTarget> All() =>
    [
        new RingPageTarget(), new PerfRingTarget(), new RecordingTarget(), new FormatFileTarget(), new PrintFormatTarget(),
        new HeaderFormatTarget(), new WebConfigTarget(), new JsonConfigTarget(),
    ];

    protected static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);

    protected static string Text(byte[] input) => Encoding.UTF8.GetString(input);
}

/// <summary>The decoders, an aggregator with named VM threads, and /metrics: the pipeline every record reader feeds.</summary>
internal sealed class Pipeline
{
    public static readonly string[] FormatFiles =
        Directory.GetFiles(Path.Combine(AppContext.BaseDirectory, "Fixtures"), "*.format").Order(StringComparer.Ordinal).ToArray();

    public static Dictionary<string, EventFormat> Formats { get; } = EventMix.Formats(name => Fixture.Format(name));

    public KvmEventDecoders Decoders { get; set; }
    public Aggregator Aggregator { get; private set; } = null!;
    private readonly ArrayBufferWriter<byte> _output = new(1 << 16);
    private int _uses;

    public Pipeline(KvmEventDecoders? decoders = null)
    {
        Decoders = decoders ?? new KvmEventDecoders(tp => Formats.GetValueOrDefault(tp.FullName));
        Reset();
    }

    /// <summary>Every few thousand inputs a fresh aggregator: mutated thread ids would otherwise fill its tables, and
    /// a full table is a path of its own that the first inputs must reach too.</summary>
    public void Used(int resetEvery = 4096, int renderEvery = 256)
    {
        _uses++;
        if (_uses % renderEvery == 0)
            Render();
        if (_uses % resetEvery == 0)
            Reset();
    }

    public void Render()
    {
        _output.Clear();
        MetricsRenderer.Render(_output, new ExpositionContext
        {
            Aggregator = Aggregator, SourceName = "fuzz", Tracepoints = [], ExitReasons = Decoders.ExitReasons,
            UserspaceExitReasons = Decoders.UserspaceExitReasons,
        });
    }

    private void Reset()
    {
        VmRegistry registry = VmRegistry.WithoutProcfs();
        for (int t = 0; t < 8; t++)
            registry.Seed(1000 + t, 999, "vm-" + (t / 4), "qemu-system-x86", $"0000000{t / 4}-0000-0000-0000-000000000000", t % 4);
        Aggregator = new Aggregator(2, registry);
    }
}

/// <summary>tracefs ring-buffer pages, whole (the pipe reader) and as appended to (the mapped reader page).</summary>
public sealed class RingPageTarget : FuzzTarget
{
    private readonly PageHeaderFormat _layout = Fixture.PageHeader;
    private readonly Pipeline _pipeline = new();

    public override string Name => "ring-pages";

    public override IReadOnlyList<byte[]> Seeds { get; }

    public RingPageTarget()
    {
        var seeds = new List<byte[]>(EventMix.Pages(Pipeline.Formats, _layout, 6).Pages);
        byte[] exit = PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_exit"], 1001, ("exit_reason", 30), ("isa", 1));
        byte[] pio = PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_pio"], 1002, ("rw", 1), ("port", 0x80), ("size", 1));
        seeds.Add(new PageEncoder(_layout, 5_000).Record(5_100, exit).TimeExtend(1UL << 28).Record(0, pio).Padding(24)
            .AbsoluteStamp(9_000_000_000).Record(9_000_000_100, exit).Build(missedEvents: 17));
        seeds.Add(new PageEncoder(_layout, 7_000).Record(7_001, pio).Build(missedEvents: 3, missedStored: false));
        Seeds = seeds;
    }

    public override void Run(byte[] input)
    {
        Shard shard = _pipeline.Aggregator.Shards[input.Length & 1];
        var handler = new RecordHandler(_pipeline.Decoders, shard);
        RingBufferPageReader.ReadPage(input, _layout, ref handler);
        // The mapped reader: the kernel appends to the reader page while it is read, in two steps here.
        int data = Math.Max(0, input.Length - _layout.DataOffset);
        int mid = data == 0 ? 0 : (int)(BinaryPrimitives.ReadUInt32LittleEndian(input.AsSpan(_layout.CommitOffset)) % (uint)(data + 1));
        int position = 0;
        ulong timestamp = 0;
        var appended = new RecordHandler(_pipeline.Decoders, shard, deferLosses: true);
        RingBufferPageReader.ReadAppended(input, _layout, mid, ref position, ref timestamp, ref appended);
        RingBufferPageReader.ReadAppended(input, _layout, data, ref position, ref timestamp, ref appended);
        _pipeline.Used();
    }
}

/// <summary>A perf mmap ring: | u64 tail | u64 head | data area (4 KiB) |, read from tail to head as PerfCpuRing does.</summary>
public sealed class PerfRingTarget : FuzzTarget
{
    private const int DataSize = 4096;
    private readonly Pipeline _pipeline = new();
    private readonly byte[] _data = new byte[DataSize];
    private readonly byte[] _scratch = new byte[PerfRingReader.MaxRecordSize];

    public override string Name => "perf-records";

    public override IReadOnlyList<byte[]> Seeds { get; }

    public PerfRingTarget()
    {
        byte[] exit = PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_exit"], 1001, ("exit_reason", 30), ("isa", 1));
        byte[] entry = PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_entry"], 1001, ("vcpu_id", 1));
        byte[] msr = PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_msr"], 1003, ("ecx", 0x10), ("write", 1));
        var seeds = new List<byte[]>();
        foreach (ulong start in new ulong[] { 0, DataSize - 40, 3 * DataSize + 1000 })
        {
            var ring = new PerfRingEncoder(DataSize, start);
            for (int i = 0; i < 12; i++)
                ring.Sample(1_000_000 + (ulong)i * 1000, 1000 + i % 8, i % 2, (i % 3) switch { 0 => exit, 1 => entry, _ => msr }, 999);
            ring.Lost(5).Raw(3, 32).Raw(9, 24);
            seeds.Add(Frame(ring.Tail, ring.Head, ring.Data));
        }
        Seeds = seeds;
    }

    private static byte[] Frame(ulong tail, ulong head, byte[] data)
    {
        var frame = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(frame, tail);
        BinaryPrimitives.WriteUInt64LittleEndian(frame.AsSpan(8), head);
        data.CopyTo(frame, 16);
        return frame;
    }

    public override void Run(byte[] input)
    {
        ulong tail = input.Length >= 8 ? BinaryPrimitives.ReadUInt64LittleEndian(input) : 0;
        ulong head = input.Length >= 16 ? BinaryPrimitives.ReadUInt64LittleEndian(input.AsSpan(8)) : 0;
        Array.Clear(_data);
        if (input.Length > 16)
            input.AsSpan(16, Math.Min(DataSize, input.Length - 16)).CopyTo(_data);
        var handler = new SampleHandler(_pipeline.Decoders, _pipeline.Aggregator.Shards[(int)(tail & 1)], new LostTally());
        ulong next = PerfRingReader.Read(_data, tail, head, _scratch, ref handler);
        if (tail <= head && (next < tail || next > head))
            throw new InvalidOperationException($"the reader returned tail {next}, outside [{tail}, {head}]");
        _pipeline.Used();
    }
}

/// <summary>A .kvmrec flight recording, read and replayed through the pipeline into /metrics, as `replay` does.</summary>
public sealed class RecordingTarget : FuzzTarget
{
    private readonly ArrayBufferWriter<byte> _output = new(1 << 16);

    public override string Name => "kvmrec";

    public override IReadOnlyList<byte[]> Seeds { get; }

    public override IReadOnlyList<string> Tokens { get; } =
        ["\"", "\\", "{", "}", "[", "]", ",", ":", "null", "-1", "\"formats\"", "\"threads\"", "\"vmm\"", "\"tid\"",
         "\"vcpu\"", "\"version\"", "print fmt: ", "__print_symbolic(", "field:", "offset:", "\\n", "1e400", "\"\\u0000\""];

    public RecordingTarget()
    {
        var header = new RecordingHeader
        {
            Created = "2026-12-06T00:00:00Z", Host = "fuzz", Kernel = "6.18.0", Source = "tracefs", Reason = "exit storm",
            Vm = "vm-0", FromNs = 1_000_000, ToNs = 9_000_000, Records = 0,
        };
        foreach (string file in new[] { "kvm_exit", "kvm_entry", "kvm_pio", "kvm_msr", "kvm_userspace_exit" })
            header.Formats["kvm:" + file] = Fixture.Text(file + ".format");
        for (int t = 0; t < 4; t++)
            header.Threads.Add(new RecordedThread(1000 + t, 999, "vm-0", "qemu-system-x86", "00000000-0000-0000-0000-000000000000", t - 1));
        var records = new List<RecordedRecord>();
        ulong ts = 1_000_000;
        for (int i = 0; i < 40; i++)
        {
            int tid = 1000 + i % 4;
            byte[] payload = (i % 4) switch
            {
                0 => PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_exit"], tid, ("exit_reason", (ulong)(i % 2 == 0 ? 30 : 12)), ("isa", 1)),
                1 => PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_entry"], tid, ("vcpu_id", (ulong)(tid - 1001))),
                2 => PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_pio"], tid, ("port", 0x80), ("size", 1)),
                _ => PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_userspace_exit"], tid, ("reason", 2)),
            };
            records.Add(new RecordedRecord(ts += 2_000, (ushort)(i % 2), FlightRecording.TracepointKind, payload));
            if (i % 10 == 0)
                records.Add(new RecordedRecord(ts, 0, FlightRecording.SchedstatKind,
                    FlightRecording.SchedstatPayload(tid, (ulong)i * 1_000_000, (ulong)i * 10_000)));
        }
        header.Records = records.Count;
        var file1 = new MemoryStream();
        FlightRecording.Write(file1, header, records);
        Seeds = [file1.ToArray()];
    }

    public override void Run(byte[] input)
    {
        (RecordingHeader header, List<RecordedRecord> records) = FlightRecording.Read(input);
        VmRegistry registry = VmRegistry.WithoutProcfs();
        var schedstat = new SchedstatCollector(registry, registry.ProcRoot);
        var aggregator = new Aggregator(2, registry);
        using var source = new ReplaySource(header, records, aggregator, schedstat, speed: 0, loop: false);
        source.RunOnce();
        _output.Clear();
        MetricsRenderer.Render(_output, SourceService.ContextFor(source, aggregator, "replay", "fuzz", schedstat, storms: null));
    }

    public override bool IsRejection(Exception e) => e is FormatException;
}

/// <summary>A tracefs format file, parsed and built into the decoders (as the tracepoint it names, or another), then
/// used to decode records.</summary>
public sealed class FormatFileTarget : FuzzTarget
{
    private readonly Dictionary<string, string> _fixtures =
        Pipeline.FormatFiles.ToDictionary(f => Path.GetFileName(f), File.ReadAllText);
    private readonly List<byte[]> _payloads = new();
    private readonly Pipeline _pipeline = new();

    public override string Name => "format-files";

    public override IReadOnlyList<byte[]> Seeds { get; }

    public override IReadOnlyList<string> Tokens { get; } =
        ["field:", "offset:", "size:", "signed:", ";", "\n", "\t", "name:", "ID:", "format:", "print fmt:", "__print_symbolic(",
         "{", "}", "(", ")", "\"", "\\", ",", "[", "]", "-", "0x", "REC->", "unsigned int ", "__data_loc char[] ", "1UL", "<<", "|"];

    public FormatFileTarget()
    {
        Seeds = _fixtures.Values.Select(Utf8).ToList();
        foreach (EventFormat f in Pipeline.Formats.Values)
            _payloads.Add(PayloadEncoder.Encode(f, 1001));
        _payloads.Add(PayloadEncoder.Encode(Pipeline.Formats["kvm:kvm_exit"], 1001, ("exit_reason", 30), ("isa", 1)));
    }

    public override void Run(byte[] input)
    {
        string text = Text(input);
        string name = NameIn(text);
        Tracepoint chosen = TracepointCatalog.All.FirstOrDefault(tp => tp.Name == name)
            ?? TracepointCatalog.All[(int)((uint)text.Length % (uint)TracepointCatalog.All.Count)];
        var decoders = new KvmEventDecoders(tp => tp == chosen ? EventFormatParser.Parse(tp.System, text)
            : _fixtures.TryGetValue(tp.Name + ".format", out string? fixture) ? EventFormatParser.Parse(tp.System, fixture) : null);
        _pipeline.Decoders = decoders;
        var sink = new AggregatingSink(_pipeline.Aggregator.Shards[0]);
        foreach (byte[] payload in _payloads)
            decoders.Decode(1_000, 0, payload, ref sink);
        // A record of the mutated event, of every length up to its format's and past it.
        int id = decoders.Statuses.FirstOrDefault(s => s.Tracepoint == chosen)?.Id ?? -1;
        Span<byte> record = stackalloc byte[96];
        for (int length = 0; length <= record.Length; length += 8)
        {
            record.Fill((byte)length);
            BinaryPrimitives.WriteUInt16LittleEndian(record, (ushort)id);
            BinaryPrimitives.WriteInt32LittleEndian(record[4..], 1001);
            decoders.Decode(2_000, 0, record[..length], ref sink);
        }
        _pipeline.Used(renderEvery: 16);
    }

    private static string NameIn(string text)
    {
        int at = text.IndexOf("name:", StringComparison.Ordinal);
        if (at < 0)
            return "";
        int end = text.IndexOf('\n', at);
        return text[(at + 5)..(end < 0 ? text.Length : end)].Trim();
    }

    public override bool IsRejection(Exception e) => e is FormatException;
}

/// <summary>The print fmt of a format file: its __print_symbolic tables (exit reason names).</summary>
public sealed class PrintFormatTarget : FuzzTarget
{
    public override string Name => "print-fmt";

    public override IReadOnlyList<byte[]> Seeds { get; } = Pipeline.FormatFiles
        .SelectMany(f => File.ReadAllLines(f)).Where(l => l.StartsWith("print fmt:", StringComparison.Ordinal))
        .Select(l => Encoding.UTF8.GetBytes(l["print fmt:".Length..].Trim())).ToList();

    public override IReadOnlyList<string> Tokens { get; } =
        ["__print_symbolic(", "{", "}", "(", ")", "\"", "\\", ",", "-", "~", "0x", "1UL", "<<", "|", "+", "REC->", " "];

    public override void Run(byte[] input)
    {
        foreach (SymbolicTable table in PrintFormatParser.SymbolicTables(Text(input)))
            _ = table.Names.Count + table.Expression.Length;
    }
}

/// <summary>header_page and header_event: the ring-buffer page layout, then a page read with it.</summary>
public sealed class HeaderFormatTarget : FuzzTarget
{
    private readonly byte[] _page;

    public override string Name => "header-formats";

    public override IReadOnlyList<byte[]> Seeds { get; } = [Utf8(Fixture.Text("header_page")), Utf8(Fixture.Text("header_event"))];

    public override IReadOnlyList<string> Tokens { get; } = ["field:", "offset:", "size:", "signed:", ";", "\n", "\t", "-", "u64 ", "local_t ", "char data"];

    public HeaderFormatTarget() => _page = EventMix.Pages(Pipeline.Formats, Fixture.PageHeader, 1).Pages[0];

    public override void Run(byte[] input)
    {
        string text = Text(input);
        _ = EventHeaderFormat.Check(text);
        PageHeaderFormat layout = PageHeaderFormat.Parse(text);
        var handler = new CountingHandler();
        RingBufferPageReader.ReadPage(_page, layout, ref handler);
        int position = 0;
        ulong timestamp = 0;
        RingBufferPageReader.ReadAppended(_page, layout, Math.Min(layout.DataSize, _page.Length / 2), ref position, ref timestamp, ref handler);
    }

    public override bool IsRejection(Exception e) => e is FormatException;

    private struct CountingHandler : IRingBufferRecordHandler
    {
        public long Records;
        public void OnRecord(ulong timestamp, ReadOnlySpan<byte> payload) => Records++;
        public void OnEventsLost(ulong count, bool exact) { }
        public void OnCorruptPage(int offset) { }
    }
}

/// <summary>--web-config: the exporter-toolkit YAML (TLS and basic-auth users).</summary>
public sealed class WebConfigTarget : FuzzTarget
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"kvmobserve-fuzz-{Environment.ProcessId}-web.yml");

    public override string Name => "web-config";

    public override IReadOnlyList<byte[]> Seeds { get; } =
    [
        Utf8("basic_auth_users:\n  alice: $2y$10$XajjQvNhvvRt5GSeFk1xFeyqRrsxkhBkUiQeg0dt.wU1qD4aFDcga\n  bob: \"$2b$04$abcdefghijklmnopqrstuu5Zk6jAqcF2gZpQoHxs9lUxyNzL8i1u\"\n"),
        Utf8("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\nbasic_auth_users: {}\n"),
        Utf8("# comment\n---\nbasic_auth_users: &u\n  x: '$2a$04$abcdefghijklmnopqrstuu5Zk6jAqcF2gZpQoHxs9lUxyNzL8i1u'\n"),
    ];

    public override IReadOnlyList<string> Tokens { get; } =
        [":", "\n", "  ", "- ", "[", "]", "{", "}", "&a ", "*a", "!!binary ", "!!map ", "? ", "|\n", ">\n", "'", "\"", "---\n",
         "...\n", "%YAML 1.2\n", "tls_server_config", "basic_auth_users", "cert_file", "key_file", "<<: *a\n", "~", "\t"];

    public override void Run(byte[] input)
    {
        File.WriteAllBytes(_path, input);
        try
        {
            _ = WebConfig.Load(_path);
        }
        finally
        {
            File.Delete(_path); // a run leaves no file behind in /tmp
        }
    }

    public override bool IsRejection(Exception e) => e is OptionException;
}

/// <summary>--config: the JSON settings file, through every setting's parser.</summary>
public sealed class JsonConfigTarget : FuzzTarget
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"kvmobserve-fuzz-{Environment.ProcessId}-config.json");

    public override string Name => "json-config";

    public override IReadOnlyList<byte[]> Seeds { get; } =
    [
        Utf8("""
        { "Listen": "127.0.0.1:9632", "Source": "tracefs", "Metrics": "exits,latency", "SeriesLimit": 20000, "TopK": 8,
          "VmGrace": "90s", "BufferKb": 4096, "WakeupPercent": 25, "Nice": "5", "DiscoveryIntervalMs": 1000,
          "Otlp": { "Endpoint": "http://127.0.0.1:4318", "Protocol": "http/protobuf", "Interval": "15s", "Timeout": "5s", "Headers": "a=b" },
          "Storm": { "Floor": 20000, "Factor": 4 }, "FlightRecorder": { "Directory": "/tmp", "Seconds": 5 },
          "TracefsMmap": true, "Bpf": { "MapEntries": 65536, "Stats": false }, "Counting": { "Keys": "exits" } }
        """),
        Utf8("""{ "SeriesLimit": "1e9", "VmGrace": "2m", "Otlp": { "Endpoint": "" } }"""),
    ];

    public override IReadOnlyList<string> Tokens { get; } =
        ["\"", "\\", "{", "}", "[", "]", ",", ":", "null", "true", "-1", "1e400", "99999999999999999999", "\"\\u0000\"", "//", "/*",
         "\"Otlp\"", "\"Listen\"", "h", "ms", "d", "0x", ":::1", "[::1]:0", "\"SeriesLimit\""];

    public override void Run(byte[] input)
    {
        File.WriteAllBytes(_path, input);
        try
        {
            _ = AgentOptions.From(LayeredSettings.Load(_path, new Dictionary<string, string>()));
        }
        finally
        {
            File.Delete(_path); // a run leaves no file behind in /tmp
        }
    }

    public override bool IsRejection(Exception e) => e is OptionException;
}
