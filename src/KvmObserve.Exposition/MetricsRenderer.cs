using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Series;
using KvmObserve.Aggregation.Storms;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Exposition;

/// <summary>Renders every metric family of the contract (README's table) from the aggregates.</summary>
public static partial class MetricsRenderer
{
    private static readonly (MetricFamily Family, string Name, string Help)[] Families =
    [
        (MetricFamily.Exits, "kvm_exits_total", "VM exits (kvm_exit) by ISA and exit reason."),
        (MetricFamily.FailedVmEntries, "kvm_exit_failed_vmentries_total", "VMX exits whose VM entry failed (FAILED_VMENTRY bit)."),
        (MetricFamily.UserspaceExits, "kvm_userspace_exits_total", "Returns of KVM_RUN to the VMM (kvm_userspace_exit) by KVM_EXIT reason."),
        (MetricFamily.Pio, "kvm_pio_total", "Port I/O exits (kvm_pio) by port and direction."),
        (MetricFamily.Mmio, "kvm_mmio_total", "MMIO accesses (kvm_mmio) by guest-physical page and direction."),
        (MetricFamily.Msr, "kvm_msr_total", "MSR accesses (kvm_msr) by MSR and direction."),
        (MetricFamily.Cpuid, "kvm_cpuid_total", "CPUID exits (kvm_cpuid) by leaf."),
        (MetricFamily.EmulatedInstructions, "kvm_emulated_instructions_total", "Instructions run by KVM's emulator (kvm_emulate_insn)."),
        (MetricFamily.InjectedExceptions, "kvm_injected_exceptions_total", "Exceptions injected into the guest (kvm_inj_exception) by vector."),
        (MetricFamily.HaltWakeups, "kvm_halt_wakeups_total", "vCPU wake-ups from halt (kvm_vcpu_wakeup) by outcome."),
        (MetricFamily.HaltPollNsChanges, "kvm_halt_poll_changes_total", "Changes of a vCPU's halt-poll window (kvm_halt_poll_ns) by direction."),
        (MetricFamily.MmuPageFaults, "kvm_mmu_page_faults_total", "Guest page faults handled by KVM's MMU by kind."),
        (MetricFamily.MmuEvents, "kvm_mmu_events_total", "KVM MMU events (kvmmmu tracepoints) by event."),
        (MetricFamily.ExitLatency, "kvm_exit_handling_seconds", "Time from kvm_exit to the thread's next kvm_entry, by exit reason."),
        (MetricFamily.UserspaceLatency, "kvm_userspace_exit_seconds", "Time from kvm_userspace_exit to the thread's next kvm event (the VMM's handling of the exit), by KVM_EXIT reason."),
        (MetricFamily.HaltDuration, "kvm_halt_seconds", "How long halts lasted (kvm_vcpu_wakeup), by outcome."),
    ];

    /// <summary>"le" values of the latency buckets, formatted once.</summary>
    private static readonly string[] BucketBounds = Enumerable.Range(0, LatencyBuckets.Bounds)
        .Select(i => LatencyBuckets.UpperBoundSeconds(i).ToString("R", CultureInfo.InvariantCulture).ToLowerInvariant()).Append("+Inf").ToArray();

    public static void Render(IBufferWriter<byte> output, ExpositionContext context, bool openMetrics = false) =>
        Render(new PrometheusTextWriter(output, openMetrics), context);

    /// <summary>Every family's header, no samples: what an empty aggregate renders.</summary>
    public static void RenderFamilies(MetricWriter w)
    {
        var registry = VmRegistry.WithoutProcfs();
        Render(w, new ExpositionContext
        {
            Aggregator = new Aggregator(1, registry, new AggregatorOptions { Threads = 16, ShardSeries = 16 }),
            SourceName = "",
            Tracepoints = [],
            ExitReasons = ExitReasonTables.BuiltIn,
            UserspaceExitReasons = new Dictionary<long, string>(),
            Schedstat = new SchedstatCollector(registry),
        });
    }

