using System.Globalization;
using System.Text;
using System.Text.Json;
using KvmObserve.Decoding.Events;
using KvmObserve.Workload;

namespace KvmObserve.Agent.Overhead;

/// <summary>What one arm measured over every round.</summary>
public sealed class ArmResult(string key, string name)
{
    /// <summary>What the arm was asked as: "none", a source (bpf, tracefs, ...) or a reference (drain, bpftrace, ...).</summary>
    public string Key { get; } = key;

    public string Name { get; } = name;

    /// <summary>Round-trip time per exit of each round (ns).</summary>
    public List<double> PerExitNs { get; } = new();

    /// <summary>Each round's baseline for this arm: the mean round trip per exit (ns) of two runs with no probes, one
    /// right before the observer started and one right after it stopped.</summary>
    public List<double> BaselineNs { get; } = new();

    /// <summary>The observer's own CPU time per exit of each round (ns; empty where not its cost).</summary>
    public List<double> CpuPerExitNs { get; } = new();

    /// <summary>Events of the driven kind the observer reported seeing, per round.</summary>
    public List<long> Observed { get; } = new();

    /// <summary>The agent's own metrics' increase over each round (<see cref="ObserverRun.Self"/>); empty for others.</summary>
    public List<IReadOnlyDictionary<string, double>> Self { get; } = new();

    public double Median => Stats.Median(PerExitNs);

    /// <summary>ns added per exit: the median over rounds of this arm's time minus its baseline in that round (runs
    /// a second or ten apart): the machine's drift cancels. For the arm without probes it is the noise floor.</summary>
    public double Added => Stats.Median(PerExitNs.Zip(BaselineNs, (a, b) => a - b).ToList());

    /// <summary>What this arm added in each round (its time less that round's baseline), in round order.</summary>
    public IReadOnlyList<double> AddedPerRound => PerExitNs.Zip(BaselineNs, (a, b) => a - b).ToList();

    /// <summary><see cref="Added"/> as a share of the median baseline, in percent.</summary>
    public double SlowdownPercent => 100 * Added / Stats.Median(BaselineNs);
    public double Min => PerExitNs.Min();
    public double Max => PerExitNs.Max();
}

public static class Stats
{
    /// <summary>
    /// A distribution-free confidence interval for the median of <paramref name="values"/> (order statistics: the
    /// median lies between the k-th smallest and the k-th largest of n values with probability 1 - 2 P(Bin(n, 1/2) &lt; k);
    /// k is the largest that keeps that at least 95%). Null with fewer than 6 values, where no such pair exists.
    /// </summary>
    public static (double Low, double High, double Coverage)? MedianInterval(IReadOnlyCollection<double> values)
    {
        int n = values.Count;
        double[] sorted = values.Order().ToArray();
        double below = 0, term = Math.Pow(0.5, n); // P(Bin(n, 1/2) <= j), from j = 0
        int k = 0;
        for (int j = 0; j < n / 2; j++)
        {
            below += term;
            if (2 * below > 0.05)
                break;
            k = j + 1; // P(Bin < k) = P(Bin <= j) still leaves at least 95%
            term = term * (n - j) / (j + 1);
        }
        if (k == 0)
            return null;
        double tail = 0;
        term = Math.Pow(0.5, n);
        for (int j = 0; j < k; j++)
        {
            tail += term;
            term = term * (n - j) / (j + 1);
        }
        return (sorted[k - 1], sorted[n - k], 1 - 2 * tail);
    }

    public static double Median(IReadOnlyCollection<double> values)
    {
        if (values.Count == 0)
            return double.NaN;
        double[] sorted = values.Order().ToArray();
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }
}

/// <summary>A source's cost against its reference's in one run (<see cref="OverheadRun.Compare"/>).</summary>
public sealed record Comparison(string Source, string Reference, double Ratio, double MedianDifferenceNs,
    (double Low, double High, double Coverage)? Interval, int RoundsAbove, int Rounds)
{
    /// <summary>"at most the reference", "more than the reference", or "not told apart" at 95%.</summary>
    public string Verdict => Interval switch
    {
        null => "too few rounds to tell",
        var (_, high, _) when high <= 0 => "adds no more than its reference",
        var (low, _, _) when low > 0 => "adds more than its reference",
        _ => "not told apart from its reference in this run",
    };
}

/// <summary>
/// `kvmobserve overhead`: what observing costs the guests. Runs the built-in micro-VM in one mode (one vCPU, pinned)
/// and measures its round trip per exit with no probes, with each chosen source of the agent (in its own process, as
/// users run it), and with each reference observer of the same tracepoints (a plain drain, perf stat, bpftrace),
/// interleaved: every round runs every arm once, starting at a different arm each round. Each arm's run is paired
/// with two runs with no probes, right before its observer starts and right after it stops: what it adds in a round
/// is its time less their mean, so the machine's drift (this host's noise comes in bursts of tens of seconds) cancels
/// within seconds, not across a round. Medians over the rounds. The arm with no probes is paired the same way: what
/// it "adds" is the method's noise floor.
/// </summary>
public sealed class OverheadRun(LoadMode mode, uint count, int rounds, IReadOnlyList<(string Key, Func<IObserver> Make)> arms, TextWriter log)
{
    public List<ArmResult> Results { get; } = new();

