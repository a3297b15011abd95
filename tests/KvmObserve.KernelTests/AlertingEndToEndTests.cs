using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using KvmObserve.Decoding.Format;
using KvmObserve.Sources.Recording;
using KvmObserve.Tests;
using Xunit;
using Xunit.Abstractions;

namespace KvmObserve.KernelTests;

/// <summary>
/// The dashboards and the rules against a real Prometheus server (Debian's, on a loopback port, scraping every second):
/// the agent serves an encoded flight recording (this kernel's own format files; kvm_exit and kvm_entry cannot fire
/// here) with two VMs, every event kind, steal, and an exit storm. Every panel query of every dashboard, its template
/// variables filled in, must return data; the storm alert must be seen firing in /api/v1/alerts; the agent's
/// detector must turn on within 2 s of the storm's start and off after it ends; and `kvmobserve replay` of the
/// recording must count what was encoded.
/// </summary>
public sealed partial class AlertingEndToEndTests(ITestOutputHelper output) : IDisposable
{
    private static readonly string Repo = DeployTests.Repo;
    private readonly string _dir = Directory.CreateTempSubdirectory("kvmobserve-e2e").FullName;
    private Process? _prometheus;

    // The recording's timeline (seconds): calm, then VM e2e-a's vCPU 0 storms, then calm again; replayed in a loop.
    private const double StormFrom = 50, StormTo = 60, Length = 70;
    private const int CalmExitsPerVcpu = 500, StormExits = 50_000;

    public void Dispose()
    {
        Http.Dispose();
        if (_prometheus is { HasExited: false })
        {
            _prometheus.Kill();
            _prometheus.WaitForExit(10_000);
        }
        Directory.Delete(_dir, recursive: true);
    }

    [KernelFact(Kvm = false)]
    public void Every_dashboard_query_returns_data_and_the_storm_fires_the_alert_and_the_detector()
    {
        string? prometheus = new[] { "/usr/bin/prometheus", "/usr/local/bin/prometheus" }.FirstOrDefault(File.Exists);
        Assert.True(prometheus is not null, "prometheus missing (Debian package prometheus; .ci/run installs it)");
        string recording = Path.Combine(_dir, "storm.kvmrec");
        long encodedExits = Synthetic.Write(recording, StormFrom, StormTo, Length, CalmExitsPerVcpu, StormExits);

        // What was encoded is what replay counts.
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { Agent.Dll, "replay", recording })
            psi.ArgumentList.Add(a);
        using Process replay = Process.Start(psi)!;
        Task<string> replayLogTask = replay.StandardError.ReadToEndAsync();
        string replayed = replay.StandardOutput.ReadToEnd();
        replay.WaitForExit();
        (int code, string replayLog) = (replay.ExitCode, replayLogTask.Result);
        Assert.True(code == 0, replayLog);
        Assert.Equal(encodedExits, Metrics.Parse(replayed).Sum("kvm_exits_total"));

        using Agent agent = Agent.Start("--replay", recording);
        var started = Stopwatch.StartNew(); // the replay starts with the agent: storm at StormFrom on this clock
        StartPrometheus(prometheus, agent.Port);

        // The detector: on within 2 s of the storm's start, off after it ends (timed by scraping the agent itself).
        double on = WaitFor(agent, "kvm_exit_storm_active", 1, started, StormFrom + 10);
        output.WriteLine($"detector on {on - StormFrom:F2} s after the storm started");
        Assert.InRange(on - StormFrom, 0, 2);
        double off = WaitFor(agent, "kvm_exit_storm_active", 0, started, StormTo + 10);
        output.WriteLine($"detector off {off - StormTo:F2} s after the storm ended");
        Assert.True(off > StormTo, $"off at {off:F2} s, before the storm ended at {StormTo} s");
        Assert.Equal(1, agent.Scrape().Sum("kvmobserve_storms_total", ("vm", "e2e-a")));
        Assert.True(agent.WaitForLog(l => l.Contains("Exit storm on VM e2e-a:", StringComparison.Ordinal)
            && l.Contains("exit IO_INSTRUCTION", StringComparison.Ordinal) && l.Contains("vCPUs 0 ", StringComparison.Ordinal)), agent.LogText());
        Assert.True(agent.WaitForLog(l => l.Contains("Exit storm on VM e2e-a over after", StringComparison.Ordinal)), agent.LogText());

        // The storm alert, as Prometheus evaluates it (durations shortened, see StartPrometheus).
        JsonElement alert = Poll(TimeSpan.FromSeconds(40), () => Api("/api/v1/alerts").GetProperty("alerts").EnumerateArray()
            .Where(a => a.GetProperty("labels").GetProperty("alertname").GetString() == "KvmExitStorm"
                && a.GetProperty("state").GetString() == "firing").Cast<JsonElement?>().FirstOrDefault());
        Assert.Equal("e2e-a", alert.GetProperty("labels").GetProperty("vm").GetString());
        Assert.DoesNotContain(Api("/api/v1/alerts").GetProperty("alerts").EnumerateArray(),
            a => a.GetProperty("labels").GetProperty("vm").ValueKind == JsonValueKind.String
                && a.GetProperty("labels").GetProperty("vm").GetString() == "e2e-b");

