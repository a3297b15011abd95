using System.CommandLine;
using KvmObserve.Agent.Hosting;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Exposition;
using KvmObserve.Sources;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace KvmObserve.Agent.Commands;

/// <summary>`kvmobserve run` (the default): the agent.</summary>
internal static class RunCommand
{
    public static readonly Option<string> Listen = new("--listen")
    {
        Description = $"HOST:PORT for /metrics (default {AgentOptionsDefaults.Listen})",
        DefaultValueFactory = _ => AgentOptionsDefaults.Listen,
    };

    public static readonly Option<string> Source = new("--source")
    {
        Description = "Where events come from: auto (counters when every metric is a plain count, else tracefs), tracefs, perf, perf-count",
        DefaultValueFactory = _ => AgentOptionsDefaults.Source,
    };

    public static readonly Option<int> SeriesLimit = new("--series-limit")
    {
        Description = "Label sets per metric family; past it, new ones count into the family's overflow series",
        DefaultValueFactory = _ => AgentOptionsDefaults.SeriesLimit,
    };

    public static readonly Option<int> TopK = new("--top-k")
    {
        Description = "Ports, MMIO pages, MSRs, CPUID leaves and vectors per VM with their own series (by rate); the rest is \"other\"",
        DefaultValueFactory = _ => AgentOptionsDefaults.TopK,
    };

    public static readonly Option<string> VmGrace = new("--vm-grace")
    {
        Description = "How long an exited VM's series stay (a VM restarted under its name within it continues them)",
        DefaultValueFactory = _ => AgentOptionsDefaults.VmGrace,
    };

    public static readonly Option<int> BufferKb = new("--buffer-kb")
    {
        Description = "Per-CPU ring size in KiB of the tracefs instance or perf ring (0: 4096)",
        DefaultValueFactory = _ => 0,
    };

    public static readonly Option<string> Metrics = new("--metrics")
    {
        Description = "Metric groups to collect: all, or a list of " + string.Join(", ", KvmObserve.Sources.MetricSelection.All),
        DefaultValueFactory = _ => AgentOptionsDefaults.Metrics,
    };

    public static readonly Option<int?> WakeupPercent = new("--wakeup-percent")
    {
        Description = "How full a ring gets before its reader wakes (tracefs buffer_percent, perf watermark); default 25",
    };

    public static readonly Option<int> DiscoveryInterval = new("--discovery-interval-ms")
    {
        Description = "How often procfs is rescanned for VMs and their threads",
        DefaultValueFactory = _ => AgentOptionsDefaults.DiscoveryIntervalMs,
    };

    private static Option[] All => [Listen, Source, Metrics, SeriesLimit, TopK, VmGrace, BufferKb, WakeupPercent, DiscoveryInterval];

    public static Command Create()
    {
        var command = new Command("run", "Run the agent: read kvm tracepoints and serve /metrics");
        foreach (Option o in All)
            command.Options.Add(o);
        command.SetAction((parse, ct) => RunAsync(Bind(parse), ct));
        return command;
    }

    public static void AddTo(RootCommand root)
    {
        foreach (Option o in All)
            root.Options.Add(o);
        root.SetAction((parse, ct) => RunAsync(Bind(parse), ct));
    }

    private static AgentOptions? Bind(ParseResult parse)
    {
        try
        {
            return new AgentOptions
            {
                Listen = AgentOptions.ParseListen(parse.GetValue(Listen)!),
                Source = AgentOptions.ParseSource(parse.GetValue(Source)!),
                Metrics = AgentOptions.ParseMetrics(parse.GetValue(Metrics)!),
                WakeupPercent = parse.GetValue(WakeupPercent) is int w ? AgentOptions.InRange("--wakeup-percent", w, 0, 100) : null,
                DiscoveryIntervalMs = AgentOptions.InRange("--discovery-interval-ms", parse.GetValue(DiscoveryInterval), 50, 3_600_000),
                SeriesLimit = AgentOptions.Positive("--series-limit", parse.GetValue(SeriesLimit)),
                TopK = AgentOptions.InRange("--top-k", parse.GetValue(TopK), 1, 4096),
                VmGrace = AgentOptions.ParseDuration("--vm-grace", parse.GetValue(VmGrace)!),
                BufferSizeKb = parse.GetValue(BufferKb) >= 0 ? parse.GetValue(BufferKb)
                    : throw new OptionException("--buffer-kb: must be 0 or a positive number of KiB"),
            };
        }
        catch (OptionException e)
        {
            Console.Error.WriteLine($"kvmobserve: {e.Message}");
            return null;
        }
    }

    private static async Task<int> RunAsync(AgentOptions? options, CancellationToken cancellationToken)
    {
        if (options is null)
            return 2;
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(k => k.Listen(options.Listen));
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(new VmRegistry());
        builder.Services.AddSingleton(sp => new SchedstatCollector(sp.GetRequiredService<VmRegistry>()));
        builder.Services.AddSingleton(sp => new Aggregator(CpuTopology.PossibleCpus(), sp.GetRequiredService<VmRegistry>(), options.Aggregation));
        builder.Services.AddSingleton<SourceService>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<SourceService>());
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));

        WebApplication app = builder.Build();
        SourceService source = app.Services.GetRequiredService<SourceService>();
        app.MapGet("/metrics", async (HttpContext http) =>
        {
            ExpositionContext? context = source.Context;
            if (context is null)
            {
                http.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                return;
            }
            http.Response.ContentType = PrometheusTextWriter.ContentType;
            MetricsRenderer.Render(http.Response.BodyWriter, context);
            await http.Response.BodyWriter.FlushAsync(http.RequestAborted);
        });
        app.MapGet("/healthz", (HttpContext http) => source.Context is null ? Results.StatusCode(503) : Results.Text("ok\n"));
        app.MapGet("/", () => Results.Text("kvmobserve: see /metrics\n"));

        try
        {
            await app.StartAsync(cancellationToken);
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or NotSupportedException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"kvmobserve: cannot start: {e.Message}");
            await app.DisposeAsync();
            return 1;
        }
        Log.Listening(app.Services.GetRequiredService<ILogger<SourceService>>(),
            options.Listen.ToString());
        await app.WaitForShutdownAsync(cancellationToken);
        await app.DisposeAsync();
        return 0;
    }
}
