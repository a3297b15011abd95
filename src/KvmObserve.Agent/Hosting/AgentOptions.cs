using System.Globalization;
using System.Net;
using KvmObserve.Sources;

namespace KvmObserve.Agent.Hosting;

/// <summary>Defaults of the agent's settings, in one place (README documents each).</summary>
public static class AgentOptionsDefaults
{
    /// <summary>9632: marked free on Prometheus's default port allocations list (exporters 9100-9999).</summary>
    public const int Port = 9632;
    public const string Listen = "127.0.0.1:9632";
    public const string Source = "auto";
    public const string Metrics = "all";
    public const string VmGrace = "2m";
    public const int PollTimeoutMs = 100;
}

/// <summary>The validated settings of `run`.</summary>
public sealed class AgentOptions
{
    public IPEndPoint Listen { get; init; } = IPEndPoint.Parse(AgentOptionsDefaults.Listen);
    public string Source { get; init; } = AgentOptionsDefaults.Source;
    public int SeriesLimit { get; init; } = 10_000;
    public int BufferSizeKb { get; init; }
    public int PollTimeoutMs { get; init; } = AgentOptionsDefaults.PollTimeoutMs;
    public int DiscoveryIntervalMs { get; init; } = 2_000;
    public int? WakeupPercent { get; init; }

    /// <summary>The threads' nice value; null: auto (<see cref="ThreadNice.For"/>).</summary>
    public int? Nice { get; init; }
    public IReadOnlyList<string> Metrics { get; init; } = MetricSelection.All;
    public int TopK { get; init; } = 16;
    public TimeSpan VmGrace { get; init; } = ParseDuration(AgentOptionsDefaults.VmGrace);
    public WebConfig? Web { get; init; }
    public OtlpOptions? Otlp { get; init; }
    public KvmObserve.Aggregation.Storms.StormOptions Storms { get; init; } = new();
    public string? FlightRecorderDirectory { get; init; }
    public TimeSpan FlightRecorderSeconds { get; init; } = TimeSpan.FromSeconds(5);
    public string? Replay { get; init; }
    public bool TracefsMmap { get; init; } = true;
    public uint BpfMapEntries { get; init; } = 32_768;
    public bool BpfStats { get; init; }
    public KvmObserve.Sources.PerfCount.KeyedFamilies CountKeys { get; init; } = KvmObserve.Sources.PerfCount.KeyedFamilies.Exits;

    /// <summary>What bounds the aggregates, from --series-limit, --top-k and --vm-grace.</summary>
    public KvmObserve.Aggregation.AggregatorOptions Aggregation => new()
    {
        FamilyLimit = SeriesLimit,
        TopK = TopK,
        VmGrace = VmGrace,
    };

    /// <summary>Every setting parsed and checked; the first bad one throws its one-line <see cref="OptionException"/>.</summary>
    public static AgentOptions From(LayeredSettings s) => new AgentOptions
    {
        Listen = s.Parse(Settings.Listen, ParseListen),
        Source = s.Parse(Settings.Source, ParseSource),
        Metrics = s.Parse(Settings.Metrics, ParseMetrics),
        SeriesLimit = s.Parse(Settings.SeriesLimit, v => LayeredSettings.Int(v, 1, 10_000_000)),
        TopK = s.Parse(Settings.TopK, v => LayeredSettings.Int(v, 1, 4096)),
        VmGrace = s.Parse(Settings.VmGrace, ParseDuration),
        BufferSizeKb = s.Parse(Settings.BufferKb, v => LayeredSettings.Int(v, 0, 4 * 1024 * 1024)),
        WakeupPercent = s.Parse(Settings.WakeupPercent, v => v.Trim().Length == 0 ? (int?)null : LayeredSettings.Int(v, 0, 100)),
        DiscoveryIntervalMs = s.Parse(Settings.DiscoveryInterval, v => LayeredSettings.Int(v, 50, 3_600_000)),
        Nice = s.Parse(Settings.Nice, v => v.Trim() == "auto" ? (int?)null : LayeredSettings.Int(v, -20, 19)),
        Web = s.Parse(Settings.WebConfig, v => v.Trim().Length == 0 ? null : WebConfig.Load(v.Trim())),
        Otlp = OtlpOptions.From(s, OtlpOptions.ProcessEnvironment()),
        Storms = new KvmObserve.Aggregation.Storms.StormOptions
        {
            FloorPerSecond = s.Parse(Settings.StormFloor, v => LayeredSettings.Double(v, 0, 1e12)),
            Factor = s.Parse(Settings.StormFactor, v => LayeredSettings.Double(v, 1, 1e6)),
        },
        FlightRecorderDirectory = s.Parse(Settings.FlightRecorder, v => v.Trim().Length == 0 ? null : v.Trim()),
        FlightRecorderSeconds = s.Parse(Settings.FlightRecorderSeconds, v =>
            ParseDuration(v) is { TotalSeconds: >= 1 and <= 600 } d ? d : throw new OptionException($"'{v}' is outside 1s..10m")),
        Replay = s.Parse(Settings.Replay, v => v.Trim().Length == 0 ? null : CheckRecording(v.Trim())),
        TracefsMmap = s.Parse(Settings.TracefsMmap, v => bool.TryParse(v.Trim(), out bool b) ? b : throw new OptionException($"'{v}' is not true or false")),
        BpfMapEntries = s.Parse(Settings.BpfMapEntries, v => (uint)LayeredSettings.Int(v, 64, 16 * 1024 * 1024)),
        BpfStats = s.Parse(Settings.BpfStats, v => bool.TryParse(v.Trim(), out bool b) ? b : throw new OptionException($"'{v}' is not true or false")),
        CountKeys = s.Parse(Settings.CountKeys, v =>
        {
            try { return KvmObserve.Sources.PerfCount.CountingKeys.ParseFamilies(v); }
            catch (FormatException e) { throw new OptionException(e.Message); }
        }),
    }.Checked(s);

