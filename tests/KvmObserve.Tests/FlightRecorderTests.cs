using System.Buffers;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Exposition;
using KvmObserve.Sources.Recording;
using KvmObserve.Sources.Tracefs;
using KvmObserve.Testing;
using Xunit;

namespace KvmObserve.Tests;

/// <summary>The flight recorder keeps what the tracefs page path read; `kvmobserve replay` reads it back through the
/// same decoders and aggregator and must count exactly what the live agent counted.</summary>
public sealed class FlightRecorderTests : IDisposable
{
    private const int Vm = 600, Vcpu0 = 601, Vcpu1 = 602;
    private static readonly string[] Events =
        ["kvm_exit", "kvm_entry", "kvm_userspace_exit", "kvm_pio", "kvm_mmio", "kvm_msr", "kvm_vcpu_wakeup", "kvm_halt_poll_ns"];

    private readonly FakeProc _proc = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("kvmobserve-rec").FullName;
    private readonly Dictionary<string, string> _texts = Events.ToDictionary(e => "kvm:" + e, e => Fixture.Text(e + ".format"));
    private readonly Dictionary<string, EventFormat> _formats;
    private readonly KvmEventDecoders _decoders;
    private readonly Aggregator _aggregator;

    public FlightRecorderTests()
    {
        _proc.Vm(Vm, "qemu-system-x86", "qemu-system-x86_64\0-name\0guest=web\0-uuid\0c0ffee00-0000-4000-8000-000000000001\0",
            threads: [(Vm, "qemu-system-x86"), (Vcpu0, "CPU 0/KVM"), (Vcpu1, "CPU 1/KVM")]);
        _formats = _texts.ToDictionary(kv => kv.Key, kv => EventFormatParser.Parse("kvm", kv.Value));
        _decoders = new KvmEventDecoders(tp => _formats.GetValueOrDefault(tp.FullName));
        var registry = new VmRegistry(_proc.Root);
        _aggregator = new Aggregator(2, registry);
        registry.Scan();
    }

