using System.Buffers;
using System.Text;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Exposition;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Tests;

/// <summary>
/// kvm_exit and kvm_entry never fire on this project's machines, so their records are encoded from the real format
/// files into ring-buffer pages and pushed through what a tracefs reader runs on each page (page parser, record
/// handler, decoders, aggregating sink), then folded and rendered: the bucket counts must come out exact.
/// </summary>
public sealed class LatencyPipelineTests : IDisposable
{
    private const int Vm = 600, Cpu0Thread = 601, Cpu1Thread = 602;
    private const uint Vmx = 1, IoInstruction = 30, EptViolation = 48, Hlt = 12;

    private readonly FakeProc _proc = new();
    private readonly Dictionary<string, EventFormat> _formats = new()
    {
        ["kvm:kvm_exit"] = Fixture.Format("kvm_exit.format"),
        ["kvm:kvm_entry"] = Fixture.Format("kvm_entry.format"),
        ["kvm:kvm_userspace_exit"] = Fixture.Format("kvm_userspace_exit.format"),
        ["kvm:kvm_pio"] = Fixture.Format("kvm_pio.format"),
        ["kvm:kvm_vcpu_wakeup"] = Fixture.Format("kvm_vcpu_wakeup.format"),
        ["kvm:kvm_halt_poll_ns"] = Fixture.Format("kvm_halt_poll_ns.format"),
    };
    private readonly KvmEventDecoders _decoders;
    private readonly Aggregator _aggregator;

    public LatencyPipelineTests()
    {
        _proc.Vm(Vm, "qemu-system-x86", "qemu-system-x86_64\0-name\0guest=web\0",
            threads: [(Vm, "qemu-system-x86"), (Cpu0Thread, "CPU 0/KVM"), (Cpu1Thread, "CPU 1/KVM")]);
        _decoders = new KvmEventDecoders(tp => _formats.GetValueOrDefault(tp.FullName));
        var registry = new VmRegistry(_proc.Root);
        _aggregator = new Aggregator(2, registry);
        _aggregator.States.Reads(0); // as each CPU's reader does when it starts
        _aggregator.States.Reads(1);
        registry.Scan();
    }

    public void Dispose() => _proc.Dispose();

    private byte[] Exit(int tid, uint reason, int vcpu) =>
        PayloadEncoder.Encode(_formats["kvm:kvm_exit"], tid, ("exit_reason", reason), ("isa", Vmx), ("vcpu_id", (ulong)vcpu));

    private byte[] Entry(int tid, int vcpu) => PayloadEncoder.Encode(_formats["kvm:kvm_entry"], tid, ("vcpu_id", (ulong)vcpu));

    private byte[] Pio(int tid) =>
        PayloadEncoder.Encode(_formats["kvm:kvm_pio"], tid, ("rw", 1), ("port", 0x3f8), ("size", 1), ("count", 1));

    private byte[] UserspaceExit(int tid, uint reason) =>
        PayloadEncoder.Encode(_formats["kvm:kvm_userspace_exit"], tid, ("reason", reason), ("errno", 0));

    /// <summary>One page of records (timestamp, payload) for a CPU, optionally saying events were lost before it.</summary>
    private static byte[] Page(ulong? missed, params (ulong Ts, byte[] Payload)[] records)
    {
        var page = new PageEncoder(Fixture.PageHeader, records[0].Ts);
        foreach ((ulong ts, byte[] payload) in records)
            page.Record(ts, payload);
        return page.Build(missed);
    }

    /// <summary>What CpuReader does with the pages it reads from per_cpu/cpuN/trace_pipe_raw.</summary>
    private void Read(int cpu, params byte[][] pages)
    {
        Shard shard = _aggregator.Shards[cpu];
        var handler = new RecordHandler(_decoders, shard);
        var buffer = new ReadOnlySequence<byte>(pages.SelectMany(p => p).ToArray());
        lock (shard.Gate)
            PageStreamParser.ParsePages(ref buffer, Fixture.PageHeader, ref handler);
    }

    private Histogram Histogram(MetricFamily family, uint label1) =>
        _aggregator.Snapshot().Single(s => s.Family == family && s.Label1 == label1 && s.Vm == "web").Histogram!;