    [ThreadStatic]
    private static List<MergedSeries>? t_series;

    public static void Render(MetricWriter w, ExpositionContext context)
    {
        long started = Stopwatch.GetTimestamp();
        Aggregator aggregator = context.Aggregator;
        // One list per rendering thread, reused: scrapes may run at once, each renders on one thread.
        List<MergedSeries> series = t_series ??= new List<MergedSeries>();
        aggregator.Snapshot(series); // the source's collection: a counting source reads its counters here
        double collected = Stopwatch.GetElapsedTime(started).TotalSeconds;

        w.Family("kvm_vm_info", "gauge", "A KVM virtual machine (a process holding a KVM VM fd); always 1.");
        foreach (VmInfo vm in aggregator.Registry.Vms().OrderBy(v => v.Name, StringComparer.Ordinal))
            w.Begin("kvm_vm_info").Label("vm", vm.Name).Label("pid", vm.Pid).Label("vmm", vm.Vmm).Label("uuid", vm.Uuid)
                .Label("namespace", vm.Namespace).Label("pod_uid", vm.PodUid).Label("running", vm.ExitedAt is null ? "true" : "false").Value(1L);

        int at = 0;
        foreach ((MetricFamily family, string name, string help) in Families)
        {
            bool histogram = MetricFamilies.IsHistogram(family);
            w.Family(name, histogram ? "histogram" : "counter", help);
            while (at < series.Count && series[at].Family < family)
                at++;
            for (; at < series.Count && series[at].Family == family; at++)
            {
                if (series[at].Histogram is Histogram h)
                    WriteHistogram(w, name, series[at], h, context);
                else
                    WriteSeries(w, name, series[at], context);
            }
        }
        WriteHaltPollWindows(w, aggregator);
        WriteStorms(w, context.Storms);

        Collection schedstat = CollectSchedstat(w, context.Schedstat);
        WriteSelfMetrics(w, context);
        WriteCollectors(w, context, new Collection(aggregator.RefreshError is null && context.FailedReaders() == 0, collected), schedstat);
        ProcessMetrics.WriteRuntime(w);
        ProcessMetrics.Write(w);
        w.Family("kvmobserve_scrape_duration_seconds", "gauge", "Time spent rendering this scrape.");
        w.Begin("kvmobserve_scrape_duration_seconds").Value(Stopwatch.GetElapsedTime(started).TotalSeconds);
        w.End();
    }

    private static void WriteSeries(MetricWriter w, string name, in MergedSeries s, ExpositionContext context)
    {
        WriteLabels(w.Begin(name), s, context);
        w.Value(s.Value);
    }

    private static void WriteHistogram(MetricWriter w, string name, in MergedSeries s, Histogram h, ExpositionContext context)
    {
        string bucket = name + "_bucket";
        long cumulative = 0;
        for (int i = 0; i < h.Buckets.Length; i++)
        {
            cumulative += h.Buckets[i];
            WriteLabels(w.Begin(bucket), s, context);
            w.Label("le", BucketBounds[i]).Value(cumulative);
        }
        WriteLabels(w.Begin(name + "_sum"), s, context);
        w.Value(h.SumNs / 1e9);
        WriteLabels(w.Begin(name + "_count"), s, context);
        w.Value(cumulative);
    }