    /// <summary>Settings that only make sense together.</summary>
    private AgentOptions Checked(LayeredSettings s)
    {
        if (Source == "replay" && Replay is null)
            throw new OptionException("--source replay: needs --replay FILE");
        if (Replay is not null && Source is not ("replay" or "auto"))
            s.Parse<object>(Settings.Replay, v => throw new OptionException($"'{v}' cannot be replayed with --source {Source} (use replay or auto)"));
        return this;
    }

    /// <summary>The source a replay runs as (auto means replay when --replay is given).</summary>
    public string EffectiveSource => Replay is not null ? "replay" : Source;

    /// <summary>Longer than any setting needs; far below what TimeSpan (and the timers it feeds) can hold.</summary>
    /// <summary>A recording that cannot be replayed is a bad setting, found before anything starts.</summary>
    private static string CheckRecording(string path)
    {
        if (!File.Exists(path))
            throw new OptionException($"'{path}': no such file");
        try
        {
            _ = KvmObserve.Sources.Recording.FlightRecording.Read(File.ReadAllBytes(path));
            return path;
        }
        catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
        {
            throw new OptionException($"'{path}': {e.Message}");
        }
    }

    private static readonly TimeSpan MaxDuration = TimeSpan.FromDays(3650);

    /// <summary>A duration as Prometheus writes them: 500ms, 30s, 2m, 1h (a bare number is seconds).</summary>
    public static TimeSpan ParseDuration(string value)
    {
        string v = value.Trim();
        (string digits, double unit) = v.EndsWith("ms", StringComparison.Ordinal) ? (v[..^2], 0.001)
            : v.EndsWith('s') ? (v[..^1], 1)
            : v.EndsWith('m') ? (v[..^1], 60)
            : v.EndsWith('h') ? (v[..^1], 3600)
            : (v, 1);
        if (!double.TryParse(digits, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double n) || n < 0)
            throw new OptionException($"'{value}' is not a duration (e.g. 500ms, 30s, 2m, 1h)");
        if (n * unit >= MaxDuration.TotalSeconds)
            throw new OptionException($"'{value}' is longer than the longest duration taken ({MaxDuration.TotalDays:0} days)");
        return TimeSpan.FromSeconds(n * unit);
    }

    /// <summary>Parses HOST:PORT ([v6]:PORT for IPv6).</summary>
    public static IPEndPoint ParseListen(string value)
    {
        int colon = value.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(value.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port)
            || port is < 1 or > 65535)
            throw new OptionException($"'{value}' is not HOST:PORT (e.g. {AgentOptionsDefaults.Listen})");
        string host = value[..colon].Trim('[', ']');
        if (host == "localhost")
            return new IPEndPoint(IPAddress.Loopback, port);
        if (!IPAddress.TryParse(host, out IPAddress? address))
            throw new OptionException($"'{host}' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, [::1])");
        return new IPEndPoint(address, port);
    }

    public static string ParseSource(string value) => SourceSelection.Sources.Contains(value)
        ? value
        : throw new OptionException($"'{value}' is not one of {string.Join(", ", SourceSelection.Sources)}");

    public static IReadOnlyList<string> ParseMetrics(string value)
    {
        try
        {
            return MetricSelection.Parse(value);
        }
        catch (FormatException e)
        {
            throw new OptionException(e.Message);
        }
    }
}

/// <summary>A bad setting: stops startup with this one line and exit code 2.</summary>
public sealed class OptionException(string message) : Exception(message);
