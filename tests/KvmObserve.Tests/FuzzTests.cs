using System.Buffers.Binary;
using System.Text;
using KvmObserve.Agent.Hosting;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Format;
using KvmObserve.Decoding.Perf;
using KvmObserve.Fuzz;
using KvmObserve.Sources.Recording;

namespace KvmObserve.Tests;

/// <summary>A seeded slice of the fuzz run (tests/KvmObserve.Fuzz does millions): every reader of outside bytes
/// either reads an input or rejects it with its one documented error, and finishes.</summary>
public sealed class FuzzSliceTests
{
    public static TheoryData<string> Targets() => new(FuzzTarget.All().Select(t => t.Name));

    [Theory]
    [MemberData(nameof(Targets))]
    public void Mutated_inputs_are_read_or_rejected_never_crash(string name)
    {
        FuzzTarget target = FuzzTarget.All().Single(t => t.Name == name);
        FuzzResult result = FuzzRunner.Run(target, inputs: 4000, seed: 20261206, hangLimit: TimeSpan.FromSeconds(60));
        Assert.False(result.Hung, $"{name}: an input did not finish");
        Assert.Equal(4000, result.Inputs);
        Assert.True(result.Crashes.Count == 0, string.Join("\n", result.Crashes.Select(c =>
            $"{c.Count} x {c.Site}: {c.Message} (input, base64: {Convert.ToBase64String(c.Input)})")));
    }

    [Fact]
    public void The_mutator_is_deterministic_and_changes_its_input()
    {
        byte[] input = Encoding.UTF8.GetBytes("field:unsigned int port;\toffset:12;\tsize:4;\tsigned:0;");
        var m1 = new Mutator(5);
        var m2 = new Mutator(5);
        int changed = 0;
        for (int i = 0; i < 50; i++)
        {
            byte[] x = m1.Mutate(input, [input], ["offset:"]);
            Assert.Equal(x, m2.Mutate(input, [input], ["offset:"]));
            changed += x.AsSpan().SequenceEqual(input) ? 0 : 1;
        }
        Assert.True(changed >= 45, $"only {changed} of 50 mutants differ from the input");
    }
}

/// <summary>What the fuzz run found, each as the smallest input that showed it.</summary>
public sealed class FuzzFindingsTests
{
    private static byte[] Recording(Action<RecordingHeader>? edit = null, params RecordedRecord[] records)
    {
        var header = new RecordingHeader { Vm = "vm", Host = "h", Source = "tracefs", Reason = "test" };
        header.Formats["kvm:kvm_pio"] = Fixture.Text("kvm_pio.format");
        header.Threads.Add(new RecordedThread(1000, 999, "vm", "qemu", "uuid", 0));
        edit?.Invoke(header);
        var stream = new MemoryStream();
        FlightRecording.Write(stream, header, records);
        return stream.ToArray();
    }