    /// <summary>The labels of a series: vm, vcpu where the family has it, then the family's own. A family's overflow
    /// series says "overflow" in each.</summary>
    private static void WriteLabels(MetricWriter w, in MergedSeries s, ExpositionContext context)
    {
        bool overflow = s.Label1 == SeriesTable.OverflowLabel && s.Vm == SeriesStore.OverflowVm;
        w.Label("vm", s.Vm);
        if (Aggregator.HasVcpuLabel(s.Family))
            w.Label("vcpu", overflow ? "overflow" : s.Vcpu >= 0 ? s.Vcpu.ToString(CultureInfo.InvariantCulture) : "unknown");
        if (overflow)
        {
            foreach (string label in LabelsOf(s.Family))
                w.Label(label, "overflow");
            return;
        }
        bool other = MetricFamilies.IsOther(s.Family, s.Label1, s.Label2); // past a shard's limit, or outside the top K
        switch (s.Family)
        {
            case MetricFamily.Exits:
                w.Label("isa", KvmIsa.Label((uint)s.Label2)).Label("reason", ExitReason(context, (uint)s.Label2, s.Label1));
                break;
            case MetricFamily.FailedVmEntries:
                w.Label("reason", ExitReason(context, KvmIsa.Vmx, s.Label1));
                break;
            case MetricFamily.ExitLatency:
                w.Label("reason", ExitReason(context, (uint)s.Label2, s.Label1));
                break;
            case MetricFamily.UserspaceExits:
            case MetricFamily.UserspaceLatency:
                w.Label("reason", s.Label2 switch
                {
                    0 when s.Label1 == MetricFamilies.OtherKey => "other",
                    0 => context.UserspaceExitReasons.GetValueOrDefault(s.Label1) ?? s.Label1.ToString(CultureInfo.InvariantCulture),
                    1 => "restart",
                    _ => "error",
                });
                break;
            case MetricFamily.Pio:
                w.Label("port", LabelValues.Key(s.Label1)).Label("direction", LabelValues.InOut(s.Label2));
                break;
            case MetricFamily.Mmio:
                w.Label("gpa_page", LabelValues.Page(s.Label2)).Label("direction", LabelValues.MmioDirection(s.Label1));
                break;
            case MetricFamily.Msr:
                w.Label("msr", LabelValues.Key(s.Label1)).Label("direction", LabelValues.ReadWrite(s.Label2));
                break;
            case MetricFamily.Cpuid:
                w.Label("leaf", LabelValues.Key(s.Label1));
                break;
            case MetricFamily.InjectedExceptions:
                w.Label("vector", other ? "other" : LabelValues.Vector(s.Label1));
                break;
            case MetricFamily.HaltWakeups:
            case MetricFamily.HaltDuration:
                w.Label("outcome", other ? "other" : LabelValues.HaltOutcome(s.Label1));
                break;
            case MetricFamily.HaltPollNsChanges:
                w.Label("direction", other ? "other" : s.Label1 != 0 ? "grow" : "shrink");
                break;
            case MetricFamily.MmuPageFaults:
                w.Label("kind", other ? "other" : LabelValues.PageFaultKind(s.Label1));
                break;
            case MetricFamily.MmuEvents:
                w.Label("event", other ? "other" : TracepointCatalog.EventName((KvmEventKind)s.Label1));
                break;
        }
    }

    /// <summary>The labels a family has besides vm and vcpu.</summary>
    private static string[] LabelsOf(MetricFamily family) => family switch
    {
        MetricFamily.Exits => ["isa", "reason"],
        MetricFamily.FailedVmEntries or MetricFamily.ExitLatency or MetricFamily.UserspaceExits or MetricFamily.UserspaceLatency => ["reason"],
        MetricFamily.Pio => ["port", "direction"],
        MetricFamily.Mmio => ["gpa_page", "direction"],
        MetricFamily.Msr => ["msr", "direction"],
        MetricFamily.Cpuid => ["leaf"],
        MetricFamily.InjectedExceptions => ["vector"],
        MetricFamily.HaltWakeups or MetricFamily.HaltDuration => ["outcome"],
        MetricFamily.HaltPollNsChanges => ["direction"],
        MetricFamily.MmuPageFaults => ["kind"],
        MetricFamily.MmuEvents => ["event"],
        _ => [],
    };

