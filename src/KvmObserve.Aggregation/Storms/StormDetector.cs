using KvmObserve.Aggregation.Series;

namespace KvmObserve.Aggregation.Storms;

/// <summary>
/// Tells within about a second when a VM goes into an exit storm: several times a second it reads each VM's and each
/// vCPU's exit counters, takes their rate over a short window and compares it with a moving baseline of the same
/// rate. A storm starts when the rate stays above both an absolute floor and <see cref="StormOptions.Factor"/> times
/// the baseline for <see cref="StormOptions.Hold"/>; it ends when it stays below that threshold for
/// <see cref="StormOptions.EndHold"/>. A VM is in a storm while its total or any one of its vCPUs is.
/// <para>
/// Exits are kvm_exit's counts where that tracepoint fires. Where it does not (software KVM backends), a VM's exits are
/// the exits other events see: returns to the VMM, MSR accesses, CPUID and halts (<see cref="ProxyFamilies"/>).
/// </para>
/// Not on the hot path: it reads the folded series store, like a scrape.
/// </summary>
public sealed class StormDetector(StormOptions options)
{
    /// <summary>Where kvm_exit fires.</summary>
    public const uint ExitFamilies = 1u << (int)MetricFamily.Exits;

    /// <summary>Where it does not: each is an exit kvm_exit would have counted, and they do not overlap much (a
    /// PIO or MMIO exit to the VMM is counted once, as its userspace exit).</summary>
    public const uint ProxyFamilies = 1u << (int)MetricFamily.UserspaceExits | 1u << (int)MetricFamily.Msr
        | 1u << (int)MetricFamily.Cpuid | 1u << (int)MetricFamily.HaltWakeups;

    private readonly object _gate = new();
    private readonly Dictionary<(string Vm, int Vcpu), Signal> _signals = new();
    private readonly Dictionary<string, VmState> _vms = new();
    private readonly List<CounterValue> _scratch = new();
    private readonly Dictionary<(string Vm, int Vcpu, MetricFamily Family, uint Label1, ulong Label2), long> _lastValue = new();
    private readonly Dictionary<(string Vm, int Vcpu), long> _totals = new();
    private readonly Dictionary<string, Dictionary<(MetricFamily, uint, ulong), long>> _reasons = new();

    public StormOptions Options { get; } = options;

    /// <summary>Names a counter series for the log ("pio 0x3f8 out", "exit HLT"); set by the agent, which knows the
    /// kernel's reason tables.</summary>
    public Func<MetricFamily, uint, ulong, string> Describe { get; set; } = static (f, l1, l2) => $"{f} {l1} {l2}";

    /// <summary>Called on the detector's thread when a VM's storm starts.</summary>
    public Action<StormStart>? Started { get; set; }

    /// <summary>Called on the detector's thread when a VM's storm ends.</summary>
    public Action<StormEnd>? Ended { get; set; }

    /// <summary>Reads the aggregator's exit counters (folding first) and looks at them as of <paramref name="now"/>
    /// (a monotonic time).</summary>
    public void Tick(Aggregator aggregator, TimeSpan now)
    {
        _scratch.Clear();
        aggregator.Counters(ExitFamilies | ProxyFamilies, _scratch);
        Observe(now, _scratch);
    }

