using System.Diagnostics.Metrics;

namespace KvmObserve.Exposition;

/// <summary>
/// The metric contract as OpenTelemetry observable instruments on one <see cref="Meter"/>: each collection renders the
/// aggregates through <see cref="MetricsRenderer"/> into samples (the same code /metrics runs, no second hot path) and
/// each instrument reports its family's samples, labels as attributes. A counter family becomes an observable counter,
/// a gauge an observable gauge, and a histogram two counters, NAME.count and NAME.sum (the .NET SDK has no observable
/// histogram; the buckets are on /metrics). Names follow <see cref="OtelNames"/>.
/// </summary>
public sealed class OtelInstruments : IDisposable
{
    public const string MeterName = "KvmObserve";

    private readonly Func<ExpositionContext?> _context;
    private readonly Meter _meter;
    private readonly object _gate = new();
    private Dictionary<string, List<Sample>> _samples = [];
    private long _renderedAt;
    private bool _rendered;
    private readonly long _freshTicks;

    public OtelInstruments(Func<ExpositionContext?> context, string version, TimeSpan fresh)
    {
        _context = context;
        _freshTicks = (long)(fresh.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
        _meter = new Meter(MeterName, version);
        foreach ((string name, string type, string help) in OtelNames.Families)
            Create(name, type, help);
    }

    public void Dispose() => _meter.Dispose();

    private void Create(string family, string type, string help)
    {
        (string otel, string? unit) = OtelNames.Of(family, type);
        bool seconds = unit == "s";
        switch (type)
        {
            case "counter" when seconds:
                _meter.CreateObservableCounter(otel, () => Doubles(family), unit, help);
                break;
            case "counter":
                _meter.CreateObservableCounter(otel, () => Longs(family), unit, help);
                break;
            case "gauge" when seconds:
                _meter.CreateObservableGauge(otel, () => Doubles(family), unit, help);
                break;
            case "gauge":
                _meter.CreateObservableGauge(otel, () => Longs(family), unit, help);
                break;
            case "histogram":
                _meter.CreateObservableCounter(otel + ".count", () => Longs(family + "_count"), "{observation}", help + " (count)");
                _meter.CreateObservableCounter(otel + ".sum", () => Doubles(family + "_sum"), unit, help + " (sum)");
                break;
        }
    }

    private IEnumerable<Measurement<long>> Longs(string sampleName) =>
        SamplesOf(sampleName).Select(s => new Measurement<long>((long)s.Value, s.Tags));

    private IEnumerable<Measurement<double>> Doubles(string sampleName) =>
        SamplesOf(sampleName).Select(s => new Measurement<double>(s.Value, s.Tags));

    /// <summary>The samples named <paramref name="sampleName"/> of the latest rendering; one rendering serves every
    /// instrument of a collection (it is redone once it is older than the freshness given).</summary>
    private List<Sample> SamplesOf(string sampleName)
    {
        lock (_gate)
        {
            long now = System.Diagnostics.Stopwatch.GetTimestamp();
            if ((!_rendered || now - _renderedAt > _freshTicks) && _context() is { } context)
            {
                var collector = new SampleCollector();
                MetricsRenderer.Render(collector, context);
                _samples = collector.Samples;
                _renderedAt = now;
                _rendered = true;
            }
            return _samples.GetValueOrDefault(sampleName) ?? [];
        }
    }

    private readonly record struct Sample(KeyValuePair<string, object?>[] Tags, double Value);

    /// <summary>Collects what the renderer writes, per sample name.</summary>
    private sealed class SampleCollector : MetricWriter
    {
        private string _name = "";
        private readonly List<KeyValuePair<string, object?>> _tags = [];

        public Dictionary<string, List<Sample>> Samples { get; } = [];

        public override void Family(string name, string type, string help)
        {
        }

        public override MetricWriter Begin(string metricName)
        {
            _name = metricName;
            _tags.Clear();
            return this;
        }

        public override MetricWriter Label(string name, string value)
        {
            _tags.Add(new(name, value));
            return this;
        }

        public override MetricWriter Label(string name, long value) => Label(name, value.ToString(System.Globalization.CultureInfo.InvariantCulture));

        public override void Value(long value) => Value((double)value);

        public override void Value(double value)
        {
            if (_name.EndsWith("_bucket", StringComparison.Ordinal))
                return; // histogram buckets: /metrics only
            if (!Samples.TryGetValue(_name, out List<Sample>? list))
                Samples[_name] = list = [];
            list.Add(new Sample(_tags.ToArray(), value));
        }
    }
}

/// <summary>
/// OpenTelemetry names of the Prometheus families (README's mapping table). kvm families have chosen names in OTel
/// style (dots for namespaces, no _total, the unit apart); kvmobserve's own follow one rule: "kvmobserve_" becomes
/// "kvmobserve.", "_total" goes, and "_seconds" becomes unit s.
/// </summary>
public static class OtelNames
{
    private static readonly Dictionary<string, string> Chosen = new()
    {
        ["kvm_vm_info"] = "kvm.vm.info",
        ["kvm_exits_total"] = "kvm.exit.count",
        ["kvm_exit_failed_vmentries_total"] = "kvm.exit.failed_vmentry.count",
        ["kvm_userspace_exits_total"] = "kvm.userspace_exit.count",
        ["kvm_pio_total"] = "kvm.pio.count",
        ["kvm_mmio_total"] = "kvm.mmio.count",
        ["kvm_msr_total"] = "kvm.msr.count",
        ["kvm_cpuid_total"] = "kvm.cpuid.count",
        ["kvm_emulated_instructions_total"] = "kvm.emulated_instruction.count",
        ["kvm_injected_exceptions_total"] = "kvm.injected_exception.count",
        ["kvm_halt_wakeups_total"] = "kvm.halt.wakeup.count",
        ["kvm_halt_poll_changes_total"] = "kvm.halt_poll.change.count",
        ["kvm_mmu_page_faults_total"] = "kvm.mmu.page_fault.count",
        ["kvm_mmu_events_total"] = "kvm.mmu.event.count",
        ["kvm_exit_handling_seconds"] = "kvm.exit.handling.duration",
        ["kvm_userspace_exit_seconds"] = "kvm.userspace_exit.duration",
        ["kvm_halt_seconds"] = "kvm.halt.duration",
        ["kvm_halt_poll_window_seconds"] = "kvm.halt_poll.window",
        ["kvm_exit_storm_active"] = "kvm.exit.storm.active",
        ["kvm_vcpu_run_seconds_total"] = "kvm.vcpu.run.time",
        ["kvm_vcpu_steal_seconds_total"] = "kvm.vcpu.steal.time",
        ["kvm_vmm_threads_run_seconds_total"] = "kvm.vmm_threads.run.time",
        ["kvm_vmm_threads_steal_seconds_total"] = "kvm.vmm_threads.steal.time",
    };