    private string Render() => Rendered.Text(_aggregator, _decoders);

    [Fact]
    public void Exit_to_entry_pairs_give_exact_buckets_when_a_thread_moves_and_cpus_are_read_out_of_order()
    {
        // Thread 601 (vCPU 0) handles an exit on CPU 0 and re-enters on CPU 1 (2000 -> 5000); thread 602 runs on
        // CPU 1 throughout. CPU 1 is read first, as a reader that woke earlier would.
        byte[] cpu0 = Page(null,
            (1_000, Exit(Cpu0Thread, IoInstruction, 0)), (1_400, Entry(Cpu0Thread, 0)),   // 400 ns, same CPU
            (2_000, Exit(Cpu0Thread, IoInstruction, 0)));                                 // ends on CPU 1
        byte[] cpu0Later = Page(null, (3_000_000_000, Pio(Vm)));                         // CPU 0 read past them all
        byte[] cpu1 = Page(null,
            (1_500, Exit(Cpu1Thread, Hlt, 1)),
            (5_000, Entry(Cpu0Thread, 0)),                                                // 3000 ns after 2000
            (6_000, Exit(Cpu0Thread, EptViolation, 0)), (6_250, Entry(Cpu0Thread, 0)),    // 250 ns: the first bucket
            (7_000, Exit(Cpu0Thread, IoInstruction, 0)), (1_007_000, Entry(Cpu0Thread, 0)), // 1 ms
            (2_000_001_500, Entry(Cpu1Thread, 1)));                                       // 2 s: +Inf

        Read(1, cpu1);
        Read(0, cpu0);
        Read(0, cpu0Later);

        Histogram io = Histogram(MetricFamily.ExitLatency, IoInstruction);
        var expected = new long[LatencyBuckets.Count];
        expected[1] = 1;  // 400 ns:  (250, 500]
        expected[4] = 1;  // 3000 ns: (2000, 4000]
        expected[12] = 1; // 1 ms:    (512000, 1024000]
        Assert.Equal(expected, io.Buckets);
        Assert.Equal(400 + 3_000 + 1_000_000, io.SumNs);
        Assert.Equal(1, Histogram(MetricFamily.ExitLatency, EptViolation).Buckets[0]);
        Assert.Equal(1, Histogram(MetricFamily.ExitLatency, Hlt).Buckets[LatencyBuckets.Count - 1]);
        Assert.Equal(0, _aggregator.States.PairsDropped(PairKind.Exit, PairDrop.Gap));

        string text = Render();
        Assert.Contains("kvm_exit_handling_seconds_bucket{vm=\"web\",reason=\"IO_INSTRUCTION\",le=\"5e-07\"} 1\n", text);
        Assert.Contains("kvm_exit_handling_seconds_bucket{vm=\"web\",reason=\"IO_INSTRUCTION\",le=\"4e-06\"} 2\n", text);
        Assert.Contains("kvm_exit_handling_seconds_bucket{vm=\"web\",reason=\"IO_INSTRUCTION\",le=\"+Inf\"} 3\n", text);
        Assert.Contains("kvm_exit_handling_seconds_sum{vm=\"web\",reason=\"IO_INSTRUCTION\"} 0.0010034\n", text);
        Assert.Contains("kvm_exit_handling_seconds_count{vm=\"web\",reason=\"HLT\"} 1\n", text);
    }

    [Fact]
    public void The_same_records_read_in_cpu_order_give_the_same_buckets()
    {
        byte[] cpu0 = Page(null, (1_000, Exit(Cpu0Thread, IoInstruction, 0)), (1_400, Entry(Cpu0Thread, 0)),
            (2_000, Exit(Cpu0Thread, IoInstruction, 0)));
        byte[] cpu1 = Page(null, (5_000, Entry(Cpu0Thread, 0)));
        Read(0, cpu0);
        Read(1, cpu1); // CPU 0 may still hold an entry of the thread before 5000: the pair waits
        Assert.DoesNotContain(_aggregator.Snapshot(), s => s.Family == MetricFamily.ExitLatency && s.Histogram!.Buckets[4] > 0);
        Read(0, Page(null, (6_000, Pio(Vm)))); // now it has been read past 5000
        Histogram io = Histogram(MetricFamily.ExitLatency, IoInstruction);
        Assert.Equal(1, io.Buckets[1]);
        Assert.Equal(1, io.Buckets[4]);
        Assert.Equal(2, io.Count);
    }

