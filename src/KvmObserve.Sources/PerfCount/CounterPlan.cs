using System.Globalization;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Sources.PerfCount;

/// <summary>One perf counter of a thread's group: a tracepoint, and the ftrace filter the kernel applies (null: all).</summary>
public sealed record CounterSpec(Tracepoint Tracepoint, int Id, string? Filter);

/// <summary>One series the counters give: the sum of the Plus counters minus the Minus ones ("other" is a tracepoint's
/// total less what its listed keys took).</summary>
public sealed record OutputSpec(MetricFamily Family, uint Label1, ulong Label2, int[] Plus, int[] Minus);

/// <summary>
/// What a counting source counts on one thread, in the manner of kvm_stat: per tracepoint an unfiltered total and, for
/// the families <see cref="CountingKeys.Keyed"/> names, one counter per key value, the filter set in the kernel
/// (exit_reason == N for each reason of the host's table, errno == 0 &amp;&amp; reason == N for userspace exits, ...).
/// Keys that are not counted on their own (families not keyed, values outside the lists, MMIO addresses) are labelled
/// <see cref="Other"/>: the total less the keys; so are directions unless <see cref="KeyedFamilies.Directions"/> is
/// keyed (<see cref="OtherDirection"/>). Pure: built from the decoders' statuses and tables, no I/O.
/// </summary>
public sealed class CounterPlan
{
    /// <summary>The label value of "every key not counted on its own".</summary>
    public const uint Other = MetricFamilies.OtherKey;
    public const ulong OtherPage = MetricFamilies.OtherPage;
    public const uint OtherDirection = MetricFamilies.OtherDirection;

    private readonly List<CounterSpec> _counters = new();
    private readonly List<OutputSpec> _outputs = new();
    private readonly List<(KvmEventKind Kind, int Counter)> _totals = new();

    public IReadOnlyList<CounterSpec> Counters => _counters;
    public IReadOnlyList<OutputSpec> Outputs => _outputs;

    /// <summary>The unfiltered counter of each tracepoint: what kvmobserve_events_total reports.</summary>
    public IReadOnlyList<(KvmEventKind Kind, int Counter)> Totals => _totals;

    /// <summary>Everything a vCPU thread can produce.</summary>
    public static CounterPlan ForVcpuThreads(KvmEventDecoders decoders, Func<Tracepoint, bool> wanted, uint hostIsa, CountingKeys keys)
    {
        var plan = new CounterPlan();
        foreach (TracepointStatus s in decoders.Statuses)
        {
            if (s.Available && wanted(s.Tracepoint))
                plan.Add(s, decoders, hostIsa, keys);
        }
        return plan;
    }

    /// <summary>What other threads of a VMM produce: the kvmmmu events (zaps and the like run where they are asked for).</summary>
    public static CounterPlan ForOtherThreads(KvmEventDecoders decoders, Func<Tracepoint, bool> wanted)
    {
        var plan = new CounterPlan();
        foreach (TracepointStatus s in decoders.Statuses)
        {
            if (s.Available && wanted(s.Tracepoint) && IsCountOnlyMmu(s.Tracepoint.Kind))
                plan.Add(s, decoders, 0, new CountingKeys());
        }
        return plan;
    }

    /// <summary>Totals only, one per tracepoint: the system-wide counters that find events of threads not yet attached.</summary>
    public static CounterPlan TotalsOnly(KvmEventDecoders decoders, Func<Tracepoint, bool> wanted)
    {
        var plan = new CounterPlan();
        foreach (TracepointStatus s in decoders.Statuses)
        {
            if (s.Available && wanted(s.Tracepoint))
                plan.Total(s);
        }
        return plan;
    }

    /// <summary>An output's value from one group read: plus counters less minus counters, never below zero.</summary>
    public static long Evaluate(OutputSpec output, ReadOnlySpan<long> counters)
    {
        long value = 0;
        foreach (int c in output.Plus)
            value += counters[c];
        foreach (int c in output.Minus)
            value -= counters[c];
        return Math.Max(0, value);
    }

    private static bool IsCountOnlyMmu(KvmEventKind kind) => kind >= KvmEventKind.MmuSpteRequested;

    private int Total(TracepointStatus s)
    {
        int index = Counter(s, null);
        _totals.Add((s.Tracepoint.Kind, index));
        return index;
    }