    /// <summary>Each vCPU's halt-poll window as its last kvm_halt_poll_ns left it.</summary>
    private static void WriteHaltPollWindows(MetricWriter w, Aggregator aggregator)
    {
        // kvm_halt_poll_ns in base units: promtool rejects "ns" in a metric name.
        w.Family("kvm_halt_poll_window_seconds", "gauge", "A vCPU's current halt-polling window, as its last kvm_halt_poll_ns set it.");
        var seen = new HashSet<(string, int)>();
        foreach ((int tid, int vcpu, long pollNs) in aggregator.States.Threads())
        {
            if (pollNs < 0)
                continue;
            ThreadIdentity who = aggregator.Registry.Resolve(tid);
            int index = vcpu >= 0 ? vcpu : who.Vcpu;
            // Only vCPU threads: a window seeded for a new VM's threads says nothing of a thread that never halts.
            if (index < 0 || who.Vm.ExitedAt is not null || !seen.Add((who.Vm.Name, index)))
                continue;
            w.Begin("kvm_halt_poll_window_seconds").Label("vm", who.Vm.Name)
                .Label("vcpu", index >= 0 ? index.ToString(CultureInfo.InvariantCulture) : "unknown").Value(pollNs / 1e9);
        }
    }

    /// <summary>The in-agent storm detector's view, per VM it has seen exits of.</summary>
    private static void WriteStorms(MetricWriter w, StormDetector? storms)
    {
        IReadOnlyList<VmStorms> vms = storms?.Vms() ?? [];
        w.Family("kvm_exit_storm_active", "gauge",
            "1 while the agent's detector sees the VM in an exit storm (exit rate over --storm-floor and --storm-factor times its baseline), else 0.");
        foreach (VmStorms vm in vms)
            w.Begin("kvm_exit_storm_active").Label("vm", vm.Vm).Value(vm.Active ? 1L : 0L);
        w.Family("kvmobserve_storms_total", "counter", "Exit storms the agent's detector saw start, per VM.");
        foreach (VmStorms vm in vms)
            w.Begin("kvmobserve_storms_total").Label("vm", vm.Vm).Value(vm.Storms);
    }

    /// <summary>vCPU threads per vCPU; the VMM's other threads (I/O, emulation, main loop) per VM.</summary>
    private static void WriteSchedstat(MetricWriter w, IReadOnlyList<SchedstatCollector.Totals> totals)
    {
        (string Name, string Help, bool Vcpu, bool Steal)[] families =
        [
            ("kvm_vcpu_run_seconds_total", "CPU time of each vCPU thread (schedstat).", true, false),
            ("kvm_vcpu_steal_seconds_total", "Time each vCPU thread was runnable but waiting for a host CPU (schedstat run_delay).", true, true),
            ("kvm_vmm_threads_run_seconds_total", "CPU time of the VMM's threads that are not vCPUs (schedstat).", false, false),
            ("kvm_vmm_threads_steal_seconds_total", "Time the VMM's other threads waited for a host CPU (schedstat run_delay).", false, true),
        ];
        foreach ((string name, string help, bool vcpu, bool steal) in families)
        {
            w.Family(name, "counter", help);
            foreach (SchedstatCollector.Totals t in totals)
            {
                if ((t.Vcpu >= 0) != vcpu)
                    continue;
                w.Begin(name).Label("vm", t.Vm);
                if (vcpu)
                    w.Label("vcpu", t.Vcpu);
                w.Value(steal ? t.StealSeconds : t.RunSeconds);
            }
        }
    }

    private static string ExitReason(ExpositionContext context, uint isa, uint reason) =>
        reason == MetricFamilies.OtherKey ? "other" : context.ExitReasons.Name(isa, reason);

