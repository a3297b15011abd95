using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using Google.Protobuf;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;

namespace KvmObserve.Tests;

/// <summary>One data point as an OTLP receiver sees it.</summary>
public sealed record OtlpPoint(string Metric, string Kind, string Unit, IReadOnlyDictionary<string, string> Attributes, double Value, bool IsInt, bool Monotonic);

/// <summary>One ExportMetricsServiceRequest, decoded.</summary>
public sealed record OtlpExport(string Protocol, IReadOnlyDictionary<string, string> Resource, string Scope, IReadOnlyList<OtlpPoint> Points);

/// <summary>
/// An OTLP metrics receiver on loopback: gRPC (HTTP/2 cleartext, /opentelemetry.proto.collector.metrics.v1.MetricsService/Export)
/// and http/protobuf (POST /v1/metrics). Requests are decoded with Google.Protobuf's wire reader, by the field numbers
/// of the OTLP protos (collector/metrics/v1, metrics/v1, common/v1, resource/v1); nothing is generated.
/// </summary>
public sealed class OtlpReceiver : IAsyncDisposable
{
    private readonly WebApplication _app;
    public ConcurrentQueue<OtlpExport> Exports { get; } = new();
    public int GrpcPort { get; }
    public int HttpPort { get; }

    private OtlpReceiver(WebApplication app, int grpcPort, int httpPort)
    {
        _app = app;
        GrpcPort = grpcPort;
        HttpPort = httpPort;
    }

