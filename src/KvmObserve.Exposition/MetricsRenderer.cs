using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Exposition;

/// <summary>Renders every metric family of the contract (README's table) from the aggregates.</summary>
public static class MetricsRenderer
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
    ];

    public static void Render(IBufferWriter<byte> output, ExpositionContext context)
    {
        long started = Stopwatch.GetTimestamp();
        var w = new PrometheusTextWriter(output);
        Aggregator aggregator = context.Aggregator;
        IReadOnlyList<MergedSeries> series = aggregator.Snapshot();

        w.Family("kvm_vm_info", "gauge", "A KVM virtual machine (a process holding a KVM VM fd); always 1.");
        foreach (VmInfo vm in aggregator.Registry.Vms().OrderBy(v => v.Name, StringComparer.Ordinal))
            w.Begin("kvm_vm_info").Label("vm", vm.Name).Label("pid", vm.Pid).Label("vmm", vm.Vmm).Label("uuid", vm.Uuid).Value(1L);

        var seriesPerFamily = new int[MetricFamilies.Count];
        int at = 0;
        foreach ((MetricFamily family, string name, string help) in Families)
        {
            w.Family(name, "counter", help);
            while (at < series.Count && series[at].Family < family)
                at++;
            for (; at < series.Count && series[at].Family == family; at++)
            {
                WriteSeries(w, name, series[at], context);
                seriesPerFamily[(int)family]++;
            }
        }

        if (context.Schedstat is not null)
            WriteSchedstat(w, context.Schedstat.Collect());
        WriteSelfMetrics(w, context, seriesPerFamily);
        w.Family("kvmobserve_scrape_duration_seconds", "gauge", "Time spent rendering this scrape.");
        w.Begin("kvmobserve_scrape_duration_seconds").Value(Stopwatch.GetElapsedTime(started).TotalSeconds);
    }

    private static void WriteSeries(PrometheusTextWriter w, string name, in MergedSeries s, ExpositionContext context)
    {
        w.Begin(name).Label("vm", s.Vm);
        if (Aggregator.HasVcpuLabel(s.Family))
            w.Label("vcpu", s.Vcpu >= 0 ? s.Vcpu.ToString(CultureInfo.InvariantCulture) : "unknown");
        switch (s.Family)
        {
            case MetricFamily.Exits:
                w.Label("isa", KvmIsa.Label((uint)s.Label2)).Label("reason", ExitReason(context, (uint)s.Label2, s.Label1));
                break;
            case MetricFamily.FailedVmEntries:
                w.Label("reason", ExitReason(context, KvmIsa.Vmx, s.Label1));
                break;
            case MetricFamily.UserspaceExits:
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
                w.Label("vector", LabelValues.Vector(s.Label1));
                break;
            case MetricFamily.HaltWakeups:
                w.Label("outcome", LabelValues.HaltOutcome(s.Label1));
                break;
            case MetricFamily.HaltPollNsChanges:
                w.Label("direction", s.Label1 != 0 ? "grow" : "shrink");
                break;
            case MetricFamily.MmuPageFaults:
                w.Label("kind", LabelValues.PageFaultKind(s.Label1));
                break;
            case MetricFamily.MmuEvents:
                w.Label("event", TracepointCatalog.EventName((KvmEventKind)s.Label1));
                break;
        }
        w.Value(s.Value);
    }

    /// <summary>vCPU threads per vCPU; the VMM's other threads (I/O, emulation, main loop) per VM.</summary>
    private static void WriteSchedstat(PrometheusTextWriter w, IReadOnlyList<SchedstatCollector.Totals> totals)
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

    private static void WriteSelfMetrics(PrometheusTextWriter w, ExpositionContext context, int[] seriesPerFamily)
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

        w.Family("kvmobserve_read_bytes_total", "counter", "Bytes read from the kernel, by CPU.");
        foreach (Shard shard in aggregator.Shards)
            w.Begin("kvmobserve_read_bytes_total").Label("source", source).Label("cpu", shard.Cpu).Value(shard.BytesRead);

        w.Family("kvmobserve_tracepoint_info", "gauge", "Each tracepoint the agent knows: present in this kernel, enabled by the agent.");
        foreach (TracepointRow row in context.Tracepoints)
        {
            w.Begin("kvmobserve_tracepoint_info").Label("event", row.Event)
                .Label("available", row.Available ? "true" : "false").Label("enabled", row.Enabled ? "true" : "false").Value(1L);
        }

        w.Family("kvmobserve_series", "gauge", "Series currently exported, by family.");
        foreach ((MetricFamily family, string name, _) in Families)
            w.Begin("kvmobserve_series").Label("family", name).Value(seriesPerFamily[(int)family]);
        w.Family("kvmobserve_series_overflow_total", "counter", "Events counted into the overflow series because a series limit was reached.");
        foreach ((MetricFamily family, string name, _) in Families)
            w.Begin("kvmobserve_series_overflow_total").Label("family", name).Value(aggregator.Overflow(family));
    }
}