        // Every panel query of every dashboard returns data.
        var empty = new List<string>();
        int queries = 0;
        foreach (string file in Directory.GetFiles(Path.Combine(Repo, "dashboards"), "*.json"))
        {
            using JsonDocument dashboard = JsonDocument.Parse(File.ReadAllText(file));
            foreach (JsonElement panel in dashboard.RootElement.GetProperty("panels").EnumerateArray())
            {
                foreach (JsonElement target in panel.GetProperty("targets").EnumerateArray())
                {
                    string expr = Substitute(target.GetProperty("expr").GetString()!);
                    if (expr.Contains("kvmobserve_bpf_", StringComparison.Ordinal))
                        continue; // only the bpf source serves these, not a replay: AgentOnLoadTests checks them
                    queries++;
                    JsonElement result = Poll(TimeSpan.FromSeconds(20), () =>
                    {
                        JsonElement r = Api("/api/v1/query?query=" + Uri.EscapeDataString(expr)).GetProperty("result");
                        return r.GetArrayLength() > 0 ? r : null;
                    }, throwOnTimeout: false);
                    if (result.ValueKind != JsonValueKind.Array)
                        empty.Add($"{Path.GetFileName(file)} / {panel.GetProperty("title").GetString()}: {expr}");
                }
            }
        }
        output.WriteLine($"{queries} panel queries run");
        Assert.True(empty.Count == 0, "no data for:\n" + string.Join("\n", empty));
        Assert.True(queries >= 45, $"only {queries} queries");
    }

    /// <summary>Template variables as a user who picked "All" gets them; $__rate_interval as Grafana makes it for a 1 s
    /// scrape interval over a short range.</summary>
    private static string Substitute(string expr) => expr
        .Replace("$__rate_interval", "30s", StringComparison.Ordinal)
        .Replace("$instance", ".*", StringComparison.Ordinal)
        .Replace("$job", "kvmobserve", StringComparison.Ordinal) // All: Grafana ORs the values label_values gave
        .Replace("$vcpu", ".*", StringComparison.Ordinal)
        .Replace("$vm", ".*", StringComparison.Ordinal);

    /// <summary>The shipped rules with their durations shortened so a storm shows within the test (each one replaced
    /// must be there): 1m rate windows to 10s, the hour-long baseline ending 5m ago to 30s ending 12s ago, and the
    /// storm's "for" to 3s. Thresholds are unchanged.</summary>
    private string ShortRules()
    {
        string rules = File.ReadAllText(Path.Combine(Repo, "deploy/prometheus/kvmobserve-rules.yml"));
        (string, string)[] replacements =
        [
            ("[1m]", "[10s]"), ("[1h] offset 5m", "[30s] offset 12s"), ("for: 1m", "for: 3s"),
        ];
        foreach ((string from, string to) in replacements)
        {
            Assert.Contains(from, rules);
            rules = rules.Replace(from, to, StringComparison.Ordinal);
        }
        return rules;
    }

    private void StartPrometheus(string prometheus, int agentPort)
    {
        File.WriteAllText(Path.Combine(_dir, "rules.yml"), ShortRules());
        int port = Agent.FreePort();
        File.WriteAllText(Path.Combine(_dir, "prometheus.yml"), $"""
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            rule_files: [rules.yml]
            scrape_configs:
              - job_name: kvmobserve
                static_configs:
                  - targets: ['127.0.0.1:{agentPort}']
            """);
        var psi = new ProcessStartInfo(prometheus)
        {
            RedirectStandardError = true, RedirectStandardOutput = true, WorkingDirectory = _dir,
        };
        foreach (string a in new[] { $"--config.file={_dir}/prometheus.yml", $"--storage.tsdb.path={_dir}/data",
            $"--web.listen-address=127.0.0.1:{port}", "--log.level=warn" })
            psi.ArgumentList.Add(a);
        _prometheus = Process.Start(psi)!;
        _prometheus.ErrorDataReceived += (_, e) => { if (e.Data is not null) output.WriteLine("prometheus: " + e.Data); };
        _prometheus.BeginErrorReadLine();
        _prometheusUrl = $"http://127.0.0.1:{port}";
        Poll(TimeSpan.FromSeconds(30), () => Api("/api/v1/targets").GetProperty("activeTargets").EnumerateArray()
            .Any(t => t.GetProperty("health").GetString() == "up") ? true : (bool?)null);
    }

    private string _prometheusUrl = "";
    /// <summary>Disposed with the test: a pooled connection closed later would change another test's fd count.</summary>
    private readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(10) };

    private JsonElement Api(string path)
    {
        try
        {
            using JsonDocument doc = JsonDocument.Parse(Http.GetStringAsync(_prometheusUrl + path).Result);
            return doc.RootElement.GetProperty("data").Clone();
        }
        catch (AggregateException e) when (e.InnerException is HttpRequestException)
        {
            return JsonDocument.Parse("""{"result":[],"alerts":[],"activeTargets":[]}""").RootElement.Clone();
        }
    }

    private static T Poll<T>(TimeSpan timeout, Func<T?> probe, bool throwOnTimeout = true) where T : struct
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (probe() is T value)
                return value;
            if (clock.Elapsed > timeout)
                return throwOnTimeout ? throw new TimeoutException($"not seen within {timeout}") : default;
            Thread.Sleep(250);
        }
    }

    private static JsonElement Poll(TimeSpan timeout, Func<JsonElement?> probe, bool throwOnTimeout = true) =>
        Poll<JsonElement>(timeout, probe, throwOnTimeout);

    /// <summary>Seconds on <paramref name="clock"/> when the agent's gauge for VM e2e-a first reads
    /// <paramref name="value"/>, scraping every 100 ms.</summary>
    private static double WaitFor(Agent agent, string gauge, double value, Stopwatch clock, double deadline)
    {
        while (clock.Elapsed.TotalSeconds < deadline)
        {
            if (agent.Scrape().Samples.Any(s => s.Name == gauge && s.Labels.GetValueOrDefault("vm") == "e2e-a" && s.Value == value))
                return clock.Elapsed.TotalSeconds;
            Thread.Sleep(100);
        }
        throw new TimeoutException($"{gauge} not {value} by {deadline} s");
    }
}
