using KvmObserve.Sources;
using System.Globalization;
using System.Net;

namespace KvmObserve.Agent.Hosting;

/// <summary>Defaults of the agent's settings, in one place (README documents each).</summary>
public static class AgentOptionsDefaults
{
    /// <summary>9632: marked free on Prometheus's default port allocations list (exporters 9100-9999).</summary>
    public const int Port = 9632;
    public const string Listen = "127.0.0.1:9632";
    public const string Source = "auto";
    public const string Metrics = "all";
    public const int SeriesLimit = 20_000;
    public const int PollTimeoutMs = 100;
    public const int DiscoveryIntervalMs = 2_000;
}

/// <summary>The validated settings of `run`.</summary>
public sealed class AgentOptions
{
    public IPEndPoint Listen { get; init; } = IPEndPoint.Parse(AgentOptionsDefaults.Listen);
    public string Source { get; init; } = AgentOptionsDefaults.Source;
    public int SeriesLimit { get; init; } = AgentOptionsDefaults.SeriesLimit;
    public int BufferSizeKb { get; init; }
    public int PollTimeoutMs { get; init; } = AgentOptionsDefaults.PollTimeoutMs;
    public int DiscoveryIntervalMs { get; init; } = AgentOptionsDefaults.DiscoveryIntervalMs;
    public int? WakeupPercent { get; init; }
    public IReadOnlyList<string> Metrics { get; init; } = KvmObserve.Sources.MetricSelection.All;

    /// <summary>Parses HOST:PORT ([v6]:PORT for IPv6); the error names the setting and what it takes.</summary>
    public static IPEndPoint ParseListen(string value)
    {
        int colon = value.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(value.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port)
            || port is < 1 or > 65535)
            throw new OptionException($"--listen: '{value}' is not HOST:PORT (e.g. {AgentOptionsDefaults.Listen})");
        string host = value[..colon].Trim('[', ']');
        if (host == "localhost")
            return new IPEndPoint(IPAddress.Loopback, port);
        if (!IPAddress.TryParse(host, out IPAddress? address))
            throw new OptionException($"--listen: '{host}' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, [::1])");
        return new IPEndPoint(address, port);
    }

    public static string ParseSource(string value) => SourceSelection.Sources.Contains(value)
        ? value
        : throw new OptionException($"--source: '{value}' is not one of {string.Join(", ", SourceSelection.Sources)}");

    public static IReadOnlyList<string> ParseMetrics(string value)
    {
        try
        {
            return KvmObserve.Sources.MetricSelection.Parse(value);
        }
        catch (FormatException e)
        {
            throw new OptionException(e.Message);
        }
    }

    public static int InRange(string option, int value, int min, int max) => value >= min && value <= max
        ? value
        : throw new OptionException($"{option}: {value} is outside {min}..{max}");

    public static int Positive(string option, int value) =>
        value > 0 ? value : throw new OptionException($"{option}: {value} must be a positive number");
}

/// <summary>A bad setting: stops startup with this one line and exit code 2.</summary>
public sealed class OptionException(string message) : Exception(message);