    [Fact]
    public void A_gap_in_the_ring_drops_the_pair_open_across_it_and_counts_it()
    {
        // Events were lost between the exit at 1000 and the next page: the entry at 9000 may end another exit.
        byte[] before = Page(null, (1_000, Exit(Cpu0Thread, IoInstruction, 0)));
        byte[] after = Page(missed: 3, (9_000, Entry(Cpu0Thread, 0)),
            (10_000, Exit(Cpu0Thread, IoInstruction, 0)), (10_300, Entry(Cpu0Thread, 0)));
        Read(0, before, after);
        _aggregator.States.CaughtUp(1, 20_000); // CPU 1's reader found nothing up to then

        Histogram io = Histogram(MetricFamily.ExitLatency, IoInstruction);
        Assert.Equal(1, io.Count);      // only 10000 -> 10300
        Assert.Equal(1, io.Buckets[1]);
        Assert.Equal(1, _aggregator.States.PairsDropped(PairKind.Exit, PairDrop.Gap));
        Assert.Equal(3, _aggregator.Shards[0].LostEvents);
        Assert.Contains("kvmobserve_latency_pairs_dropped_total{histogram=\"kvm_exit_handling_seconds\",reason=\"gap\"} 1\n", Render());
    }

    [Fact]
    public void An_exit_whose_entry_never_comes_is_counted_not_paired_with_a_later_entry()
    {
        // The entry of the exit at 1000 is missing (no loss reported): the next exit replaces it.
        byte[] page = Page(null, (1_000, Exit(Cpu0Thread, IoInstruction, 0)),
            (2_000, Exit(Cpu0Thread, EptViolation, 0)), (2_600, Entry(Cpu0Thread, 0)));
        Read(0, page);
        // CPU 1 may still hold the entry (the thread may have run there between 1000 and 2000) until it is read.
        Assert.DoesNotContain(_aggregator.Snapshot(), s => s.Family == MetricFamily.ExitLatency);
        Assert.Equal(0, _aggregator.States.PairsDropped(PairKind.Exit, PairDrop.Unmatched));
        Read(1, Page(null, (3_000, Pio(Vm))));
        Assert.Equal(1, Histogram(MetricFamily.ExitLatency, EptViolation).Buckets[2]); // 600 ns: (500, 1000]
        Assert.DoesNotContain(_aggregator.Snapshot(), s => s.Family == MetricFamily.ExitLatency && s.Label1 == IoInstruction);
        Assert.Equal(1, _aggregator.States.PairsDropped(PairKind.Exit, PairDrop.Unmatched));
    }

    /// <summary>A thread that moves between CPUs every few exits, its CPUs read in turn long after: every exit is paired
    /// with the entry that followed it in time, none dropped, whatever the order the rings are read in.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void A_thread_moving_often_between_cpus_read_far_apart_has_every_exit_paired(int firstRead)
    {
        // Exit k at 10,000k, its entry (100 + k % 7) ns later; the thread moves to the other CPU after every third
        // exit, while it handles it: that exit's entry is on the other CPU.
        var records = new List<(ulong Ts, byte[] Payload)>[2] { new(), new() };
        int cpu = 0;
        long expectedSum = 0;
        const int Exits = 600;
        for (int k = 1; k <= Exits; k++)
        {
            ulong exitTs = (ulong)k * 10_000, latency = 100 + (ulong)(k % 7);
            records[cpu].Add((exitTs, Exit(Cpu0Thread, IoInstruction, 0)));
            if (k % 3 == 0)
                cpu ^= 1;
            records[cpu].Add((exitTs + latency, Entry(Cpu0Thread, 0)));
            expectedSum += (long)latency;
        }
        // Each CPU's records in pages of 50, all of one CPU read before the other's.
        foreach (int c in new[] { firstRead, firstRead ^ 1 })
        {
            foreach ((ulong Ts, byte[] Payload)[] chunk in records[c].Chunk(50))
                Read(c, Page(null, chunk));
        }
        Read(0, Page(null, (10_000_000, Pio(Vm)))); // both read past the last entry
        Read(1, Page(null, (10_000_000, Pio(Vm))));
        Histogram io = Histogram(MetricFamily.ExitLatency, IoInstruction);
        Assert.Equal(Exits, io.Count);
        Assert.Equal(expectedSum, io.SumNs);
        Assert.Equal(0, _aggregator.States.PairsDropped(PairKind.Exit, PairDrop.Unmatched));
        Assert.Equal(0, _aggregator.States.PairsDropped(PairKind.Exit, PairDrop.Gap));
    }