    /// <summary>The tracepoint each exit of <paramref name="mode"/> fires (what observers count as seen; its name is
    /// the catalog's), and how many exits one operation of its guest program makes (an MSR operation reads one MSR and
    /// writes another).</summary>
    public static (string Tracepoint, uint ExitsPerOp) Driven(LoadMode mode)
    {
        (KvmEventKind kind, uint perOp) = mode switch
        {
            LoadMode.Mmio => (KvmEventKind.Mmio, 1u),
            LoadMode.Msr => (KvmEventKind.Msr, 2u),
            LoadMode.Cpuid => (KvmEventKind.Cpuid, 1u),
            _ => (KvmEventKind.Pio, 1u),
        };
        return (TracepointCatalog.EventName(kind), perOp);
    }

    public void Run()
    {
        uint perOp = Driven(mode).ExitsPerOp, ops = Math.Max(1, count / perOp), exits = ops * perOp;
        var options = new LoadOptions { Modes = mode, Count = ops, Vcpus = 1, Pin = true, Name = "overhead" };
        string phase = mode.ToString().ToLowerInvariant();
        var warmup = new LoadOptions { Modes = mode, Count = Math.Max(1000, ops / 10), Vcpus = 1, Pin = true, Name = "overhead-warmup" };
        VmRunner.Run(warmup, "overhead-warmup"); // JIT, page faults of a first VM, KVM's own first-time work
        var results = new ArmResult[arms.Count];
        for (int round = 0; round < rounds; round++)
        {
            for (int k = 0; k < arms.Count; k++)
            {
                int a = (round + k) % arms.Count;
                double before = PerExit(VmRunner.Run(options, $"overhead-b{round}"), phase, exits);
                IObserver observer = arms[a].Make();
                try
                {
                    results[a] ??= new ArmResult(arms[a].Key, observer.Name);
                    observer.Start();
                    // A short VM first, unmeasured: the observer meets a new VM (discovery, naming, its first reads)
                    // and is past its own start-up, so the measured run sees it in its steady state.
                    VmRunner.Run(warmup, $"overhead-w{round}");
                    Thread.Sleep(300);
                    observer.Mark();
                    VmReport vm = VmRunner.Run(options, $"overhead-r{round}");
                    ObserverRun seen = observer.Finish(exits + warmup.Count * perOp);
                    (observer as IDisposable)?.Dispose(); // stopped: what runs next runs with no probes
                    double after = PerExit(VmRunner.Run(options, $"overhead-a{round}"), phase, exits);
                    double perExit = PerExit(vm, phase, exits);
                    results[a].PerExitNs.Add(perExit);
                    results[a].BaselineNs.Add((before + after) / 2);
                    results[a].Observed.Add(seen.Observed);
                    if (seen.CpuNs >= 0)
                        results[a].CpuPerExitNs.Add(seen.CpuNs / (double)exits);
                    if (seen.Self is not null)
                        results[a].Self.Add(seen.Self);
                    log.WriteLine($"round {round + 1}/{rounds} {observer.Name,-40} {perExit,9:F0} ns/exit  (none: {before:F0} before, {after:F0} after)" +
                        (seen.Observed >= 0 ? $"  observed {seen.Observed}" : "") +
                        (seen.CpuNs >= 0 ? $"  own CPU {seen.CpuNs / 1e6:F0} ms" : "") + SelfLine(seen.Self));
                }
                finally
                {
                    (observer as IDisposable)?.Dispose();
                }
            }
        }
        Results.AddRange(results);
    }

    private static double PerExit(VmReport vm, string phase, uint exits) => vm.Vcpus[0].PhaseNs[phase] / (double)exits;

    private static void WriteRounds(Utf8JsonWriter w, string name, IEnumerable<double> values)
    {
        w.WriteStartArray(name);
        foreach (double v in values)
            w.WriteNumberValue(Math.Round(v, 1));
        w.WriteEndArray();
    }

    /// <summary>The agent's own figures of a round that can explain its cost, when they are not zero.</summary>
    private static string SelfLine(IReadOnlyDictionary<string, double>? self)
    {
        if (self is null)
            return "";
        var sb = new StringBuilder();
        if (self.GetValueOrDefault("kvmobserve_attach_windows_total") is double windows and > 0)
            sb.Append(CultureInfo.InvariantCulture, $"  windows {windows:F0} ({self.GetValueOrDefault("kvmobserve_attach_window_seconds_total") * 1000:F0} ms)");
        if (self.GetValueOrDefault("kvmobserve_reader_wakeups_total") is double wakeups and > 0)
            sb.Append(CultureInfo.InvariantCulture, $"  wake-ups {wakeups:F0}");
        if (self.GetValueOrDefault("kvmobserve_events_unattributed_total") is double unattributed and > 0)
            sb.Append(CultureInfo.InvariantCulture, $"  unattributed {unattributed:F0}");
        if (self.GetValueOrDefault("kvmobserve_events_lost_total") + self.GetValueOrDefault("kvmobserve_decode_errors_total") is double bad and > 0)
            sb.Append(CultureInfo.InvariantCulture, $"  lost or malformed {bad:F0}");
        return sb.ToString();
    }