    private static void WriteBpf(MetricWriter w, BpfSelf bpf)
    {
        w.Family("kvmobserve_bpf_stats_enabled", "gauge",
            "1 while the kernel accounts the BPF programs' run time (kernel.bpf_stats_enabled=1, or --bpf-stats true), else 0.");
        w.Begin("kvmobserve_bpf_stats_enabled").Value(bpf.CostAccounted ? 1L : 0L);
        w.Family("kvmobserve_bpf_program_runs_total", "counter", "Runs of each of the agent's BPF programs, as the kernel accounts them (while kvmobserve_bpf_stats_enabled is 1).");
        foreach ((string program, _, ulong runs) in bpf.Programs)
            w.Begin("kvmobserve_bpf_program_runs_total").Label("program", program).Value((long)runs);
        w.Family("kvmobserve_bpf_program_run_seconds_total", "counter", "Time the kernel spent running each of the agent's BPF programs: what the bpf source itself costs the guests (while kvmobserve_bpf_stats_enabled is 1).");
        foreach ((string program, ulong ns, _) in bpf.Programs)
            w.Begin("kvmobserve_bpf_program_run_seconds_total").Label("program", program).Value(ns / 1e9);
        w.Family("kvmobserve_bpf_map_full_total", "counter", "Increments of each family the bpf source's in-kernel map had no room for, even under \"other\" (raise --bpf-map-entries).");
        foreach ((MetricFamily family, string name, _) in Families)
            w.Begin("kvmobserve_bpf_map_full_total").Label("family", name).Value((int)family < bpf.MapFull.Count ? bpf.MapFull[(int)family] : 0);
        w.Family("kvmobserve_bpf_thread_state_full_total", "counter", "Events whose thread found no room in the in-kernel thread-state map (their latency pairing and halt poll window were skipped).");
        w.Begin("kvmobserve_bpf_thread_state_full_total").Value(bpf.StateFull);
    }