    [Fact]
    public void A_userspace_round_trip_ends_at_the_threads_next_record_even_on_another_cpu()
    {
        const uint Io = 2, Mmio = 6; // KVM_EXIT_IO, KVM_EXIT_MMIO
        byte[] cpu0 = Page(null, (1_000, Pio(Cpu0Thread)), (1_100, UserspaceExit(Cpu0Thread, Io)),
            (1_100 + 12_000, Pio(Cpu0Thread)), (13_200, UserspaceExit(Cpu0Thread, Io)));
        byte[] cpu1 = Page(null, (13_200 + 7_000_000, Exit(Cpu0Thread, EptViolation, 0)), // the thread moved while in the VMM
            (30_000_000, UserspaceExit(Cpu0Thread, Mmio)));
        Read(0, cpu0);
        Read(1, cpu1);

        Histogram io = Histogram(MetricFamily.UserspaceLatency, Io);
        Assert.Equal(2, io.Count);
        Assert.Equal(1, io.Buckets[6]);  // 12 us: (8000, 16000]
        Assert.Equal(1, io.Buckets[15]); // 7 ms: (4096000, 8192000]
        Assert.Equal(12_000 + 7_000_000, io.SumNs);
        Assert.DoesNotContain(_aggregator.Snapshot(), s => s.Family == MetricFamily.UserspaceLatency && s.Label1 == Mmio); // still open
        Assert.Contains("kvm_userspace_exit_seconds_count{vm=\"web\",reason=\"IO\"} 2\n", Render());
    }

    [Fact]
    public void Halt_outcomes_follow_the_poll_window_each_halt_started_with()
    {
        EventFormat wake = _formats["kvm:kvm_vcpu_wakeup"], poll = _formats["kvm:kvm_halt_poll_ns"];
        byte[] Wakeup(ulong ns, bool waited) => PayloadEncoder.Encode(wake, Cpu0Thread, ("ns", ns), ("waited", waited ? 1UL : 0UL), ("valid", 1));
        byte[] Poll(bool grow, uint now, uint old) =>
            PayloadEncoder.Encode(poll, Cpu0Thread, ("grow", grow ? 1UL : 0UL), ("vcpu_id", 0), ("new", now), ("old", old));
        // The VM started after the agent: its vCPU's window starts at 0 (KVM creates vCPUs with halt_poll_ns 0).
        byte[] page = Page(null,
            (1_000, Wakeup(30_000, waited: true)),                                    // window 0: waited
            (2_000, Poll(grow: true, 10_000, 0)), (2_001, Wakeup(3_000, waited: true)), // grew as it ended: began at 0
            (3_000, Wakeup(5_000, waited: false)),                                    // window 10000, no sleep: poll_success
            (4_000, Poll(grow: false, 0, 10_000)), (4_001, Wakeup(900_000, waited: true))); // began at 10000: poll_fail
        Read(0, page);

        List<MergedSeries> snapshot = _aggregator.Snapshot().ToList();
        long Wakeups(HaltOutcome o) => snapshot.Where(s => s.Family == MetricFamily.HaltWakeups && s.Label1 == (uint)o && s.Vcpu == 0).Sum(s => s.Value);
        Assert.Equal(2, Wakeups(HaltOutcome.Waited));
        Assert.Equal(1, Wakeups(HaltOutcome.PollSuccess));
        Assert.Equal(1, Wakeups(HaltOutcome.PollFail));
        Assert.Equal(0, Wakeups(HaltOutcome.Unknown));
        Assert.Equal(900_000, snapshot.Single(s => s.Family == MetricFamily.HaltDuration && s.Label1 == (uint)HaltOutcome.PollFail).Histogram!.SumNs);
        string text = Render();
        Assert.Contains("kvm_halt_poll_window_seconds{vm=\"web\",vcpu=\"0\"} 0\n", text);
        Assert.Contains("kvm_halt_poll_changes_total{vm=\"web\",vcpu=\"0\",direction=\"grow\"} 1\n", text);
        Assert.Contains("kvm_halt_seconds_count{vm=\"web\",outcome=\"waited\"} 2\n", text);
    }