    /// <summary>Looks at the counter totals of one moment. Pure but for the detector's own state: tests feed it
    /// counts and times directly.</summary>
    public void Observe(TimeSpan now, IReadOnlyList<CounterValue> counters)
    {
        lock (_gate)
        {
            // Totals are kept as sums of each series' growth: a keyed series (MSR, leaf) that leaves its VM's top K
            // is removed from the store, and its count must not be taken back.
            var seen = new HashSet<(string, int, MetricFamily, uint, ulong)>();
            var present = new HashSet<(string, int)>();
            var hasExits = new HashSet<string>();
            foreach (CounterValue c in counters)
            {
                if (c.Family == MetricFamily.Exits && c.Value > 0)
                    hasExits.Add(c.Vm);
            }
            foreach (CounterValue c in counters)
            {
                bool counts = hasExits.Contains(c.Vm) ? c.Family == MetricFamily.Exits : (ProxyFamilies & (1u << (int)c.Family)) != 0;
                if (!counts)
                    continue;
                var series = (c.Vm, c.Vcpu, c.Family, c.Label1, c.Label2);
                seen.Add(series);
                long last = _lastValue.GetValueOrDefault(series);
                long delta = c.Value >= last ? c.Value - last : c.Value; // a series that came back starts at zero
                _lastValue[series] = c.Value;
                present.Add((c.Vm, -1));
                _totals[(c.Vm, -1)] = _totals.GetValueOrDefault((c.Vm, -1)) + delta;
                if (c.Vcpu >= 0)
                {
                    present.Add((c.Vm, c.Vcpu));
                    _totals[(c.Vm, c.Vcpu)] = _totals.GetValueOrDefault((c.Vm, c.Vcpu)) + delta;
                }
                if (!_reasons.TryGetValue(c.Vm, out Dictionary<(MetricFamily, uint, ulong), long>? byReason))
                    _reasons[c.Vm] = byReason = new();
                (MetricFamily, uint, ulong) reason = (c.Family, c.Label1, c.Label2);
                byReason[reason] = byReason.GetValueOrDefault(reason) + delta;
            }
            foreach (var gone in _lastValue.Keys.Where(k => !seen.Contains(k)).ToList())
                _lastValue.Remove(gone);
            foreach ((string, int) gone in _totals.Keys.Where(k => !present.Contains(k)).ToList())
                _totals.Remove(gone); // the VM's series expired
            foreach (string gone in _reasons.Keys.Where(vm => !present.Contains((vm, -1))).ToList())
                _reasons.Remove(gone);
            var totals = _totals;
            var reasons = _reasons;

            foreach (((string vm, int vcpu), long total) in totals)
            {
                if (!_signals.TryGetValue((vm, vcpu), out Signal? signal))
                    _signals[(vm, vcpu)] = signal = new Signal(now);
                signal.Observe(now, total, Options);
            }
            foreach ((string, int) gone in _signals.Keys.Where(k => !totals.ContainsKey(k)).ToList())
                _signals.Remove(gone); // the VM's series expired

            foreach ((string vm, Dictionary<(MetricFamily, uint, ulong), long> byReason) in reasons)
            {
                if (!_vms.TryGetValue(vm, out VmState? state))
                    _vms[vm] = state = new VmState();
                state.Remember(now, new Dictionary<(MetricFamily, uint, ulong), long>(byReason), Options.Window);
                UpdateVm(vm, state, now);
            }
            foreach (string gone in _vms.Keys.Where(vm => !reasons.ContainsKey(vm)).ToList())
                _vms.Remove(gone);
        }
    }

    private void UpdateVm(string vm, VmState state, TimeSpan now)
    {
        Signal total = _signals[(vm, -1)];
        var stormingVcpus = new List<int>();
        foreach (((string v, int vcpu), Signal s) in _signals)
        {
            if (v == vm && vcpu >= 0 && s.Active)
                stormingVcpus.Add(vcpu);
        }
        stormingVcpus.Sort();
        bool active = total.Active || stormingVcpus.Count > 0;
        if (active == state.Active)
        {
            if (active)
                state.Peak = Math.Max(state.Peak, total.Rate);
            return;
        }
        state.Active = active;
        if (active)
        {
            state.Storms++;
            state.StartedAt = now;
            state.Peak = total.Rate;
            state.TotalAtStart = total.Last;
            Started?.Invoke(new StormStart(vm, total.Rate, total.Baseline, stormingVcpus, state.TopReasons(3, Describe)));
        }
        else
        {
            Ended?.Invoke(new StormEnd(vm, now - state.StartedAt, state.Peak, total.Last - state.TotalAtStart));
        }
    }

    /// <summary>Each VM the detector knows: whether it is in a storm now, and how many storms it had.</summary>
    public IReadOnlyList<VmStorms> Vms()
    {
        lock (_gate)
        {
            var list = new List<VmStorms>(_vms.Count);
            foreach ((string vm, VmState state) in _vms)
                list.Add(new VmStorms(vm, state.Active, state.Storms));
            list.Sort(static (a, b) => string.CompareOrdinal(a.Vm, b.Vm));
            return list;
        }
    }

    /// <summary>One VM's or one vCPU's exit rate and its baseline.</summary>
    private sealed class Signal(TimeSpan firstSeen)
    {
        private readonly Queue<(TimeSpan At, long Total)> _samples = new();
        private readonly TimeSpan _firstSeen = firstSeen;
        private int _warmupSamples;
        private TimeSpan? _aboveSince;
        private TimeSpan? _belowSince;
        private double _threshold;