    public static async Task<OtlpReceiver> StartAsync(int grpcPort = 0, int httpPort = 0)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Loopback, grpcPort, l => l.Protocols = HttpProtocols.Http2);
            k.Listen(IPAddress.Loopback, httpPort, l => l.Protocols = HttpProtocols.Http1);
        });
        WebApplication app = builder.Build();
        OtlpReceiver? receiver = null;
        app.MapPost("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", async (HttpContext http) =>
        {
            byte[] body = await ReadAll(http.Request.Body);
            // gRPC message framing: 1 byte compressed flag, 4 bytes big-endian length, the message.
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(body.AsSpan(1, 4));
            receiver!.Exports.Enqueue(Decode("grpc", body.AsSpan(5, length).ToArray()));
            http.Response.ContentType = "application/grpc";
            http.Response.AppendTrailer("grpc-status", "0");
            await http.Response.Body.WriteAsync(new byte[5]); // an empty ExportMetricsServiceResponse
        });
        app.MapPost("/v1/metrics", async (HttpContext http) =>
        {
            receiver!.Exports.Enqueue(Decode("http/protobuf", await ReadAll(http.Request.Body)));
            http.Response.ContentType = "application/x-protobuf";
            await http.Response.Body.WriteAsync(Array.Empty<byte>());
        });
        await app.StartAsync();
        var ports = app.Urls.Select(u => new Uri(u).Port).ToList();
        receiver = new OtlpReceiver(app, ports[0], ports[1]);
        return receiver;
    }

    private static async Task<byte[]> ReadAll(Stream body)
    {
        using var ms = new MemoryStream();
        await body.CopyToAsync(ms);
        return ms.ToArray();
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    /// <summary>The newest export that satisfies <paramref name="ready"/>, waiting up to <paramref name="timeout"/>.</summary>
    public OtlpExport WaitFor(Func<OtlpExport, bool> ready, TimeSpan timeout)
    {
        DateTime until = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < until)
        {
            OtlpExport? hit = Exports.Reverse().FirstOrDefault(ready);
            if (hit is not null)
                return hit;
            Thread.Sleep(50);
        }
        throw new TimeoutException($"no OTLP export as wanted within {timeout} ({Exports.Count} received)");
    }

    // --- ExportMetricsServiceRequest { repeated ResourceMetrics resource_metrics = 1; }
    public static OtlpExport Decode(string protocol, byte[] request)
    {
        var resource = new Dictionary<string, string>();
        var points = new List<OtlpPoint>();
        string scope = "";
        foreach (ByteString rm in Messages(request, 1))
        {
            // ResourceMetrics { Resource resource = 1; repeated ScopeMetrics scope_metrics = 2; }
            foreach (ByteString r in Messages(rm, 1))
                foreach (ByteString kv in Messages(r, 1)) // Resource { repeated KeyValue attributes = 1; }
                    Add(resource, kv);
            foreach (ByteString sm in Messages(rm, 2))
            {
                // ScopeMetrics { InstrumentationScope scope = 1; repeated Metric metrics = 2; }
                foreach (ByteString s in Messages(sm, 1))
                    scope = Strings(s, 1).FirstOrDefault() ?? "";
                foreach (ByteString m in Messages(sm, 2))
                    points.AddRange(MetricPoints(m));
            }
        }
        return new OtlpExport(protocol, resource, scope, points);
    }

    // Metric { string name = 1; string description = 2; string unit = 3; Gauge gauge = 5; Sum sum = 7; Histogram histogram = 9; }
    private static IEnumerable<OtlpPoint> MetricPoints(ByteString metric)
    {
        string name = Strings(metric, 1).FirstOrDefault() ?? "", unit = Strings(metric, 3).FirstOrDefault() ?? "";
        foreach (ByteString gauge in Messages(metric, 5))
            foreach (ByteString p in Messages(gauge, 1)) // Gauge { repeated NumberDataPoint data_points = 1; }
                yield return NumberPoint(name, "gauge", unit, p, monotonic: false);
        foreach (ByteString sum in Messages(metric, 7))
        {
            // Sum { repeated NumberDataPoint data_points = 1; AggregationTemporality aggregation_temporality = 2; bool is_monotonic = 3; }
            bool monotonic = Varints(sum, 3).FirstOrDefault() == 1;
            foreach (ByteString p in Messages(sum, 1))
                yield return NumberPoint(name, "sum", unit, p, monotonic);
        }
        if (Messages(metric, 9).Any() || Messages(metric, 10).Any() || Messages(metric, 11).Any())
            throw new InvalidDataException($"{name}: a histogram or summary, which the agent does not export");
    }

    // NumberDataPoint { fixed64 start_time_unix_nano = 2; fixed64 time_unix_nano = 3; double as_double = 4; sfixed64 as_int = 6; repeated KeyValue attributes = 7; }
    private static OtlpPoint NumberPoint(string metric, string kind, string unit, ByteString point, bool monotonic)
    {
        var attributes = new Dictionary<string, string>();
        double value = double.NaN;
        bool isInt = false;
        var input = new CodedInputStream(point.ToByteArray());
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 4: value = input.ReadDouble(); break;
                case 6: value = input.ReadSFixed64(); isInt = true; break;
                case 7: Add(attributes, input.ReadBytes()); break;
                default: input.SkipLastField(); break;
            }
        }
        return new OtlpPoint(metric, kind, unit, attributes, value, isInt, monotonic);
    }

    // KeyValue { string key = 1; AnyValue value = 2; }  AnyValue { string string_value = 1; bool bool_value = 2; int64 int_value = 3; double double_value = 4; }
    private static void Add(Dictionary<string, string> into, ByteString keyValue)
    {
        string key = Strings(keyValue, 1).Single();
        string value = "";
        foreach (ByteString any in Messages(keyValue, 2))
        {
            var input = new CodedInputStream(any.ToByteArray());
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                value = WireFormat.GetTagFieldNumber(tag) switch
                {
                    1 => input.ReadString(),
                    2 => input.ReadBool() ? "true" : "false",
                    3 => input.ReadInt64().ToString(System.Globalization.CultureInfo.InvariantCulture),
                    4 => input.ReadDouble().ToString("R", System.Globalization.CultureInfo.InvariantCulture),
                    _ => Skip(input),
                };
            }
        }
        into[key] = value;
    }

    private static string Skip(CodedInputStream input)
    {
        input.SkipLastField();
        return "";
    }

    private static IEnumerable<ByteString> Messages(ByteString message, int field) => Messages(message.ToByteArray(), field);

    private static IEnumerable<ByteString> Messages(byte[] message, int field) =>
        Fields(message, field, WireFormat.WireType.LengthDelimited, input => input.ReadBytes());

    private static IEnumerable<string> Strings(ByteString message, int field) => Messages(message, field).Select(b => b.ToStringUtf8());

    private static IEnumerable<ulong> Varints(ByteString message, int field) =>
        Fields(message.ToByteArray(), field, WireFormat.WireType.Varint, input => input.ReadUInt64());

    /// <summary>Every value of field <paramref name="field"/> (of the given wire type) in a message; others skipped.</summary>
    private static List<T> Fields<T>(byte[] message, int field, WireFormat.WireType type, Func<CodedInputStream, T> read)
    {
        var list = new List<T>();
        var input = new CodedInputStream(message);
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            if (WireFormat.GetTagFieldNumber(tag) == field && WireFormat.GetTagWireType(tag) == type)
                list.Add(read(input));
            else
                input.SkipLastField();
        }
        return list;
    }
}