    [Fact]
    public void Halts_of_a_vcpu_older_than_the_agent_wait_for_its_first_window_change()
    {
        // A VM that started before the agent: the window its halts start with is not known until a change says
        // (its old value); the halts before it are held, then classified with it.
        using var proc = new FakeProc(agentStart: 9_999);
        proc.Vm(Vm, "qemu-system-x86", "qemu-system-x86_64\0-name\0guest=old\0", start: 4242, threads: [(Cpu0Thread, "CPU 0/KVM")]);
        var registry = new VmRegistry(proc.Root);
        var aggregator = new Aggregator(1, registry);
        registry.Scan();
        EventFormat wake = _formats["kvm:kvm_vcpu_wakeup"], poll = _formats["kvm:kvm_halt_poll_ns"];
        byte[] Wakeup(bool waited) => PayloadEncoder.Encode(wake, Cpu0Thread, ("ns", 1_000), ("waited", waited ? 1UL : 0UL), ("valid", 1));
        var page = Page(null, (1_000, Wakeup(true)), (2_000, Wakeup(false)), (3_000, Wakeup(true)),
            (4_000, PayloadEncoder.Encode(poll, Cpu0Thread, ("grow", 0), ("vcpu_id", 0), ("new", 5_000), ("old", 20_000))),
            (4_001, Wakeup(true)));
        var handler = new RecordHandler(_decoders, aggregator.Shards[0]);
        var buffer = new ReadOnlySequence<byte>(page);
        PageStreamParser.ParsePages(ref buffer, Fixture.PageHeader, ref handler);

        List<MergedSeries> snapshot = aggregator.Snapshot().ToList();
        long Wakeups(HaltOutcome o) => snapshot.Where(s => s.Family == MetricFamily.HaltWakeups && s.Label1 == (uint)o).Sum(s => s.Value);
        Assert.Equal(3, Wakeups(HaltOutcome.PollFail)); // two held, and the one the change ended
        Assert.Equal(1, Wakeups(HaltOutcome.PollSuccess));
        Assert.Equal(0, Wakeups(HaltOutcome.Unknown));
        Assert.Equal(4, aggregator.Shards[0].EventsOf(KvmEventKind.VcpuWakeup));
    }

    /// <summary>A new VM whose vCPU halted hundreds of times before the agent named it: the held halts are classified
    /// with window 0 when it is named, however many there were and though the vCPU never halts again.</summary>
    [Fact]
    public void Halts_held_before_a_new_vcpu_is_named_are_counted_when_it_is()
    {
        using var proc = new FakeProc(agentStart: 1_000);
        var registry = new VmRegistry(proc.Root);
        var aggregator = new Aggregator(1, registry);
        EventFormat wake = _formats["kvm:kvm_vcpu_wakeup"];
        var records = new List<(ulong, byte[])>();
        ulong sum = 0;
        for (int i = 0; i < 300; i++)
        {
            ulong ns = 1_000 + (ulong)i * 37;
            sum += ns;
            records.Add((1_000 + (ulong)i * 10, PayloadEncoder.Encode(wake, Cpu0Thread, ("ns", ns), ("waited", i % 3 == 0 ? 1UL : 0UL), ("valid", 1))));
        }
        var handler = new RecordHandler(_decoders, aggregator.Shards[0]);
        // Two pages of 150: the records are read before the VM's process is found.
        foreach (var chunk in records.Chunk(150))
        {
            var buffer = new ReadOnlySequence<byte>(Page(null, chunk));
            PageStreamParser.ParsePages(ref buffer, Fixture.PageHeader, ref handler);
        }
        proc.Vm(Vm, "qemu-system-x86", "qemu-system-x86_64\0-name\0guest=late\0", start: 5_000, threads: [(Cpu0Thread, "CPU 0/KVM")]);
        registry.Scan();

        List<MergedSeries> snapshot = aggregator.Snapshot().ToList();
        long Wakeups(HaltOutcome o) => snapshot.Where(s => s.Family == MetricFamily.HaltWakeups && s.Label1 == (uint)o && s.Vm == "late").Sum(s => s.Value);
        Assert.Equal(100, Wakeups(HaltOutcome.Waited));
        Assert.Equal(200, Wakeups(HaltOutcome.Immediate));
        Assert.Equal(0, Wakeups(HaltOutcome.Unknown));
        Assert.Equal((long)sum, snapshot.Where(s => s.Family == MetricFamily.HaltDuration).Sum(s => s.Histogram!.SumNs));
        Assert.Equal(300, snapshot.Where(s => s.Family == MetricFamily.HaltDuration).Sum(s => s.Histogram!.Count));
    }

