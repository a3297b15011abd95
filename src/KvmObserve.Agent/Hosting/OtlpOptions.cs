using System.Globalization;
using OpenTelemetry.Exporter;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// Where and how often to export OTLP metrics. Each value comes from the agent's own setting (Otlp:*), else from the
/// standard OTEL_* variable, else the OpenTelemetry default; no endpoint anywhere means no OTLP export.
/// </summary>
public sealed record OtlpOptions(Uri Endpoint, OtlpExportProtocol Protocol, string Headers, TimeSpan Interval, TimeSpan Timeout)
{
    public const string Grpc = "grpc", HttpProtobuf = "http/protobuf";

    public string ProtocolName => Protocol == OtlpExportProtocol.Grpc ? Grpc : HttpProtobuf;

    public static IReadOnlyDictionary<string, string?> ProcessEnvironment() =>
        Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .Where(e => ((string)e.Key).StartsWith("OTEL_", StringComparison.Ordinal))
            .ToDictionary(e => (string)e.Key, e => e.Value as string);

    public static OtlpOptions? From(LayeredSettings s, IReadOnlyDictionary<string, string?> env)
    {
        OtlpExportProtocol protocol = Pick(s, Settings.OtlpProtocol, env, "OTEL_EXPORTER_OTLP_PROTOCOL", ParseProtocol, OtlpExportProtocol.Grpc);
        // The agent's setting and OTEL_EXPORTER_OTLP_ENDPOINT are base addresses (http/protobuf adds /v1/metrics);
        // OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is the whole address, as the OpenTelemetry spec has it.
        Uri? endpoint = s.Get(Settings.OtlpEndpoint).Value.Trim().Length > 0
            ? s.Parse(Settings.OtlpEndpoint, v => Signal(ParseUrl(v), protocol))
            : FromEnv(env, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", ParseUrl)
              ?? FromEnv(env, "OTEL_EXPORTER_OTLP_ENDPOINT", v => Signal(ParseUrl(v), protocol));
        string headers = Pick(s, Settings.OtlpHeaders, env, "OTEL_EXPORTER_OTLP_HEADERS", ParseHeaders, "");
        TimeSpan interval = Pick(s, Settings.OtlpInterval, env, "OTEL_METRIC_EXPORT_INTERVAL", Positive, TimeSpan.FromSeconds(60), envMs: true);
        TimeSpan timeout = Pick(s, Settings.OtlpTimeout, env, "OTEL_EXPORTER_OTLP_TIMEOUT", Positive, TimeSpan.FromSeconds(10), envMs: true);
        return endpoint is null ? null : new OtlpOptions(endpoint, protocol, headers, interval, timeout);
    }

    private static T Pick<T>(LayeredSettings s, Setting setting, IReadOnlyDictionary<string, string?> env, string variable,
        Func<string, T> parse, T fallback, bool envMs = false)
    {
        if (s.Get(setting).Value.Trim().Length > 0)
            return s.Parse(setting, parse);
        return FromEnv(env, variable, v => parse(envMs ? Milliseconds(v) : v), fallback)!;
    }

    private static T? FromEnv<T>(IReadOnlyDictionary<string, string?> env, string variable, Func<string, T> parse, T? fallback = default)
    {
        if (!env.TryGetValue(variable, out string? v) || string.IsNullOrWhiteSpace(v))
            return fallback;
        try
        {
            return parse(v);
        }
        catch (OptionException e)
        {
            throw new OptionException($"{variable}: {e.Message}");
        }
    }

    /// <summary>The OTEL_* time variables are whole milliseconds.</summary>
    private static string Milliseconds(string value) =>
        long.TryParse(value.Trim(), System.Globalization.NumberStyles.None, CultureInfo.InvariantCulture, out long ms)
            ? ms + "ms"
            : throw new OptionException($"'{value}' is not a whole number of milliseconds");

    public static OtlpExportProtocol ParseProtocol(string value) => value.Trim() switch
    {
        Grpc => OtlpExportProtocol.Grpc,
        HttpProtobuf => OtlpExportProtocol.HttpProtobuf,
        _ => throw new OptionException($"'{value}' is not one of {Grpc}, {HttpProtobuf}"),
    };

    public static Uri ParseUrl(string value) =>
        Uri.TryCreate(value.Trim(), UriKind.Absolute, out Uri? uri) && uri.Scheme is "http" or "https" && uri.Host.Length > 0
            ? uri
            : throw new OptionException($"'{value}' is not an http:// or https:// URL (e.g. http://127.0.0.1:4317)");

    /// <summary>The metrics address of a base address: http/protobuf posts to PATH/v1/metrics, gRPC ignores the path.</summary>
    private static Uri Signal(Uri baseUri, OtlpExportProtocol protocol)
    {
        if (protocol == OtlpExportProtocol.Grpc || baseUri.AbsolutePath.EndsWith("/v1/metrics", StringComparison.Ordinal))
            return baseUri;
        return new Uri(baseUri.GetLeftPart(UriPartial.Authority) + baseUri.AbsolutePath.TrimEnd('/') + "/v1/metrics");
    }

    /// <summary>k1=v1,k2=v2 (values may be percent-encoded, as OTEL_EXPORTER_OTLP_HEADERS has it).</summary>
    public static string ParseHeaders(string value)
    {
        foreach (string pair in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = pair.IndexOf('=');
            if (eq <= 0 || pair[..eq].Any(c => c <= ' ' || c >= 127 || c == ':'))
                throw new OptionException($"'{value}' is not a list of NAME=VALUE pairs (e.g. api-key=abc,tenant=x)");
        }
        return value.Trim();
    }

    private static TimeSpan Positive(string value)
    {
        TimeSpan t = AgentOptions.ParseDuration(value);
        return t >= TimeSpan.FromMilliseconds(100) ? t : throw new OptionException($"'{value}' is shorter than 100ms");
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{ProtocolName} {Endpoint} every {Interval.TotalSeconds}s (timeout {Timeout.TotalSeconds}s)");
}