    private int Counter(TracepointStatus s, string? filter)
    {
        _counters.Add(new CounterSpec(s.Tracepoint, s.Id, filter));
        return _counters.Count - 1;
    }

    private void Output(MetricFamily family, uint label1, ulong label2, int[] plus, int[]? minus = null) =>
        _outputs.Add(new OutputSpec(family, label1, label2, plus, minus ?? []));

    /// <summary>One series per key, and "other" = base less the keys, when anything can be left over.</summary>
    private void Keyed(TracepointStatus s, MetricFamily family, int baseCounter, IEnumerable<(uint Label1, ulong Label2, string Filter)> keys,
        uint otherLabel1, ulong otherLabel2)
    {
        var taken = new List<int>();
        foreach ((uint l1, ulong l2, string filter) in keys)
        {
            int c = Counter(s, filter);
            taken.Add(c);
            Output(family, l1, l2, [c]);
        }
        Output(family, otherLabel1, otherLabel2, [baseCounter], taken.ToArray());
    }

    private void Add(TracepointStatus s, KvmEventDecoders decoders, uint hostIsa, CountingKeys keys)
    {
        int total = Total(s);
        bool Keys(KeyedFamilies f) => (keys.Keyed & f) != 0;
        switch (s.Tracepoint.Kind)
        {
            case KvmEventKind.Exit:
                uint isa = hostIsa != 0 ? hostIsa : KvmIsa.Vmx;
                if (!Keys(KeyedFamilies.Exits))
                {
                    Output(MetricFamily.Exits, Other, isa, [total]);
                    break;
                }
                Keyed(s, MetricFamily.Exits, total,
                    decoders.ExitReasons.Reasons(isa).Select(r => (r, (ulong)isa, $"exit_reason == {N(r)}")), Other, isa);
                if (isa == KvmIsa.Vmx)
                    Output(MetricFamily.FailedVmEntries, Other, 0, [Counter(s, $"exit_reason & {N(KvmIsa.VmxFailedVmEntry)}")]);
                break;
            case KvmEventKind.UserspaceExit:
                IEnumerable<(uint, ulong, string)> reasons = !Keys(KeyedFamilies.UserspaceExits) ? []
                    : decoders.UserspaceExitReasons.Keys.Order()
                        .Select(r => ((uint)r, 0UL, $"errno == 0 && reason == {N((uint)r)}"))
                        .Append((0u, 1UL, "errno == -4"))          // KVM_RUN interrupted: a restart
                        .Append((0u, 2UL, "errno < 0 && errno != -4"));
                Keyed(s, MetricFamily.UserspaceExits, total, reasons, Other, 0);
                break;
            case KvmEventKind.Pio:
                PerDirection(s, total, MetricFamily.Pio, Keys(KeyedFamilies.Directions) ? "rw" : null, Keys(KeyedFamilies.Ports) ? keys.Ports : [], "port");
                break;
            case KvmEventKind.Mmio:
                if (!Keys(KeyedFamilies.Directions))
                {
                    Output(MetricFamily.Mmio, OtherDirection, OtherPage, [total]);
                    break;
                }
                // KVM_TRACE_MMIO_READ_UNSATISFIED, _READ, _WRITE: the address is not countable, the type is (the
                // writes are what the other two leave)
                int unsatisfied = Counter(s, "type == 0"), read = Counter(s, "type == 1");
                Output(MetricFamily.Mmio, 0, OtherPage, [unsatisfied]);
                Output(MetricFamily.Mmio, 1, OtherPage, [read]);
                Output(MetricFamily.Mmio, 2, OtherPage, [total], [unsatisfied, read]);
                break;
            case KvmEventKind.Msr:
                PerDirection(s, total, MetricFamily.Msr, Keys(KeyedFamilies.Directions) ? "write" : null, Keys(KeyedFamilies.Msrs) ? keys.Msrs : [], "ecx");
                break;
            case KvmEventKind.Cpuid:
                Keyed(s, MetricFamily.Cpuid, total,
                    Keys(KeyedFamilies.CpuidLeaves) ? keys.CpuidLeaves.Select(l => (l, 0UL, $"function == {N(l)}")) : [], Other, 0);
                break;
            case KvmEventKind.EmulateInsn:
                Output(MetricFamily.EmulatedInstructions, 0, 0, [total]);
                break;
            case KvmEventKind.InjectedException:
                Keyed(s, MetricFamily.InjectedExceptions, total,
                    Keys(KeyedFamilies.Vectors) ? CountingKeys.Vectors.Select(v => (v, 0UL, $"exception == {v}")) : [], Other, 0);
                break;
            case KvmEventKind.VcpuWakeup:
                // The sink's outcomes: not waited = the halt ended while polling; the rest waited
                Keyed(s, MetricFamily.HaltWakeups, total, [((uint)HaltOutcome.PollSuccess, 0UL, "waited == 0")], (uint)HaltOutcome.Waited, 0);
                break;
            case KvmEventKind.HaltPollNs:
                Keyed(s, MetricFamily.HaltPollNsChanges, total, [(1u, 0UL, "grow != 0")], 0, 0);
                break;
            case KvmEventKind.PageFault:
                PageFaultKinds(s);
                break;
            case KvmEventKind.FastPageFault:
                Keyed(s, MetricFamily.MmuPageFaults, total,
                    [((uint)PageFaultKind.FastFixed, 0UL, "ret == 5"), ((uint)PageFaultKind.FastSpurious, 0UL, "ret == 6")],
                    (uint)PageFaultKind.FastNotFixed, 0);
                break;
            case KvmEventKind.Entry:
                break; // counted (total) only: it feeds exit latency, which needs records
            default:
                Output(MetricFamily.MmuEvents, (uint)s.Tracepoint.Kind, 0, [total]);
                break;
        }
    }