    /// <summary>A VM's last records can be read after its process is seen gone (another CPU's ring is read later):
    /// the thread's state outlives the compaction of its series, so those halts still get their window.</summary>
    [Fact]
    public void Halts_read_after_the_vm_exited_still_know_their_window()
    {
        using var proc = new FakeProc(agentStart: 1_000);
        proc.Vm(Vm, "qemu-system-x86", "qemu-system-x86_64\0-name\0guest=gone\0", start: 5_000, threads: [(Cpu0Thread, "CPU 0/KVM")]);
        var registry = new VmRegistry(proc.Root);
        var aggregator = new Aggregator(1, registry);
        registry.Scan();
        EventFormat wake = _formats["kvm:kvm_vcpu_wakeup"];
        byte[] Wakeup(bool waited) => PayloadEncoder.Encode(wake, Cpu0Thread, ("ns", 2_000), ("waited", waited ? 1UL : 0UL), ("valid", 1));
        var handler = new RecordHandler(_decoders, aggregator.Shards[0]);
        void Feed(byte[] page)
        {
            var buffer = new ReadOnlySequence<byte>(page);
            PageStreamParser.ParsePages(ref buffer, Fixture.PageHeader, ref handler);
        }
        Feed(Page(null, (1_000, Wakeup(true)), (2_000, Wakeup(true))));
        proc.Exit(Vm);
        registry.Scan();
        aggregator.Maintain(DateTime.UtcNow); // compacts the exited thread's series
        Feed(Page(null, (3_000, Wakeup(true)), (4_000, Wakeup(false))));

        List<MergedSeries> snapshot = aggregator.Snapshot().ToList();
        long Wakeups(HaltOutcome o) => snapshot.Where(s => s.Family == MetricFamily.HaltWakeups && s.Label1 == (uint)o && s.Vm == "gone").Sum(s => s.Value);
        Assert.Equal(3, Wakeups(HaltOutcome.Waited));
        Assert.Equal(1, Wakeups(HaltOutcome.Immediate));
        Assert.Equal(0, Wakeups(HaltOutcome.Unknown));
    }

    /// <summary>A userspace exit counted on a thread of a running VM whose vCPU nothing tells (not named for one, no
    /// vCPU in its records, not seen blocked on a vCPU fd) is held back for a moment, then shown without a vCPU. It
    /// was held for as long as the VM ran: each fold looked the thread up afresh, and the moment began again.</summary>
    [Fact]
    public void Counts_of_a_thread_whose_vcpu_nothing_tells_are_shown_after_a_moment_not_when_its_vm_exits()
    {
        Read(0, Page(null, (1_000, UserspaceExit(Vm, 2))));
        IEnumerable<MergedSeries> UserspaceExits() => _aggregator.Snapshot().Where(s => s.Family == MetricFamily.UserspaceExits);
        _aggregator.Fold();
        Assert.Empty(UserspaceExits()); // its name, its records or its fd may still tell its vCPU
        Thread.Sleep(VmRegistry.UnresolvedGrace + TimeSpan.FromMilliseconds(300));
        _aggregator.Fold();
        MergedSeries shown = Assert.Single(UserspaceExits());
        Assert.Equal(("web", -1, 1L), (shown.Vm, shown.Vcpu, shown.Value));
    }
}