        public bool Active { get; private set; }
        public double Rate { get; private set; }
        public double Baseline { get; private set; }
        public long Last { get; private set; }

        public void Observe(TimeSpan now, long total, StormOptions o)
        {
            TimeSpan previousAt = _samples.Count > 0 ? _samples.Last().At : now;
            Last = total;
            _samples.Enqueue((now, total));
            // Keep the newest sample at or before the window's start, so the rate always spans the whole window.
            while (_samples.Count > 2 && _samples.ElementAt(1).At <= now - o.Window)
                _samples.Dequeue();
            (TimeSpan oldestAt, long oldestTotal) = _samples.Peek();
            if (_samples.Count < 2 || now <= oldestAt)
                return;
            Rate = (total - oldestTotal) / (now - oldestAt).TotalSeconds;

            if (Active)
            {
                if (Rate >= _threshold)
                {
                    _belowSince = null;
                    return;
                }
                _belowSince ??= now;
                if (now - _belowSince.Value >= o.EndHold)
                {
                    Active = false;
                    _belowSince = null;
                }
                return;
            }

            double threshold = Math.Max(o.FloorPerSecond, o.Factor * Baseline);
            bool warm = now - _firstSeen >= o.Warmup;
            if (warm && Rate >= threshold)
            {
                _aboveSince ??= now;
                if (now - _aboveSince.Value >= o.Hold)
                {
                    Active = true;
                    _threshold = threshold; // the baseline stays where it was before the storm
                    _aboveSince = null;
                }
                return;
            }
            _aboveSince = null;
            if (!warm)
            {
                Baseline += (Rate - Baseline) / ++_warmupSamples; // the mean of what was seen so far
                return;
            }
            double alpha = 1 - Math.Exp(-(now - previousAt).TotalSeconds / o.Baseline.TotalSeconds);
            Baseline += alpha * (Rate - Baseline);
        }
    }

    /// <summary>One VM: its storm state and its exits by reason over the last window (for the start line).</summary>
    private sealed class VmState
    {
        private readonly Queue<(TimeSpan At, Dictionary<(MetricFamily, uint, ulong), long> Counts)> _history = new();

        public bool Active;
        public long Storms;
        public TimeSpan StartedAt;
        public double Peak;
        public long TotalAtStart;

        public void Remember(TimeSpan now, Dictionary<(MetricFamily, uint, ulong), long> counts, TimeSpan window)
        {
            _history.Enqueue((now, counts));
            while (_history.Count > 2 && _history.ElementAt(1).At <= now - window)
                _history.Dequeue();
        }

        /// <summary>The reasons that grew most over the window, with their share of the growth.</summary>
        public IReadOnlyList<(string Reason, double Share)> TopReasons(int n, Func<MetricFamily, uint, ulong, string> describe)
        {
            Dictionary<(MetricFamily, uint, ulong), long> oldest = _history.Peek().Counts;
            Dictionary<(MetricFamily, uint, ulong), long> newest = _history.Last().Counts;
            var growth = newest.Select(kv => (kv.Key, Delta: kv.Value - oldest.GetValueOrDefault(kv.Key)))
                .Where(g => g.Delta > 0).OrderByDescending(g => g.Delta).ToList();
            double all = growth.Sum(g => (double)g.Delta);
            return growth.Take(n).Select(g => (describe(g.Key.Item1, g.Key.Item2, g.Key.Item3), g.Delta / all)).ToList();
        }
    }
}

/// <summary>A VM's storm began: its exit rate, the baseline it was measured against, the vCPUs over the threshold on
/// their own, and the reasons that grew most.</summary>
public sealed record StormStart(string Vm, double Rate, double Baseline, IReadOnlyList<int> Vcpus,
    IReadOnlyList<(string Reason, double Share)> TopReasons);

/// <summary>A VM's storm ended.</summary>
public sealed record StormEnd(string Vm, TimeSpan Duration, double PeakRate, long Exits);

/// <summary>A row of kvm_exit_storm_active and kvmobserve_storms_total.</summary>
public readonly record struct VmStorms(string Vm, bool Active, long Storms);