    private static byte[] HeaderOf(byte[] file) => file.AsSpan(12, (int)BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(8))).ToArray();

    private static byte[] WithHeader(string json)
    {
        byte[] header = Encoding.UTF8.GetBytes(json);
        var file = new byte[12 + header.Length];
        FlightRecording.Magic.CopyTo(file);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(8), (uint)header.Length);
        header.CopyTo(file, 12);
        return file;
    }

    [Fact]
    public void An_event_id_that_common_type_cannot_hold_is_a_format_error()
    {
        string text = Fixture.Text("kvm_pio.format");
        string id = text.Split('\n').First(l => l.StartsWith("ID:", StringComparison.Ordinal));
        var e = Assert.Throws<FormatException>(() => EventFormatParser.Parse("kvm", text.Replace(id, "ID: 2147483640")));
        Assert.Contains("2147483640", e.Message);
    }

    [Fact]
    public void A_header_length_near_2_pow_31_is_a_format_error()
    {
        byte[] file = Recording();
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(8), 0x7ffffffc);
        Assert.Contains("runs past the end", Assert.Throws<FormatException>(() => FlightRecording.Read(file)).Message);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(8), 0xfffffff8);
        Assert.Throws<FormatException>(() => FlightRecording.Read(file));
    }

    [Fact]
    public void A_record_length_near_2_pow_31_is_a_format_error()
    {
        byte[] pio = PayloadEncoder.Encode(Fixture.Format("kvm_pio.format"), 1000, ("port", 0x80));
        byte[] file = Recording(null, new RecordedRecord(1, 0, FlightRecording.TracepointKind, pio));
        int record = file.Length - 16 - ((pio.Length + 7) & ~7);
        foreach (uint length in new uint[] { 0x7ffffffd, 0xfffffff9, 0xffffffff })
        {
            BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(record), length);
            Assert.Contains("runs past the end", Assert.Throws<FormatException>(() => FlightRecording.Read(file)).Message);
        }
    }

    [Fact]
    public void A_thread_without_its_vmm_or_a_null_formats_table_is_a_format_error()
    {
        // Written with vmm null, the JSON leaves the member out, as a hand-edited or damaged header may.
        byte[] file = Recording(h => h.Threads[0] = h.Threads[0] with { Vmm = null! });
        Assert.DoesNotContain("\"vmm\"", Encoding.UTF8.GetString(file));
        Assert.Contains("needs vm, vmm and uuid", Assert.Throws<FormatException>(() => FlightRecording.Read(file)).Message);
        byte[] nullFormats = WithHeader(Encoding.UTF8.GetString(HeaderOf(Recording())).Replace("\"formats\": {", "\"formats\": null, \"x\": {"));
        Assert.Contains("'formats'", Assert.Throws<FormatException>(() => FlightRecording.Read(nullFormats)).Message);
    }

    [Theory]
    [InlineData("__print_symbolic(REC->r, { 1, \"a\" }, { 2")]
    [InlineData("__print_symbolic(REC->r, { 1, \"a\" }, { 2, \"b")]
    [InlineData("__print_symbolic(REC->r, { 1, \"a\\")]
    [InlineData("__print_symbolic(REC->r, { 1 }, { 2, \"b\" }")]
    [InlineData("__print_symbolic(\\")]
    public void A_print_fmt_cut_anywhere_gives_the_tables_before_the_cut(string printFormat)
    {
        IReadOnlyList<SymbolicTable> tables = PrintFormatParser.SymbolicTables(printFormat);
        Assert.Single(tables);
        Assert.All(tables[0].Names, kv => Assert.True(kv.Key is 1 or 2, $"{kv.Key}"));
    }

    [Fact]
    public void A_value_nested_past_the_bound_is_not_a_value_not_a_stack_overflow()
    {
        Assert.False(PrintFormatParser.TryEvaluate(new string('(', 100_000) + "1" + new string(')', 100_000), out _));
        Assert.False(PrintFormatParser.TryEvaluate(new string('-', 100_000) + "1", out _));
        Assert.True(PrintFormatParser.TryEvaluate("((0x40 + 1))", out long v));
        Assert.Equal(0x41, v);
    }

    [Fact]
    public void A_sample_whose_raw_size_has_the_top_bit_set_is_malformed_not_a_crash()
    {
        var ring = new PerfRingEncoder(4096, 0).Sample(5, 1000, 0, new byte[12]);
        BinaryPrimitives.WriteUInt32LittleEndian(ring.Data.AsSpan(32), 0xfffffff0);
        var handler = new CollectingPerfHandler();
        Assert.Equal(ring.Head, PerfRingReader.Read(ring.Data, ring.Tail, ring.Head, new byte[PerfRingReader.MaxRecordSize], ref handler));
        Assert.Empty(handler.Samples);
        Assert.Equal(1, handler.Malformed);
    }

    [Fact]
    public void Positions_further_apart_than_the_ring_is_long_are_a_corrupt_ring()
    {
        var ring = new PerfRingEncoder(4096, 0).Sample(5, 1000, 0, new byte[12]);
        var handler = new CollectingPerfHandler();
        ulong head = 4096 * 3;
        Assert.Equal(head, PerfRingReader.Read(ring.Data, 0, head, new byte[PerfRingReader.MaxRecordSize], ref handler));
        Assert.Empty(handler.Samples);
        Assert.Equal(1, handler.Corrupt);
    }

    [Fact]
    public void A_page_layout_with_data_before_its_header_fields_is_a_format_error()
    {
        string text = Fixture.Text("header_page").Replace("offset:16;", "offset:4;");
        Assert.Contains("before data", Assert.Throws<FormatException>(() => PageHeaderFormat.Parse(text)).Message);
    }

    [Fact]
    public void A_field_ending_past_any_page_is_a_format_error()
    {
        Assert.Throws<FormatException>(() => EventFormatParser.ParseField("field:int x;\toffset:2147483647;\tsize:4;\tsigned:1;"));
    }

    [Theory]
    [InlineData("{a: 1}: x\n", "a top-level key")]
    [InlineData("tls_server_config:\n  [k]: v\n", "a key of tls_server_config")]
    [InlineData("tls_server_config:\n  cert_file: missing.crt\n  {ey_file: missing.key\n", "not YAML")]
    public void A_web_config_of_the_wrong_shape_is_one_line_naming_it(string yaml, string expected)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kvmobserve-webconfig-{Guid.NewGuid():n}.yml");
        File.WriteAllText(path, yaml);
        try
        {
            var e = Assert.Throws<OptionException>(() => WebConfig.Load(path));
            Assert.Contains(expected, e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void A_record_out_of_time_order_does_not_stall_a_paced_replay()
    {
        EventFormat pio = Fixture.Format("kvm_pio.format");
        const ulong start = 5_000_000_000;
        var records = new List<RecordedRecord>();
        for (int i = 0; i < 20; i++)
        {
            // The 10th record claims a time before the first: unsigned, its offset would be ~585 years.
            ulong ts = i == 10 ? start - 1 : start + (ulong)i * 10_000_000;
            records.Add(new RecordedRecord(ts, 0, FlightRecording.TracepointKind, PayloadEncoder.Encode(pio, 1000, ("port", 0x80))));
        }
        (RecordingHeader header, List<RecordedRecord> read) = FlightRecording.Read(Recording(null, records.ToArray()));
        VmRegistry registry = VmRegistry.WithoutProcfs();
        var aggregator = new Aggregator(1, registry);
        using var replay = new ReplaySource(header, read, aggregator, null, speed: 1, loop: false);
        replay.Start();
        Assert.True(replay.WaitForEnd(TimeSpan.FromSeconds(20)), "the replay did not finish: it is waiting on the out-of-order record");
    }
}

internal struct CollectingPerfHandler() : IPerfRecordHandler
{
    public List<ulong> Samples = new();
    public int Malformed;
    public int Corrupt;

    public void OnSample(ulong time, int pid, int tid, int cpu, ReadOnlySpan<byte> raw) => Samples.Add(time);
    public void OnLost(ulong count) { }
    public void OnMalformedRecord(uint type) => Malformed++;
    public void OnCorruptRing(ulong position) => Corrupt++;
}

/// <summary>`run --replay` of a recording it cannot read: a bad setting, one line and exit 2, before anything starts
/// (before: a stack trace from the host's start).</summary>
public sealed class ReplaySettingTests
{
    [Fact]
    public void A_truncated_recording_given_to_run_is_one_line_and_exit_2()
    {
        var stream = new MemoryStream();
        var header = new RecordingHeader { Vm = "vm", Host = "h", Source = "tracefs", Reason = "test" };
        FlightRecording.Write(stream, header, [new RecordedRecord(1, 0, FlightRecording.TracepointKind, new byte[24])]);
        string path = Path.Combine(Path.GetTempPath(), $"kvmobserve-truncated-{Guid.NewGuid():n}.kvmrec");
        File.WriteAllBytes(path, stream.ToArray()[..^10]);
        try
        {
            (int code, _, string stderr) = AgentProcess.Run(["run", "--replay", path]);
            Assert.Equal(2, code);
            Assert.Equal($"kvmobserve: --replay: '{path}': record of 24 bytes at offset", stderr.Trim()[..($"kvmobserve: --replay: '{path}': record of 24 bytes at offset".Length)]);
            Assert.DoesNotContain('\n', stderr.Trim());
        }
        finally
        {
            File.Delete(path);
        }
    }
}