    private static void WriteSelfMetrics(MetricWriter w, ExpositionContext context)
    {
        Aggregator aggregator = context.Aggregator;
        string source = context.SourceName;

        w.Family("kvmobserve_events_total", "counter", "Records decoded, by source and tracepoint.");
        foreach (KvmEventKind kind in Enum.GetValues<KvmEventKind>())
        {
            if (kind == KvmEventKind.None)
                continue;
            long n = 0;
            foreach (Shard shard in aggregator.Shards)
                n += shard.EventsOf(kind);
            if (n > 0)
                w.Begin("kvmobserve_events_total").Label("source", source).Label("event", TracepointCatalog.EventName(kind)).Value(n);
        }

        w.Family("kvmobserve_events_unattributed_total", "counter",
            "Events counted in the kernel that no attached thread accounts for (a counting source attaches to new threads after their first events).");
        foreach (KvmEventKind kind in Enum.GetValues<KvmEventKind>())
        {
            long n = kind == KvmEventKind.None ? 0 : context.Unattributed(kind);
            if (n > 0)
                w.Begin("kvmobserve_events_unattributed_total").Label("source", source).Label("event", TracepointCatalog.EventName(kind)).Value(n);
        }

        w.Family("kvmobserve_source_info", "gauge", "The event source in use, what was asked for, and why it was picked.");
        w.Begin("kvmobserve_source_info").Label("source", source).Label("requested", context.SourceRequested)
            .Label("reason", context.SourceReason).Value(1L);

        w.Family("kvmobserve_events_lost_total", "counter", "Records the kernel dropped before the agent read them, by CPU.");
        foreach (Shard shard in aggregator.Shards)
            w.Begin("kvmobserve_events_lost_total").Label("source", source).Label("cpu", shard.Cpu).Value(shard.LostEvents);

        w.Family("kvmobserve_decode_errors_total", "counter", "Records or pages that could not be decoded (counted and skipped).");
        foreach (KvmEventKind kind in Enum.GetValues<KvmEventKind>())
        {
            long n = 0;
            foreach (Shard shard in aggregator.Shards)
                n += shard.DecodeErrorsOf(kind);
            if (n > 0 || kind == KvmEventKind.None)
                w.Begin("kvmobserve_decode_errors_total").Label("source", source).Label("event", TracepointCatalog.EventName(kind)).Value(n);
        }
        long corrupt = 0;
        foreach (Shard shard in aggregator.Shards)
            corrupt += shard.CorruptPages;
        w.Begin("kvmobserve_decode_errors_total").Label("source", source).Label("event", "page").Value(corrupt);

        w.Family("kvmobserve_reader_wakeups_total", "counter", "Times the source's threads woke to read the kernel (ring readers at their watermark or poll timeout; the bpf source to look for new series; perf-count at each poll timeout and open of /dev/kvm).");
        w.Begin("kvmobserve_reader_wakeups_total").Label("source", source).Value(context.Wakeups());

        if (context.AttachWindows?.Invoke() is (long windows, double seconds))
        {
            w.Family("kvmobserve_attach_windows_total", "counter",
                "perf-count: times its system-wide counters were started to catch threads not yet attached (a new VM, a vCPU without counters).");
            w.Begin("kvmobserve_attach_windows_total").Label("source", source).Value(windows);
            w.Family("kvmobserve_attach_window_seconds_total", "counter",
                "perf-count: time its system-wide counters ran; meanwhile the events of threads already attached are counted twice.");
            w.Begin("kvmobserve_attach_window_seconds_total").Label("source", source).Value(seconds);
        }

        w.Family("kvmobserve_read_bytes_total", "counter", "Bytes read from the kernel, by CPU.");
        foreach (Shard shard in aggregator.Shards)
            w.Begin("kvmobserve_read_bytes_total").Label("source", source).Label("cpu", shard.Cpu).Value(shard.BytesRead);

        if (context.Bpf?.Invoke() is BpfSelf bpf)
            WriteBpf(w, bpf);

        w.Family("kvmobserve_tracepoint_info", "gauge", "Each tracepoint the agent knows: present in this kernel, enabled by the agent.");
        foreach (TracepointRow row in context.Tracepoints)
        {
            w.Begin("kvmobserve_tracepoint_info").Label("event", row.Event)
                .Label("available", row.Available ? "true" : "false").Label("enabled", row.Enabled ? "true" : "false").Value(1L);
        }

        w.Family("kvmobserve_series", "gauge", "Label sets each family exports now (its overflow series not included; a histogram counts once).");
        foreach ((MetricFamily family, string name, _) in Families)
            w.Begin("kvmobserve_series").Label("family", name).Value(aggregator.SeriesOf(family));
        w.Family("kvmobserve_series_limit", "gauge", "The series limit of each family (--series-limit).");
        w.Begin("kvmobserve_series_limit").Value(aggregator.Options.FamilyLimit);
        w.Family("kvmobserve_series_overflow_total", "counter", "Events counted into a family's overflow series because a series limit was reached.");
        foreach ((MetricFamily family, string name, _) in Families)
            w.Begin("kvmobserve_series_overflow_total").Label("family", name).Value(aggregator.Overflow(family));

        w.Family("kvmobserve_latency_pairs_dropped_total", "counter",
            "Start/end pairs not measured: records were lost between them (gap), or one end never came (unmatched).");
        foreach (PairKind kind in Enum.GetValues<PairKind>())
        {
            foreach (PairDrop why in Enum.GetValues<PairDrop>())
            {
                long n = aggregator.States.PairsDropped(kind, why);
                w.Begin("kvmobserve_latency_pairs_dropped_total")
                    .Label("histogram", kind == PairKind.Exit ? "kvm_exit_handling_seconds" : "kvm_userspace_exit_seconds")
                    .Label("reason", why == PairDrop.Gap ? "gap" : "unmatched").Value(n);
            }
        }
        w.Family("kvmobserve_thread_state_full_total", "counter", "Records whose thread found no free state slot (no pairing or halt outcome for them).");
        w.Begin("kvmobserve_thread_state_full_total").Value(aggregator.States.Full);
    }
}
