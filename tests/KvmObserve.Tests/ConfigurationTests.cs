using System.Text.Json;

namespace KvmObserve.Tests;

/// <summary>
/// Settings come from a JSON file (--config), KVMOBSERVE__ variables and flags, in that order of precedence; a bad value
/// of any kind stops startup with exit code 2 and one line naming the setting, where it came from, and what it takes.
/// </summary>
public sealed class ConfigurationTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kvmobserve-config").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string File(string name, string text)
    {
        string path = Path.Combine(_dir, name);
        System.IO.File.WriteAllText(path, text);
        return path;
    }

    public static TheoryData<string[], string, string> BadValues => new()
    {
        // kind: address
        { ["--listen", "nowhere"], "", "kvmobserve: --listen: 'nowhere' is not HOST:PORT (e.g. 127.0.0.1:9632)" },
        { ["--listen", "myhost:80"], "", "kvmobserve: --listen: 'myhost' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, [::1])" },
        { ["--web.listen-address", "nowhere"], "", "kvmobserve: --listen: 'nowhere' is not HOST:PORT (e.g. 127.0.0.1:9632)" },
        // kind: one of a set
        { ["--source", "ebpf"], "", "kvmobserve: --source: 'ebpf' is not one of auto, bpf, tracefs, perf, perf-count, replay" },
        { ["--otlp-protocol", "udp"], "", "kvmobserve: --otlp-protocol: 'udp' is not one of grpc, http/protobuf" },
        // kind: list of a set
        { ["--metrics", "exits,ports"], "", "kvmobserve: --metrics: 'ports' is not one of all, exits, userspace_exits, pio, mmio, msr, cpuid, emulated_instructions, injected_exceptions, halt, mmu_page_faults, mmu_events" },
        // kind: whole number in a range
        { ["--top-k", "0"], "", "kvmobserve: --top-k: 0 is outside 1..4096" },
        { ["--series-limit", "lots"], "", "kvmobserve: --series-limit: 'lots' is not a whole number (1..10000000)" },
        { ["--wakeup-percent", "101"], "", "kvmobserve: --wakeup-percent: 101 is outside 0..100" },
        // kind: duration
        { ["--vm-grace", "soon"], "", "kvmobserve: --vm-grace: 'soon' is not a duration (e.g. 500ms, 30s, 2m, 1h)" },
        { ["--vm-grace", "99999999999999999999h"], "", "kvmobserve: --vm-grace: '99999999999999999999h' is longer than the longest duration taken (3650 days)" },
        // not a flag at all
        { ["--bogus-flag"], "", "kvmobserve: Unrecognized command or argument '--bogus-flag'. (kvmobserve --help lists the commands and options)" },
        { ["load", "--vms"], "", "kvmobserve: Required argument missing for option: '--vms'. (kvmobserve --help lists the commands and options)" },
        { ["--otlp-endpoint", "http://127.0.0.1:4317", "--otlp-interval", "10ms"], "", "kvmobserve: --otlp-interval: '10ms' is shorter than 100ms" },
        // kind: URL
        { ["--otlp-endpoint", "127.0.0.1:4317"], "", "kvmobserve: --otlp-endpoint: '127.0.0.1:4317' is not an http:// or https:// URL (e.g. http://127.0.0.1:4317)" },
        // kind: key=value list
        { ["--otlp-endpoint", "http://127.0.0.1:4317", "--otlp-headers", "api key"], "", "kvmobserve: --otlp-headers: 'api key' is not a list of NAME=VALUE pairs (e.g. api-key=abc,tenant=x)" },
        // kind: file
        { ["--web-config", "/nonexistent/web.yml"], "", "kvmobserve: --web-config: cannot read '/nonexistent/web.yml': Could not find a part of the path '/nonexistent/web.yml'." },
        { ["--config", "/nonexistent/kvmobserve.json"], "", "kvmobserve: --config: cannot read '/nonexistent/kvmobserve.json': no such file" },
    };

    [Theory]
    [MemberData(nameof(BadValues))]
    public void A_bad_flag_stops_startup_with_one_line_and_exit_code_2(string[] args, string unused, string line)
    {
        _ = unused;
        (int code, string stdout, string stderr) = AgentProcess.Run(args);
        Assert.Equal(2, code);
        Assert.Equal(line, stderr.TrimEnd('\n'));
        Assert.Equal("", stdout);
    }

    [Fact]
    public void A_bad_value_from_the_environment_or_the_file_says_where_it_came_from()
    {
        (int code, _, string stderr) = AgentProcess.Run([], new Dictionary<string, string> { ["KVMOBSERVE__VMGRACE"] = "-1s" });
        Assert.Equal(2, code);
        Assert.Equal("kvmobserve: --vm-grace (from KVMOBSERVE__VMGRACE): '-1s' is not a duration (e.g. 500ms, 30s, 2m, 1h)", stderr.TrimEnd('\n'));

        string config = File("bad.json", """{ "Otlp": { "Endpoint": "http://127.0.0.1:4318", "Protocol": "http" } }""");
        (code, _, stderr) = AgentProcess.Run(["--config", config]);
        Assert.Equal(2, code);
        Assert.Equal($"kvmobserve: --otlp-protocol (from Otlp:Protocol in {config}): 'http' is not one of grpc, http/protobuf", stderr.TrimEnd('\n'));

        (code, _, stderr) = AgentProcess.Run(["--otlp-endpoint", "http://127.0.0.1:4317"], new Dictionary<string, string> { ["OTEL_METRIC_EXPORT_INTERVAL"] = "5s" });
        Assert.Equal(2, code);
        Assert.Equal("kvmobserve: OTEL_METRIC_EXPORT_INTERVAL: '5s' is not a whole number of milliseconds", stderr.TrimEnd('\n'));
    }

    [Fact]
    public void Unknown_keys_and_broken_files_are_refused_not_ignored()
    {
        string typo = File("typo.json", """{ "Listen": "127.0.0.1:9632", "TopKay": 4 }""");
        (int code, _, string stderr) = AgentProcess.Run(["--config", typo]);
        Assert.Equal(2, code);
        Assert.StartsWith($"kvmobserve: --config: 'TopKay' in {typo} is not a setting (known: Listen, Source,", stderr);

        (code, _, stderr) = AgentProcess.Run([], new Dictionary<string, string> { ["KVMOBSERVE__LISTNE"] = "0.0.0.0:1" });
        Assert.Equal(2, code);
        Assert.StartsWith("kvmobserve: KVMOBSERVE__LISTNE: not a setting (known: KVMOBSERVE__LISTEN,", stderr);

        string broken = File("broken.json", "{ \"Listen\": ");
        (code, _, stderr) = AgentProcess.Run(["--config", broken]);
        Assert.Equal(2, code);
        Assert.StartsWith($"kvmobserve: --config: cannot read '{broken}':", stderr);
        Assert.Single(stderr.TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public void The_exporter_flag_names_set_the_same_settings_as_ours()
    {
        string web = File("web.yml", "basic_auth_users: {}\n");
        (int code, string stdout, string stderr) = AgentProcess.Run(["--print-config", "--web.listen-address", "127.0.0.1:9911", "--web.config.file", web]);
        Assert.True(code == 0, stderr);
        using JsonDocument doc = JsonDocument.Parse(stdout);
        Assert.Equal("127.0.0.1:9911", doc.RootElement.GetProperty("Listen").GetString());
        Assert.Equal(web, doc.RootElement.GetProperty("WebConfig").GetString());
        Assert.Equal("flag", doc.RootElement.GetProperty("_origin").GetProperty("Listen").GetString());
    }

    [Fact]
    public void The_file_is_overridden_by_the_environment_and_both_by_flags()
    {
        string config = File("layers.json", """
            { "Listen": "127.0.0.1:9001", "TopK": 3, "SeriesLimit": 100, "VmGrace": "10s",
              "Otlp": { "Endpoint": "http://127.0.0.1:4318", "Protocol": "http/protobuf" } }
            """);
        (int code, string stdout, string stderr) = AgentProcess.Run(["--config", config, "--print-config", "--top-k", "7"],
            new Dictionary<string, string> { ["KVMOBSERVE__TOPK"] = "5", ["KVMOBSERVE__SERIESLIMIT"] = "200", ["KVMOBSERVE__OTLP__HEADERS"] = "api-key=secret" });
        Assert.True(code == 0, stderr);
        using JsonDocument doc = JsonDocument.Parse(stdout);
        JsonElement root = doc.RootElement, origin = root.GetProperty("_origin");
        Assert.Equal("127.0.0.1:9001", root.GetProperty("Listen").GetString());   // file
        Assert.Equal(config, origin.GetProperty("Listen").GetString());
        Assert.Equal("200", root.GetProperty("SeriesLimit").GetString());         // environment over file
        Assert.Equal("environment", origin.GetProperty("SeriesLimit").GetString());
        Assert.Equal("7", root.GetProperty("TopK").GetString());                  // flag over both
        Assert.Equal("flag", origin.GetProperty("TopK").GetString());
        Assert.Equal("10s", root.GetProperty("VmGrace").GetString());             // file, nothing over it
        Assert.Equal("default", origin.GetProperty("Source").GetString());
        Assert.Equal("(set, not shown)", root.GetProperty("Otlp").GetProperty("Headers").GetString());
        Assert.DoesNotContain("secret", stdout);
        // A base endpoint gets the signal path for http/protobuf; the interval falls back to OTel's 60 s.
        Assert.Equal("http/protobuf http://127.0.0.1:4318/v1/metrics every 60s (timeout 10s)", root.GetProperty("_otlp").GetString());
    }

    [Fact]
    public void The_standard_otel_variables_are_honoured_and_the_agents_own_settings_win()
    {
        var env = new Dictionary<string, string>
        {
            ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:4318/base",
            ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf",
            ["OTEL_METRIC_EXPORT_INTERVAL"] = "15000",
            ["OTEL_EXPORTER_OTLP_TIMEOUT"] = "3000",
        };
        (int code, string stdout, string stderr) = AgentProcess.Run(["--print-config"], env);
        Assert.True(code == 0, stderr);
        Assert.Equal("http/protobuf http://127.0.0.1:4318/base/v1/metrics every 15s (timeout 3s)",
            JsonDocument.Parse(stdout).RootElement.GetProperty("_otlp").GetString());

        env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = "http://127.0.0.1:4318/exact";
        (_, stdout, _) = AgentProcess.Run(["--print-config"], env);
        Assert.Equal("http/protobuf http://127.0.0.1:4318/exact every 15s (timeout 3s)",
            JsonDocument.Parse(stdout).RootElement.GetProperty("_otlp").GetString());

        (_, stdout, _) = AgentProcess.Run(["--print-config", "--otlp-endpoint", "http://127.0.0.1:4317", "--otlp-protocol", "grpc", "--otlp-interval", "2s"], env);
        Assert.Equal("grpc http://127.0.0.1:4317/ every 2s (timeout 3s)",
            JsonDocument.Parse(stdout).RootElement.GetProperty("_otlp").GetString());

        (_, stdout, _) = AgentProcess.Run(["--print-config"]);
        Assert.Equal("off (no endpoint set)", JsonDocument.Parse(stdout).RootElement.GetProperty("_otlp").GetString());
    }
}
