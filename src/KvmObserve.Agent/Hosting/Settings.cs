using System.Globalization;
using Microsoft.Extensions.Configuration;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// One setting of `run`: its key in the JSON file (nested keys joined by ':'), the environment variable and the flag
/// that also set it, and what it takes. Precedence: built-in default &lt; file &lt; environment &lt; flag.
/// </summary>
public sealed record Setting(string Key, string Flag, string Default, string Meaning)
{
    /// <summary>Other flags that set it: the names Prometheus exporters give the same setting, typed from habit.</summary>
    public IReadOnlyList<string> Aliases { get; init; } = [];

    /// <summary>KVMOBSERVE__ and the key in capitals, with '__' for ':'.</summary>
    public string Environment => "KVMOBSERVE__" + Key.Replace(":", "__", StringComparison.Ordinal).ToUpperInvariant();
}

/// <summary>Every setting of `run` (README's options table is this list).</summary>
public static class Settings
{
    public static readonly Setting Listen = new("Listen", "--listen", AgentOptionsDefaults.Listen,
        "HOST:PORT for /metrics. 9632 was marked free on Prometheus's default port allocations list (exporters, 9100-9999)")
    { Aliases = ["--web.listen-address"] };
    public static readonly Setting Source = new("Source", "--source", AgentOptionsDefaults.Source,
        "Where events come from: auto, bpf, tracefs, perf, perf-count, replay (with --replay)");
    public static readonly Setting Metrics = new("Metrics", "--metrics", AgentOptionsDefaults.Metrics,
        "Metric groups to collect: all, or a comma-separated list of " + string.Join(", ", KvmObserve.Sources.MetricSelection.All));
    public static readonly Setting SeriesLimit = new("SeriesLimit", "--series-limit", "10000",
        "Label sets per metric family; past it, new ones count into the family's overflow series");
    public static readonly Setting TopK = new("TopK", "--top-k", "16",
        "Ports, MMIO pages, MSRs, CPUID leaves and vectors per VM with their own series (by rate); the rest is \"other\"");
    public static readonly Setting VmGrace = new("VmGrace", "--vm-grace", AgentOptionsDefaults.VmGrace,
        "How long an exited VM's series stay (a VM restarted under its name within it continues them)");
    public static readonly Setting BufferKb = new("BufferKb", "--buffer-kb", "0",
        "Per-CPU ring size in KiB of the tracefs instance or perf ring (0: 4096)");
    public static readonly Setting WakeupPercent = new("WakeupPercent", "--wakeup-percent", "25",
        "How full a ring gets before its reader wakes (tracefs buffer_percent, perf watermark)");
    public static readonly Setting Nice = new("Nice", "--nice", "auto",
        "Nice value of the agent's threads: auto (19 when the source counts in the kernel, as bpf and perf-count do: its threads yield the CPU to vCPUs that want it, and its counts wait in the kernel; unchanged when it streams records, whose readers must keep up), or -20..19. The threads that find and name VMs keep the nice the agent started with: a VM can only be named while it runs");
    public static readonly Setting DiscoveryInterval = new("DiscoveryIntervalMs", "--discovery-interval-ms", "2000",
        "How often procfs is rescanned for VMs and their threads (ms)");
    public static readonly Setting WebConfig = new("WebConfig", "--web-config", "",
        "A web config file (Prometheus exporter-toolkit format): TLS certificate and key, basic-auth users with bcrypt hashes")
    { Aliases = ["--web.config.file"] };
    public static readonly Setting OtlpEndpoint = new("Otlp:Endpoint", "--otlp-endpoint", "",
        "OTLP receiver (e.g. http://127.0.0.1:4317); empty: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else no OTLP export");
    public static readonly Setting OtlpProtocol = new("Otlp:Protocol", "--otlp-protocol", "",
        "grpc or http/protobuf; empty: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc");
    public static readonly Setting OtlpHeaders = new("Otlp:Headers", "--otlp-headers", "",
        "Headers sent with each export, k1=v1,k2=v2; empty: OTEL_EXPORTER_OTLP_HEADERS");
    public static readonly Setting OtlpInterval = new("Otlp:Interval", "--otlp-interval", "",
        "Time between exports (duration); empty: OTEL_METRIC_EXPORT_INTERVAL (ms), else 60s");
    public static readonly Setting OtlpTimeout = new("Otlp:Timeout", "--otlp-timeout", "",
        "Time one export may take (duration); empty: OTEL_EXPORTER_OTLP_TIMEOUT (ms), else 10s");

    public static readonly Setting StormFloor = new("Storm:Floor", "--storm-floor", "20000",
        "Exits per second (of a VM, or of one vCPU) below which the storm detector calls nothing a storm");
    public static readonly Setting StormFactor = new("Storm:Factor", "--storm-factor", "4",
        "How many times its moving baseline (60 s) a VM's or vCPU's exit rate over the last second must be, for 500 ms, to be a storm");
    public static readonly Setting FlightRecorder = new("FlightRecorder:Directory", "--flight-recorder", "",
        "Directory for flight recordings: the raw records of each storm's first seconds (tracefs and perf sources); empty: off");
    public static readonly Setting FlightRecorderSeconds = new("FlightRecorder:Seconds", "--flight-recorder-seconds", "5",
        "How much of a storm a recording keeps, counted from 2 s before the storm was detected");
    public static readonly Setting Replay = new("Replay", "--replay", "",
        "A flight recording to replay at its own pace as --source replay (demos, dashboards and rule tests without live VMs)");