    /// <summary>Listed keys per direction, and per direction the rest as "other". One counter tells the directions
    /// apart (direction 1); direction 0 is what the total leaves. Without a direction field (directions not keyed) the
    /// keys and the rest are counted both ways together, under direction "other".</summary>
    private void PerDirection(TracepointStatus s, int total, MetricFamily family, string? directionField, IReadOnlyList<uint> keys, string keyField)
    {
        if (directionField is null)
        {
            Keyed(s, family, total, keys.Select(k => (k, (ulong)OtherDirection, $"{keyField} == {N(k)}")), Other, OtherDirection);
            return;
        }
        int ones = Counter(s, $"{directionField} == 1");
        for (uint direction = 0; direction <= 1; direction++)
        {
            uint d = direction;
            var taken = new List<int>();
            foreach (uint k in keys)
            {
                int c = Counter(s, $"{keyField} == {N(k)} && {directionField} == {d}");
                taken.Add(c);
                Output(family, k, d, [c]);
            }
            if (d == 1)
                Output(family, Other, d, [ones], taken.ToArray());
            else
                Output(family, Other, d, [total], [ones, .. taken]);
        }
    }

    /// <summary>The kinds of AggregatingSink.ClassifyFault, as filters on PFERR_* bits of error_code.</summary>
    private void PageFaultKinds(TracepointStatus s)
    {
        const string notReserved = "!(error_code & 8)";
        (PageFaultKind Kind, string Filter)[] kinds =
        [
            (PageFaultKind.ReservedBits, "error_code & 8"),
            (PageFaultKind.NotPresentExec, $"{notReserved} && (error_code & 16) && !(error_code & 1)"),
            (PageFaultKind.ProtectionExec, $"{notReserved} && (error_code & 16) && (error_code & 1)"),
            (PageFaultKind.NotPresentWrite, $"{notReserved} && !(error_code & 16) && (error_code & 2) && !(error_code & 1)"),
            (PageFaultKind.ProtectionWrite, $"{notReserved} && !(error_code & 16) && (error_code & 2) && (error_code & 1)"),
            (PageFaultKind.NotPresentRead, $"{notReserved} && !(error_code & 16) && !(error_code & 2) && !(error_code & 1)"),
            (PageFaultKind.ProtectionRead, $"{notReserved} && !(error_code & 16) && !(error_code & 2) && (error_code & 1)"),
        ];
        foreach ((PageFaultKind kind, string filter) in kinds)
            Output(MetricFamily.MmuPageFaults, (uint)kind, 0, [Counter(s, filter)]);
    }

    private static string N(uint value) => value.ToString(CultureInfo.InvariantCulture);
}