    /// <summary>
    /// A source against its reference, round by round: what the source added less what the reference added in the
    /// same round (each against its own pair of runs without probes, seconds apart), so what both rounds shared cancels.
    /// The median of those differences, with its 95% interval: "no more than the reference" is shown only when the
    /// interval's top is at or below 0, "more" only when its bottom is above 0; otherwise this run cannot tell.
    /// </summary>
    public static Comparison Compare(ArmResult source, ArmResult reference)
    {
        List<double> differences = source.AddedPerRound.Zip(reference.AddedPerRound, (a, b) => a - b).ToList();
        return new Comparison(source.Key, reference.Key, source.Added / reference.Added, Stats.Median(differences),
            Stats.MedianInterval(differences), differences.Count(d => d > 0), differences.Count);
    }

    public string Table()
    {
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"{mode.ToString().ToLowerInvariant()} exits, {count} per round, {rounds} interleaved rounds (medians; spread = min..max over rounds; added = median over rounds of the difference to the mean of two runs with no probes right before and after; for none itself: the noise floor)");
        sb.AppendLine(CultureInfo.InvariantCulture, $"{"observer",-42} {"ns/exit",9} {"spread",17} {"added ns",9} {"slowdown",9} {"own CPU ns/exit",16}");
        foreach (ArmResult r in Results)
        {
            double added = r.Added;
            string cpu = r.CpuPerExitNs.Count > 0 ? Stats.Median(r.CpuPerExitNs).ToString("F0", CultureInfo.InvariantCulture) : "";
            sb.AppendLine(CultureInfo.InvariantCulture,
                $"{r.Name,-42} {r.Median,9:F0} {$"{r.Min:F0}..{r.Max:F0}",17} {$"{added:+0;-0}",9} {$"{r.SlowdownPercent:+0.0;-0.0}%",9} {cpu,16}");
        }
        return sb.ToString();
    }

    public string Json(IReadOnlyList<Comparison>? comparisons = null)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("mode", mode.ToString().ToLowerInvariant());
            w.WriteNumber("count", count);
            w.WriteNumber("rounds", rounds);
            w.WriteStartArray("arms");
            foreach (ArmResult r in Results)
            {
                w.WriteStartObject();
                w.WriteString("arm", r.Key);
                w.WriteString("observer", r.Name);
                w.WriteNumber("median_ns_per_exit", Math.Round(r.Median, 1));
                w.WriteNumber("min_ns_per_exit", Math.Round(r.Min, 1));
                w.WriteNumber("max_ns_per_exit", Math.Round(r.Max, 1));
                w.WriteNumber("added_ns_per_exit", Math.Round(r.Added, 1));
                w.WriteNumber("slowdown_percent", Math.Round(r.SlowdownPercent, 2));
                if (r.CpuPerExitNs.Count > 0)
                    w.WriteNumber("own_cpu_ns_per_exit", Math.Round(Stats.Median(r.CpuPerExitNs), 1));
                WriteRounds(w, "rounds_ns_per_exit", r.PerExitNs);
                WriteRounds(w, "rounds_baseline_ns_per_exit", r.BaselineNs); // mean of the runs with no probes before and after
                WriteRounds(w, "observed", r.Observed.Select(v => (double)v));
                if (r.CpuPerExitNs.Count > 0)
                    WriteRounds(w, "rounds_own_cpu_ns_per_exit", r.CpuPerExitNs);
                if (r.Self.Count > 0)
                {
                    w.WriteStartArray("rounds_self"); // the agent's own metrics' increase over each round
                    foreach (IReadOnlyDictionary<string, double> self in r.Self)
                    {
                        w.WriteStartObject();
                        foreach ((string family, double v) in self.OrderBy(p => p.Key, StringComparer.Ordinal))
                            w.WriteNumber(family, Math.Round(v, 6));
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("comparisons");
            foreach (Comparison c in comparisons ?? [])
            {
                w.WriteStartObject();
                w.WriteString("source", c.Source);
                w.WriteString("reference", c.Reference);
                w.WriteNumber("ratio", Math.Round(c.Ratio, 3));
                w.WriteNumber("median_difference_ns_per_exit", Math.Round(c.MedianDifferenceNs, 1));
                if (c.Interval is var (low, high, coverage))
                {
                    w.WriteNumber("interval_low_ns_per_exit", Math.Round(low, 1));
                    w.WriteNumber("interval_high_ns_per_exit", Math.Round(high, 1));
                    w.WriteNumber("interval_coverage", Math.Round(coverage, 4));
                }
                w.WriteNumber("rounds_above", c.RoundsAbove);
                w.WriteNumber("rounds", c.Rounds);
                w.WriteString("verdict", c.Verdict);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }
}