    public static readonly Setting TracefsMmap = new("TracefsMmap", "--tracefs-mmap", "true",
        "tracefs source: read each CPU's ring buffer through its memory map (Linux 6.10+; false: read() copies)");
    public static readonly Setting BpfMapEntries = new("Bpf:MapEntries", "--bpf-map-entries", "32768",
        "bpf source: entries of the in-kernel counts map (one per thread, family and key); past it, keys count under \"other\"");
    public static readonly Setting BpfStats = new("Bpf:Stats", "--bpf-stats", "false",
        "bpf source: have the kernel account the programs' run time while the agent runs (BPF_ENABLE_STATS: two clock reads more per program run)");

    public static readonly Setting CountKeys = new("Counting:Keys", "--count-keys", "exits",
        "perf-count source: families counted key by key (all, none, or a list of exits, userspace-exits, ports, msrs, cpuid-leaves, vectors, directions); each key is a filtered counter the kernel runs on every event of its tracepoint, about 20 ns per event, as much as a counter (180 ns) where it matches; the rest count under \"other\"");
    public static readonly IReadOnlyList<Setting> All =
    [
        Listen, Source, Metrics, SeriesLimit, TopK, VmGrace, BufferKb, WakeupPercent, DiscoveryInterval, Nice, WebConfig,
        OtlpEndpoint, OtlpProtocol, OtlpHeaders, OtlpInterval, OtlpTimeout, StormFloor, StormFactor, FlightRecorder,
        FlightRecorderSeconds, Replay, TracefsMmap, BpfMapEntries, BpfStats, CountKeys,
    ];
}

/// <summary>
/// The layered configuration of `run`: the JSON file (--config), KVMOBSERVE__ environment variables, then flags given
/// on the command line. Knows where each value came from, so an error can say which layer to fix.
/// </summary>
public sealed class LayeredSettings
{
    private readonly List<(string Origin, IReadOnlyDictionary<string, string> Values)> _layers = [];

    /// <summary>Reads the layers; an unreadable file or an unknown key is a bad setting (OptionException).</summary>
    public static LayeredSettings Load(string? configFile, IReadOnlyDictionary<string, string> flags)
    {
        var layered = new LayeredSettings();
        if (!string.IsNullOrEmpty(configFile))
            layered._layers.Add((configFile, ReadFile(configFile)));
        var env = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach ((string name, string? value) in EnvironmentVariables())
        {
            if (!name.StartsWith("KVMOBSERVE__", StringComparison.OrdinalIgnoreCase) || value is null)
                continue;
            Setting setting = Settings.All.FirstOrDefault(s => s.Environment.Equals(name, StringComparison.OrdinalIgnoreCase))
                ?? throw new OptionException($"{name}: not a setting (known: {string.Join(", ", Settings.All.Select(s => s.Environment))})");
            env[setting.Key] = value;
        }
        layered._layers.Add(("environment", env));
        layered._layers.Add(("flag", flags));
        return layered;
    }

    private static IEnumerable<KeyValuePair<string, string?>> EnvironmentVariables() =>
        System.Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .Select(e => new KeyValuePair<string, string?>((string)e.Key, e.Value as string));

    private static Dictionary<string, string> ReadFile(string path)
    {
        IConfigurationRoot root;
        try
        {
            root = new ConfigurationBuilder().AddJsonFile(Path.GetFullPath(path), optional: false).Build();
        }
        catch (Exception e) when (e is FileNotFoundException or IOException or UnauthorizedAccessException or FormatException or InvalidDataException)
        {
            string why = e is FileNotFoundException ? "no such file" : (e.InnerException ?? e).Message.Split('\n')[0].Trim();
            throw new OptionException($"--config: cannot read '{path}': {why}");
        }
        var values = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach ((string key, string? value) in root.AsEnumerable())
        {
            if (value is null)
                continue; // a section ("Otlp")
            Setting setting = Settings.All.FirstOrDefault(s => s.Key.Equals(key, StringComparison.OrdinalIgnoreCase))
                ?? throw new OptionException($"--config: '{key}' in {path} is not a setting (known: {string.Join(", ", Settings.All.Select(s => s.Key))})");
            values[setting.Key] = value;
        }
        return values;
    }

    /// <summary>The effective value and the layer it came from ("default" when none set it).</summary>
    public (string Value, string Origin) Get(Setting setting)
    {
        for (int i = _layers.Count - 1; i >= 0; i--)
        {
            if (_layers[i].Values.TryGetValue(setting.Key, out string? v))
                return (v, _layers[i].Origin);
        }
        return (setting.Default, "default");
    }

    /// <summary>The value, or throws the one-line error for it: "--flag (from ORIGIN): 'value' problem".</summary>
    public T Parse<T>(Setting setting, Func<string, T> parse)
    {
        (string value, string origin) = Get(setting);
        try
        {
            return parse(value);
        }
        catch (OptionException e)
        {
            string where = origin switch
            {
                "flag" or "default" => "",
                "environment" => $" (from {setting.Environment})",
                _ => $" (from {setting.Key} in {origin})",
            };
            throw new OptionException($"{setting.Flag}{where}: {e.Message}");
        }
    }

    public static double Double(string value, double min, double max)
    {
        if (!double.TryParse(value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double n) || !double.IsFinite(n))
            throw new OptionException($"'{value}' is not a number ({min}..{max})");
        return n >= min && n <= max ? n : throw new OptionException($"{n} is outside {min}..{max}");
    }

    public static int Int(string value, int min, int max)
    {
        if (!int.TryParse(value.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int n))
            throw new OptionException($"'{value}' is not a whole number ({min}..{max})");
        return n >= min && n <= max ? n : throw new OptionException($"{n} is outside {min}..{max}");
    }
}
