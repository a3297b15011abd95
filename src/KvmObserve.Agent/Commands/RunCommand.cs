using System.CommandLine;
using KvmObserve.Agent.Hosting;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Storms;
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
    public static readonly Option<string?> Config = new("--config")
    {
        Description = "A JSON file of settings (keys as in README: Listen, Source, Otlp:Endpoint ...); environment variables KVMOBSERVE__KEY override it, flags override both",
    };

    public static readonly Option<bool> PrintConfig = new("--print-config")
    {
        Description = "Print the effective settings, each with where it came from, and exit",
    };

    /// <summary>One flag per setting, with no default of its own: a flag given overrides the file and environment.</summary>
    private static readonly IReadOnlyList<(Setting Setting, Option<string?> Option)> SettingOptions =
        Settings.All.Select(s => (s, new Option<string?>(s.Flag, [.. s.Aliases]) { Description = $"{s.Meaning} (default: {(s.Default.Length == 0 ? "none" : s.Default)}; {s.Environment}; \"{s.Key}\" in --config)" })).ToList();

    private static IEnumerable<Option> All => SettingOptions.Select(o => (Option)o.Option).Append(Config).Append(PrintConfig);

    public static Command Create()
    {
        var command = new Command("run", "Run the agent: read kvm tracepoints and serve /metrics (and OTLP, when an endpoint is set)");
        foreach (Option o in All)
            command.Options.Add(o);
        command.SetAction((parse, ct) => RunAsync(parse, ct));
        return command;
    }

    public static void AddTo(RootCommand root)
    {
        foreach (Option o in All)
            root.Options.Add(o);
        root.SetAction((parse, ct) => RunAsync(parse, ct));
    }

    /// <summary>The layered settings and the options they give, or the one-line error.</summary>
    public static (LayeredSettings?, AgentOptions?) Bind(ParseResult parse)
    {
        try
        {
            var flags = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
            foreach ((Setting setting, Option<string?> option) in SettingOptions)
            {
                if (parse.GetValue(option) is string v)
                    flags[setting.Key] = v;
            }
            LayeredSettings layered = LayeredSettings.Load(parse.GetValue(Config), flags);
            return (layered, AgentOptions.From(layered));
        }
        catch (OptionException e)
        {
            Console.Error.WriteLine($"kvmobserve: {e.Message}");
            return (null, null);
        }
    }

    private static async Task<int> RunAsync(ParseResult parse, CancellationToken cancellationToken)
    {
        (LayeredSettings? layered, AgentOptions? options) = Bind(parse);
        if (options is null || layered is null)
            return 2;
        if (parse.GetValue(PrintConfig))
        {
            PrintSettings(layered, options);
            return 0;
        }
        return await RunAsync(options, cancellationToken);
    }

    /// <summary>JSON in the --config file's shape, effective values, with an "origin" object naming each one's layer.
    /// Header values are not printed (they often carry API keys).</summary>
    private static void PrintSettings(LayeredSettings layered, AgentOptions options)
    {
        var values = new System.Text.Json.Nodes.JsonObject();
        var origins = new System.Text.Json.Nodes.JsonObject();
        foreach (Setting setting in Settings.All)
        {
            (string value, string origin) = layered.Get(setting);
            if (setting == Settings.OtlpHeaders && value.Length > 0)
                value = "(set, not shown)";
            System.Text.Json.Nodes.JsonObject target = values;
            string[] path = setting.Key.Split(':');
            for (int i = 0; i < path.Length - 1; i++)
            {
                if (target[path[i]] is not System.Text.Json.Nodes.JsonObject child)
                    target[path[i]] = child = new System.Text.Json.Nodes.JsonObject();
                target = child;
            }
            target[path[^1]] = value;
            origins[setting.Key] = origin;
        }
        values["_origin"] = origins;
        values["_otlp"] = options.Otlp?.ToString() ?? "off (no endpoint set)";
        Console.WriteLine(values.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    private static async Task<int> RunAsync(AgentOptions options, CancellationToken cancellationToken)
    {
        // The kernel state (tracefs instance, enabled events, perf fds, BPF links) comes after what can fail at start:
        // the hosted services start before Kestrel binds, so the address is tried first.
        if (ListenProblem(options.Listen) is string problem)
        {
            Console.Error.WriteLine($"kvmobserve: --listen {options.Listen}: {problem}");
            return 2;
        }
        // No appsettings.json is read (settings are --config, KVMOBSERVE__* and flags), so nothing needs watching: with
        // reload on, the host watched the working directory recursively, 44,000 inotify watches when started from /.
        Environment.SetEnvironmentVariable("DOTNET_hostBuilder__reloadConfigOnChange", "false");
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.None); // a failed start is one line, below
        builder.WebHost.ConfigureKestrel(k => k.Listen(options.Listen, listen =>
        {
            if (options.Web?.Certificate is { } certificate)
                listen.UseHttps(certificate);
        }));
        builder.Services.AddSingleton(options);
        // A replay names its VMs from the recording: it must not find (or mark exited) this host's processes.
        builder.Services.AddSingleton(options.Replay is null ? new VmRegistry() : VmRegistry.WithoutProcfs());
        builder.Services.AddSingleton(new StormDetector(options.Storms));
        builder.Services.AddSingleton(sp => new SchedstatCollector(sp.GetRequiredService<VmRegistry>()));
        builder.Services.AddSingleton(sp => new Aggregator(CpuTopology.PossibleCpus(), sp.GetRequiredService<VmRegistry>(), options.Aggregation));
        builder.Services.AddSingleton<SourceService>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<SourceService>());
        builder.Services.AddHostedService<StormService>();
        if (options.Otlp is { } otlp)
        {
            builder.Services.AddSingleton(sp => new OtlpService(otlp, () => sp.GetRequiredService<SourceService>().Context,
                sp.GetRequiredService<ILogger<OtlpService>>()));
            builder.Services.AddHostedService(sp => sp.GetRequiredService<OtlpService>());
        }
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));

        WebApplication app = builder.Build();
        SourceService source = app.Services.GetRequiredService<SourceService>();
        var auth = new BasicAuth(options.Web?.Users ?? new Dictionary<string, string>());
        app.MapGet("/metrics", async (HttpContext http) =>
        {
            if (auth.Enabled && !await auth.AllowsAsync(http.Request))
            {
                http.Response.StatusCode = StatusCodes.Status401Unauthorized;
                http.Response.Headers.WWWAuthenticate = "Basic realm=\"kvmobserve\"";
                return;
            }
            ExpositionContext? context = source.Context;
            if (context is null)
            {
                http.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                return;
            }
            bool openMetrics = WantsOpenMetrics(http.Request.Headers.Accept);
            http.Response.ContentType = openMetrics ? PrometheusTextWriter.OpenMetricsContentType : PrometheusTextWriter.ContentType;
            MetricsRenderer.Render(http.Response.BodyWriter, context, openMetrics);
            await http.Response.BodyWriter.FlushAsync(http.RequestAborted);
        });
        app.MapGet("/healthz", (HttpContext http) => source.Context is null ? Results.StatusCode(503) : Results.Text("ok\n"));
        app.MapGet("/", () => Results.Text("kvmobserve: see /metrics\n"));

        try
        {
            await app.StartAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            // SIGTERM or SIGINT while starting: a clean stop. The source may have started regardless of the token.
            await source.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
            return 0;
        }
        catch (Exception e)
        {
            // Whatever failed (Kestrel, a later hosted service), it is one line, and the source's state goes with it.
            Console.Error.WriteLine($"kvmobserve: cannot start: {e.Message.Split('\n')[0]}");
            // The host does not stop what it started before the failure: the source's kernel state goes now.
            await source.StopAsync(CancellationToken.None);
            await app.DisposeAsync();
            return 1;
        }
        Log.Listening(app.Services.GetRequiredService<ILogger<SourceService>>(),
            (options.Web?.Certificate is null ? "http://" : "https://") + options.Listen, auth.Enabled ? "basic auth" : "no auth");
        await app.WaitForShutdownAsync(cancellationToken);
        await app.DisposeAsync();
        return 0;
    }

    /// <summary>Why <paramref name="endpoint"/> cannot be listened on (in use, not this host's, no permission), or null.</summary>
    private static string? ListenProblem(System.Net.IPEndPoint endpoint)
    {
        try
        {
            using var socket = new System.Net.Sockets.Socket(endpoint.AddressFamily, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
            // SO_REUSEADDR alone, as raw: a restart must not fail on the last run's TIME_WAIT connections, and .NET's
            // ReuseAddress would add SO_REUSEPORT, which binds beside a running agent's listener.
            socket.SetRawSocketOption(1 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, BitConverter.GetBytes(1));
            socket.Bind(endpoint);
            socket.Listen(1);
            return null;
        }
        catch (System.Net.Sockets.SocketException e)
        {
            return e.SocketErrorCode == System.Net.Sockets.SocketError.AddressAlreadyInUse ? "the address is in use (another agent?)" : e.Message;
        }
    }

    /// <summary>OpenMetrics when the Accept header asks for application/openmetrics-text at a higher (or equal, listed
    /// first) quality than text/plain, as Prometheus does; the 0.0.4 text otherwise.</summary>
    public static bool WantsOpenMetrics(string? accept)
    {
        if (string.IsNullOrEmpty(accept))
            return false;
        double open = -1, plain = -1;
        foreach (string part in accept.Split(','))
        {
            string[] fields = part.Split(';', StringSplitOptions.TrimEntries);
            double q = 1;
            foreach (string f in fields.Skip(1))
            {
                if (f.StartsWith("q=", StringComparison.Ordinal) && double.TryParse(f.AsSpan(2), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v))
                    q = v;
            }
            if (fields[0].Equals("application/openmetrics-text", StringComparison.OrdinalIgnoreCase) && open < 0)
                open = q;
            else if ((fields[0].Equals("text/plain", StringComparison.OrdinalIgnoreCase) || fields[0] == "*/*") && plain < 0)
                plain = q;
        }
        return open > 0 && open >= plain;
    }
}