    public void Dispose()
    {
        _proc.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>A mixed stream per CPU: exits with their entries, PIO to the VMM, MMIO, MSRs, halts; starting at
    /// <paramref name="start"/>, 2 µs apart.</summary>
    private List<(ulong Ts, byte[] Payload)> Stream(int cpu, ulong start, int count)
    {
        int tid = cpu == 0 ? Vcpu0 : Vcpu1;
        var records = new List<(ulong, byte[])>();
        ulong ts = start;
        for (int i = 0; i < count; i++)
        {
            byte[][] burst = (i % 6) switch
            {
                0 => [PayloadEncoder.Encode(_formats["kvm:kvm_exit"], tid, ("exit_reason", 30), ("isa", 1), ("vcpu_id", (ulong)cpu)),
                      PayloadEncoder.Encode(_formats["kvm:kvm_pio"], tid, ("rw", 1), ("port", 0x3f8 + (ulong)(i % 3)), ("size", 1), ("count", 1)),
                      PayloadEncoder.Encode(_formats["kvm:kvm_userspace_exit"], tid, ("reason", 2), ("errno", 0)),
                      PayloadEncoder.Encode(_formats["kvm:kvm_entry"], tid, ("vcpu_id", (ulong)cpu))],
                1 => [PayloadEncoder.Encode(_formats["kvm:kvm_msr"], tid, ("ecx", 0x10), ("write", (ulong)(i % 2)))],
                2 => [PayloadEncoder.Encode(_formats["kvm:kvm_mmio"], tid, ("type", 2), ("len", 4), ("gpa", 0xd000_0000UL + (ulong)(i % 2) * 4096))],
                3 => [PayloadEncoder.Encode(_formats["kvm:kvm_halt_poll_ns"], tid, ("grow", 1), ("vcpu_id", (ulong)cpu), ("new", 20_000), ("old", 10_000))],
                4 => [PayloadEncoder.Encode(_formats["kvm:kvm_vcpu_wakeup"], tid, ("ns", 15_000), ("waited", (ulong)(i % 4 == 0 ? 1 : 0)), ("valid", 1))],
                _ => [PayloadEncoder.Encode(_formats["kvm:kvm_exit"], tid, ("exit_reason", 12), ("isa", 1), ("vcpu_id", (ulong)cpu)),
                      PayloadEncoder.Encode(_formats["kvm:kvm_entry"], tid, ("vcpu_id", (ulong)cpu))],
            };
            foreach (byte[] payload in burst)
            {
                ts += 2_000;
                records.Add((ts, payload));
            }
        }
        return records;
    }

    /// <summary>What CpuReader does with the pages it reads from trace_pipe_raw.</summary>
    private void Read(int cpu, List<(ulong Ts, byte[] Payload)> records)
    {
        var pages = new List<byte[]>();
        PageEncoder? page = null;
        foreach ((ulong ts, byte[] payload) in records)
        {
            if (page is null || page.Free < payload.Length + 16)
            {
                if (page is not null)
                    pages.Add(page.Build());
                page = new PageEncoder(Fixture.PageHeader, ts);
            }
            page.Record(ts, payload);
        }
        pages.Add(page!.Build());
        Shard shard = _aggregator.Shards[cpu];
        var handler = new RecordHandler(_decoders, shard);
        var buffer = new ReadOnlySequence<byte>(pages.SelectMany(p => p).ToArray());
        lock (shard.Gate)
            PageStreamParser.ParsePages(ref buffer, Fixture.PageHeader, ref handler);
    }

    private string Live() => Rendered.Text(_aggregator, _decoders);

    /// <summary>The kvm_ samples, each as one comparable line (schedstat families apart: the live side has none here).</summary>
    private static SortedSet<string> KvmSamples(string text) =>
        new(Metrics.Parse(text).Samples
            .Where(s => s.Name.StartsWith("kvm_", StringComparison.Ordinal) && !s.Name.StartsWith("kvm_vcpu_", StringComparison.Ordinal)
                && !s.Name.StartsWith("kvm_vmm_", StringComparison.Ordinal))
            .Select(s => $"{s.Name}{{{string.Join(",", s.Labels.OrderBy(l => l.Key).Select(l => $"{l.Key}={l.Value}"))}}} {s.Value:R}"),
            StringComparer.Ordinal);

    private string Record(ulong detectedNs, TimeSpan length, int bytesPerCpu = 2 << 20, Action<FlightRecorder>? during = null)
    {
        using var recorder = new FlightRecorder(_aggregator, _dir, length, "tracefs", _texts, bytesPerCpu);
        during?.Invoke(recorder);
        Assert.True(recorder.Trigger("web", detectedNs));
        ulong to = detectedNs - 2_000_000_000UL + (ulong)length.Ticks * 100;
        Assert.Null(recorder.Poll(to)); // not before the range (and the readers' lag) has passed
        (string vm, string path) = recorder.Poll(to + 1_000_000_000UL)!.Value;
        Assert.Equal("web", vm);
        return path;
    }

    [Fact]
    public void A_recording_replayed_counts_exactly_what_the_live_pipeline_counted()
    {
        ulong now = ThreadStates.MonotonicNow();
        int read = 0;
        string path = Record(now + 500_000_000, TimeSpan.FromSeconds(5), during: recorder =>
        {
            List<(ulong, byte[])> cpu0 = Stream(0, now - 1_000_000_000, 3_000), cpu1 = Stream(1, now - 900_000_000, 2_000);
            Read(0, cpu0);
            Read(1, cpu1);
            _aggregator.States.CaughtUp(0, now + 1_000_000_000); // both readers found nothing more
            _aggregator.States.CaughtUp(1, now + 1_000_000_000);
            read = cpu0.Count + cpu1.Count;
            recorder.OnSchedstat(Vcpu0, 4_000_000_000, 1_500_000_000);
            recorder.OnSchedstat(Vcpu1, 3_000_000_000, 250_000_000);
        });

        SortedSet<string> live = KvmSamples(Live());
        (int exit, string stdout, string stderr) = AgentProcess.Run(["replay", path]);
        Assert.True(exit == 0, stderr);
        Assert.Contains("replayed", stderr);
        SortedSet<string> replayed = KvmSamples(stdout);
        Assert.True(live.Count > 40, $"only {live.Count} samples");
        Assert.Equal(live, replayed);
        Metrics metrics = Metrics.Parse(stdout);
        Assert.Equal(1.5, metrics.Sum("kvm_vcpu_steal_seconds_total", ("vm", "web"), ("vcpu", "0")));
        Assert.Equal(3.0, metrics.Sum("kvm_vcpu_run_seconds_total", ("vm", "web"), ("vcpu", "1")));
        Assert.Equal(0, metrics.Sum("kvmobserve_decode_errors_total"));

        (RecordingHeader header, List<RecordedRecord> records) = FlightRecording.Read(File.ReadAllBytes(path));
        Assert.True(header.Complete);
        Assert.Equal(records.Count, header.Records);
        Assert.Equal(read, records.Count(r => r.Kind == FlightRecording.TracepointKind));
        Assert.Equal(2, records.Count(r => r.Kind == FlightRecording.SchedstatKind));
        Assert.Contains(header.Threads, t => t is { Tid: Vcpu0, Pid: Vm, Vm: "web", Vcpu: 0, Vmm: "qemu" });
        Assert.Equal(_texts.Keys.Order(), header.Formats.Keys.Order());
        Assert.True(records.Zip(records.Skip(1)).All(p => p.First.Timestamp <= p.Second.Timestamp));
    }

    [Fact]
    public void Records_outside_the_range_are_left_out_and_a_ring_that_lost_the_start_says_so()
    {
        ulong now = ThreadStates.MonotonicNow();
        // 64 KiB chunks, two of them: the 3,000 records read first are long overwritten by the later ones.
        string path = Record(now, TimeSpan.FromSeconds(3), bytesPerCpu: 128 * 1024, during: _ =>
        {
            Read(0, Stream(0, now - 10_000_000_000, 600));  // before the range (detected - 2 s)
            Read(0, Stream(0, now - 1_500_000_000, 6_000)); // in it, more than the ring holds
        });
        (RecordingHeader header, List<RecordedRecord> records) = FlightRecording.Read(File.ReadAllBytes(path));
        Assert.False(header.Complete);
        Assert.All(records, r => Assert.InRange(r.Timestamp, now - 2_000_000_000, now + 1_000_000_000));
        Assert.InRange(records.Count, 1_000, 12_000 - 1);
    }

    [Fact]
    public void A_damaged_recording_is_one_clear_error_naming_the_offset()
    {
        ulong now = ThreadStates.MonotonicNow();
        string path = Record(now, TimeSpan.FromSeconds(3), during: _ => Read(1, Stream(1, now - 1_000_000_000, 60)));
        byte[] whole = File.ReadAllBytes(path);
        string cut = Path.Combine(_dir, "cut.kvmrec");
        File.WriteAllBytes(cut, whole[..^5]);
        FormatException e = Assert.Throws<FormatException>(() => FlightRecording.Read(File.ReadAllBytes(cut)));
        Assert.Matches("at offset 0x[0-9a-f]+ runs past the end of the file", e.Message);

        (int exit, string stdout, string stderr) = AgentProcess.Run(["replay", cut]);
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.StartsWith($"kvmobserve replay: {cut}: record of", stderr);

        File.WriteAllText(cut, "not a recording");
        Assert.Contains("no KVMOFR01 magic", Assert.Throws<FormatException>(() => FlightRecording.Read(File.ReadAllBytes(cut))).Message);
    }
}
