using System.CommandLine;
using System.Globalization;
using KvmObserve.Agent.Overhead;
using KvmObserve.Decoding.Events;
using KvmObserve.Sources;
using KvmObserve.Sources.Tracefs;
using KvmObserve.Workload;

namespace KvmObserve.Agent.Commands;

/// <summary>`kvmobserve overhead`: what each source costs the guests per exit, against no probes and against a
/// reference observer of the same tracepoints, measured in one interleaved run.</summary>
internal static class OverheadCommand
{
    private static readonly string[] References = ["drain", "drain-splice", "perf-record", "perf-stat", "bpftrace"];

    /// <summary>The observer each source is held against: record streams against a plain drain of the same records,
    /// counting in the kernel against the usual tools that count there.</summary>
    public static string ReferenceOf(string source) => source switch
    {
        "tracefs" => "drain",
        "perf" => "perf-record",
        "perf-count" => "perf-stat",
        _ => "bpftrace",
    };

    public static Command Create()
    {
        var source = new Option<string[]>("--source") { Description = "the agent's sources to measure (repeat or comma-separate; default: the one auto picks)", AllowMultipleArgumentsPerToken = true };
        var against = new Option<string[]>("--against") { Description = "reference observers: drain, drain-splice, perf-record, perf-stat, bpftrace (default: each source's own: drain for tracefs, perf-record for perf, perf-stat for perf-count, bpftrace for bpf)", AllowMultipleArgumentsPerToken = true };
        var mode = new Option<string>("--mode") { Description = "the exit driven: pio, mmio, msr or cpuid", DefaultValueFactory = _ => "pio" };
        var count = new Option<long>("--count") { Description = "exits per measured VM run", DefaultValueFactory = _ => 50_000 };
        var rounds = new Option<int>("--rounds") { Description = "interleaved rounds (each runs every observer once)", DefaultValueFactory = _ => 11 };
        var json = new Option<bool>("--json") { Description = "print JSON instead of a table" };
        var command = new Command("overhead", "Measure what observing costs the guests: ns added per exit by each source, against no probes and reference observers")
        {
            source, against, mode, count, rounds, json,
        };
        command.SetAction(parse =>
        {
            string[] sources = Split(parse.GetValue(source));
            string[] references = Split(parse.GetValue(against));
            LoadMode m;
            try
            {
                m = LoadOptions.ParseModes([parse.GetValue(mode) ?? "pio"]);
                if (m is not (LoadMode.Pio or LoadMode.Mmio or LoadMode.Msr or LoadMode.Cpuid))
                    throw new ArgumentException($"--mode: '{parse.GetValue(mode)}' is not one of pio, mmio, msr, cpuid");
                foreach (string s in sources)
                {
                    if (!SourceSelection.Sources.Contains(s) || s is "replay")
                        throw new ArgumentException($"--source: '{s}' is not one of {string.Join(", ", SourceSelection.Sources.Where(x => x != "replay"))}");
                }
                foreach (string r in references)
                {
                    if (!References.Contains(r) && r != "none")
                        throw new ArgumentException($"--against: '{r}' is not one of {string.Join(", ", References)}, none");
                }
                if (parse.GetValue(count) is < 1000 or > 10_000_000)
                    throw new ArgumentException("--count: must be within 1000..10000000");
                if (parse.GetValue(rounds) is < 1 or > 1000)
                    throw new ArgumentException("--rounds: must be within 1..1000");
            }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"kvmobserve overhead: {e.Message}");
                return 2;
            }
            try
            {
                Native.Kvm.KvmDevice.ThrowIfMissing(); // before any agent or reference starts
                HostCapabilities host = Hosting.SourceService.Probe(mountIfNeeded: true);
                if (sources.Length == 0)
                    sources = [SourceSelection.Choose("auto", MetricSelection.All, host).Source];
                if (references.Length == 0)
                    references = sources.Select(ReferenceOf).Distinct().ToArray();
                references = references.Where(r => r != "none").ToArray();
                string root = host.TracefsRoot ?? throw new InvalidOperationException(host.TracefsProblem);
                var formats = new TracefsFormats(root);
                IReadOnlyList<(string, string)> events = formats.Decoders().Statuses.Where(s => s.Available)
                    .Select(s => (s.Tracepoint.System, s.Tracepoint.Name)).ToList();
                string driven = OverheadRun.Driven(m).Tracepoint;
                var arms = new List<(string, Func<IObserver>)> { ("none", () => new NoObserver()) };
                foreach (string s in sources)
                    arms.Add((s, () => new AgentObserver(s, driven)));
                foreach (string r in references)
                {
                    arms.Add((r, r switch
                    {
                        "drain" => () => new DrainObserver(root, events),
                        "drain-splice" => () => new DrainObserver(root, events, splice: true),
                        "perf-stat" => () => new PerfStatObserver(events, driven),
                        "perf-record" => () => new PerfRecordObserver(events),
                        _ => () => new BpftraceObserver(events, driven),
                    }));
                }
                var run = new OverheadRun(m, (uint)parse.GetValue(count), parse.GetValue(rounds), arms, Console.Error);
                run.Run();
                List<Comparison> comparisons = Comparisons(run, sources);
                Console.Out.Write(parse.GetValue(json) ? run.Json(comparisons) + "\n" : run.Table() + Describe(run, comparisons));
                return 0;
            }
            catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException or Native.NativeErrorException)
            {
                Console.Error.WriteLine($"kvmobserve overhead: {e.Message}");
                return 1;
            }
        });
        return command;
    }

    /// <summary>Each source against its own reference, when both ran.</summary>
    private static List<Comparison> Comparisons(OverheadRun run, string[] sources) =>
        sources.Select(s => (Arm: run.Results.FirstOrDefault(r => r.Key == s), Ref: run.Results.FirstOrDefault(r => r.Key == ReferenceOf(s))))
            .Where(p => p.Arm is not null && p.Ref is not null)
            .Select(p => OverheadRun.Compare(p.Arm!, p.Ref!)).ToList();

    /// <summary>Each comparison in words: how many times the reference's added cost the source adds, the share of its
    /// cost that is the agent's own (what it adds beyond the reference), and the per-round difference with its
    /// interval and verdict.</summary>
    private static string Describe(OverheadRun run, List<Comparison> comparisons)
    {
        var lines = new List<string>();
        foreach (Comparison c in comparisons)
        {
            ArmResult arm = run.Results.First(r => r.Key == c.Source), refArm = run.Results.First(r => r.Key == c.Reference);
            double share = arm.Added > 0 ? Math.Max(0, arm.Added - refArm.Added) / arm.Added : 0;
            string interval = c.Interval is var (low, high, coverage)
                ? string.Create(CultureInfo.InvariantCulture, $", {100 * coverage:F0}% interval {low:+0;-0}..{high:+0;-0} ns")
                : "";
            lines.Add(string.Create(CultureInfo.InvariantCulture,
                $"{c.Source}: adds {arm.Added:F0} ns per exit = {c.Ratio:F2}x what {refArm.Name} adds ({refArm.Added:F0} ns); the agent's own share: {100 * share:F0}%"));
            lines.Add(string.Create(CultureInfo.InvariantCulture,
                $"  per round, less what {refArm.Name} added in the same round: median {c.MedianDifferenceNs:+0;-0} ns{interval}, above in {c.RoundsAbove} of {c.Rounds} rounds: {c.Verdict}"));
        }
        return lines.Count == 0 ? "" : "\n" + string.Join("\n", lines) + "\n";
    }

    private static string[] Split(string[]? values) =>
        (values ?? []).SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).Distinct().ToArray();
}
