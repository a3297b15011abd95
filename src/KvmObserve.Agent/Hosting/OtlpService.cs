using System.Reflection;
using KvmObserve.Exposition;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// OTLP metrics export: the OpenTelemetry SDK's periodic reader collects <see cref="OtelInstruments"/> (the aggregates
/// /metrics renders, cumulative) and its OTLP exporter sends them over gRPC or http/protobuf. The export runs on the
/// reader's own thread: a slow or absent receiver never touches /metrics or event intake. Each export sends the
/// current totals, so a failed one loses nothing and nothing queues up: memory stays bounded through any outage.
/// </summary>
public sealed class OtlpService(OtlpOptions options, Func<ExpositionContext?> context, ILogger<OtlpService> logger) : IHostedService, IDisposable
{
    private OtelInstruments? _instruments;
    private MeterProvider? _provider;
    private OutageReportingExporter? _exporter;

    public static string Version { get; } = typeof(OtlpService).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()
        ?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    public long Exports => _exporter?.Successes ?? 0;
    public long FailedExports => _exporter?.Failures ?? 0;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        // Transient failures (unavailable, timeouts, 429/502/503/504) are retried with exponential backoff, in memory,
        // one export at a time.
        if (Environment.GetEnvironmentVariable("OTEL_DOTNET_EXPERIMENTAL_OTLP_RETRY") is null)
            Environment.SetEnvironmentVariable("OTEL_DOTNET_EXPERIMENTAL_OTLP_RETRY", "in_memory");
        _instruments = new OtelInstruments(context, Version, TimeSpan.FromMilliseconds(Math.Min(1000, options.Interval.TotalMilliseconds / 2)));
        var exporterOptions = new OtlpExporterOptions
        {
            Endpoint = options.Endpoint,
            Protocol = options.Protocol,
            Headers = options.Headers,
            TimeoutMilliseconds = (int)options.Timeout.TotalMilliseconds,
        };
        _exporter = new OutageReportingExporter(new OtlpMetricExporter(exporterOptions), options, logger);
        var reader = new PeriodicExportingMetricReader(_exporter, (int)options.Interval.TotalMilliseconds, (int)options.Timeout.TotalMilliseconds)
        {
            TemporalityPreference = MetricReaderTemporalityPreference.Cumulative,
        };
        _provider = Sdk.CreateMeterProviderBuilder()
            .SetResourceBuilder(ResourceBuilder.CreateEmpty().AddAttributes(ResourceAttributes()))
            .AddMeter(OtelInstruments.MeterName)
            .AddReader(reader)
            .Build();
        Log.OtlpExporting(logger, options.ToString());
        return Task.CompletedTask;
    }

    /// <summary>service.name kvmobserve, service.version, host.name, host.id (the machine id, as OTel's host detector).</summary>
    public static IEnumerable<KeyValuePair<string, object>> ResourceAttributes()
    {
        yield return new("service.name", "kvmobserve");
        yield return new("service.version", Version);
        yield return new("host.name", Environment.MachineName);
        if (MachineId() is string id)
            yield return new("host.id", id);
    }

    private static string? MachineId()
    {
        foreach (string path in new[] { "/etc/machine-id", "/var/lib/dbus/machine-id" })
        {
            try
            {
                string id = File.ReadAllText(path).Trim();
                if (id.Length > 0)
                    return id;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
        return null;
    }

    /// <summary>Stops with a last collection and export, given at most 2 s (or the export timeout, if shorter): a
    /// collector that accepts but never answers must not hold the agent's stop for the export timeout. Shutdown, not
    /// a flush then Dispose: Dispose would wait, unbounded, for an export still hanging.</summary>
    public Task StopAsync(CancellationToken cancellationToken)
    {
        _provider?.Shutdown((int)Math.Min(options.Timeout.TotalMilliseconds, 2000));
        Dispose();
        return Task.CompletedTask;
    }

    public void Dispose()
    {
        _provider?.Dispose();
        _provider = null;
        _instruments?.Dispose();
        _instruments = null;
    }

    /// <summary>Passes batches to the OTLP exporter and says, in one line each, when exports start failing and when
    /// they work again (not a line per failed export).</summary>
    private sealed class OutageReportingExporter(OtlpMetricExporter inner, OtlpOptions options, ILogger logger) : BaseExporter<Metric>
    {
        private static readonly PropertyInfo ParentProperty = typeof(BaseExporter<Metric>).GetProperty(nameof(ParentProvider))!;
        private long _failing;
        private DateTime _since;
        public long Successes;
        public long Failures;

        public override ExportResult Export(in Batch<Metric> batch)
        {
            // The inner exporter reads the resource from its provider, which the SDK sets on this (outer) exporter only.
            if (inner.ParentProvider is null && ParentProvider is not null)
                ParentProperty.GetSetMethod(nonPublic: true)!.Invoke(inner, [ParentProvider]);
            ExportResult result = inner.Export(batch);
            if (result == ExportResult.Success)
            {
                Interlocked.Increment(ref Successes);
                if (_failing > 0)
                    Log.OtlpResumed(logger, options.Endpoint.ToString(), _failing, (DateTime.UtcNow - _since).TotalSeconds);
                _failing = 0;
            }
            else
            {
                Interlocked.Increment(ref Failures);
                if (_failing++ == 0)
                {
                    _since = DateTime.UtcNow;
                    Log.OtlpFailing(logger, options.Endpoint.ToString());
                }
            }
            return result;
        }

        protected override bool OnForceFlush(int timeoutMilliseconds) => inner.ForceFlush(timeoutMilliseconds);

        protected override bool OnShutdown(int timeoutMilliseconds) => inner.Shutdown(timeoutMilliseconds);

        protected override void Dispose(bool disposing)
        {
            if (disposing)
                inner.Dispose();
            base.Dispose(disposing);
        }
    }
}