    /// <summary>Every family the renderer writes (learnt by rendering an empty aggregate once).</summary>
    public static IReadOnlyList<(string Name, string Type, string Help)> Families { get; } = FamilyList.Learn();

    public static (string Name, string? Unit) Of(string family, string type)
    {
        string? unit = family.EndsWith("_seconds", StringComparison.Ordinal) || family.EndsWith("_seconds_total", StringComparison.Ordinal) ? "s"
            : family.EndsWith("_bytes_total", StringComparison.Ordinal) ? "By" : null;
        if (Chosen.TryGetValue(family, out string? chosen))
            return (chosen, unit);
        string n = type == "counter" && family.EndsWith("_total", StringComparison.Ordinal) ? family[..^"_total".Length] : family;
        if (n.EndsWith("_seconds", StringComparison.Ordinal))
            n = n[..^"_seconds".Length];
        int first = n.IndexOf('_');
        return (first < 0 ? n : n[..first] + "." + n[(first + 1)..], unit);
    }

    private sealed class FamilyList : MetricWriter
    {
        private readonly List<(string, string, string)> _families = [];

        public static List<(string, string, string)> Learn()
        {
            var list = new FamilyList();
            MetricsRenderer.RenderFamilies(list);
            return list._families;
        }

        public override void Family(string name, string type, string help) => _families.Add((name, type, help));
        public override MetricWriter Begin(string metricName) => this;
        public override MetricWriter Label(string name, string value) => this;
        public override MetricWriter Label(string name, long value) => this;
        public override void Value(long value) { }
        public override void Value(double value) { }
    }
}
