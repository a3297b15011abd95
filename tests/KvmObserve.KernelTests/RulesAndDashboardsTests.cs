using System.Diagnostics;
using System.Text.Json;
using Xunit;

namespace KvmObserve.KernelTests;

/// <summary>The alert rules pass promtool's check and its unit tests (each alert made to fire and not to); the
/// dashboards are importable Grafana JSON: current schema, the data source as a variable that every panel uses, and
/// host, vm and vcpu template variables. Whether their queries return data is AlertingEndToEndTests' job.</summary>
public sealed class RulesAndDashboardsTests
{
    private static readonly string Rules = Path.Combine(DeployTests.Repo, "deploy/prometheus");

    private static string Promtool()
    {
        string? promtool = new[] { "/usr/bin/promtool", "/usr/local/bin/promtool" }.FirstOrDefault(File.Exists);
        Assert.True(promtool is not null, "promtool missing (Debian package prometheus; .ci/run installs it)");
        return promtool!;
    }

    private static (int Code, string Output) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Rules };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout + stderr.Result);
    }

    [Fact]
    public void Promtool_checks_the_rules_and_their_unit_tests_pass()
    {
        (int code, string output) = Run(Promtool(), "check", "rules", "kvmobserve-rules.yml");
        Assert.True(code == 0, output);
        Assert.Contains("SUCCESS: 17 rules found", output);
        (code, output) = Run(Promtool(), "test", "rules", "tests/kvmobserve-rules.test.yml");
        Assert.True(code == 0, output);
        Assert.Contains("SUCCESS", output);
        // Every alert the rules define is exercised by the unit tests.
        string rules = File.ReadAllText(Path.Combine(Rules, "kvmobserve-rules.yml"));
        string tests = File.ReadAllText(Path.Combine(Rules, "tests/kvmobserve-rules.test.yml"));
        foreach (string alert in rules.Split('\n').Where(l => l.Trim().StartsWith("- alert: ", StringComparison.Ordinal)).Select(l => l.Trim()[9..]))
            Assert.Contains($"alertname: {alert}", tests);
    }

    [Fact]
    public void No_rule_or_dashboard_names_the_scrape_job_exactly()
    {
        // Jobs are named by whoever scrapes: kvmobserve, kvmobserve-kubernetes, a PodMonitor's NAMESPACE/NAME.
        var files = Directory.GetFiles(Path.Combine(DeployTests.Repo, "dashboards"), "*.json")
            .Append(Path.Combine(Rules, "kvmobserve-rules.yml"));
        foreach (string file in files)
        {
            string text = File.ReadAllText(file);
            Assert.False(text.Contains("job=\\\"", StringComparison.Ordinal) || text.Contains("job=\"", StringComparison.Ordinal),
                $"{Path.GetFileName(file)} selects one job name");
        }
        Assert.Contains("label_values(kvmobserve_source_info, job)", File.ReadAllText(Path.Combine(DeployTests.Repo, "dashboards", "kvmobserve-agent.json")));
    }

    [Fact]
    public void Every_dashboard_is_importable_with_a_datasource_variable_and_vm_and_vcpu_variables()
    {
        string[] files = Directory.GetFiles(Path.Combine(DeployTests.Repo, "dashboards"), "*.json");
        Assert.Equal(["agent", "halt", "mmu", "overview", "steal", "vm"],
            files.Select(f => Path.GetFileNameWithoutExtension(f)["kvmobserve-".Length..]).Order());
        var uids = new HashSet<string>();
        foreach (string file in files)
        {
            using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(file));
            JsonElement d = doc.RootElement;
            Assert.True(d.GetProperty("schemaVersion").GetInt32() >= 39, file);
            Assert.True(uids.Add(d.GetProperty("uid").GetString()!), file);
            Assert.False(d.TryGetProperty("id", out JsonElement id) && id.ValueKind != JsonValueKind.Null, "an exported id breaks import");
            JsonElement[] vars = d.GetProperty("templating").GetProperty("list").EnumerateArray().ToArray();
            JsonElement ds = vars.Single(v => v.GetProperty("name").GetString() == "datasource");
            Assert.Equal("datasource", ds.GetProperty("type").GetString());
            Assert.Equal("prometheus", ds.GetProperty("query").GetString());
            foreach (string name in new[] { "instance", "vm", "vcpu" })
            {
                JsonElement v = vars.Single(x => x.GetProperty("name").GetString() == name);
                Assert.Equal("query", v.GetProperty("type").GetString());
                Assert.Equal("${datasource}", v.GetProperty("datasource").GetProperty("uid").GetString());
                Assert.StartsWith("label_values(", v.GetProperty("query").GetProperty("query").GetString());
            }
            var ids = new HashSet<int>();
            foreach (JsonElement panel in d.GetProperty("panels").EnumerateArray())
            {
                string title = panel.GetProperty("title").GetString()!;
                Assert.True(ids.Add(panel.GetProperty("id").GetInt32()), $"{file}: {title}");
                Assert.Equal("${datasource}", panel.GetProperty("datasource").GetProperty("uid").GetString());
                JsonElement grid = panel.GetProperty("gridPos");
                Assert.InRange(grid.GetProperty("x").GetInt32() + grid.GetProperty("w").GetInt32(), 1, 24);
                JsonElement[] targets = panel.GetProperty("targets").EnumerateArray().ToArray();
                Assert.NotEmpty(targets);
                Assert.All(targets, t =>
                {
                    Assert.Equal("${datasource}", t.GetProperty("datasource").GetProperty("uid").GetString());
                    Assert.False(string.IsNullOrWhiteSpace(t.GetProperty("expr").GetString()), title);
                    Assert.Matches("^[A-Z]$", t.GetProperty("refId").GetString());
                });
            }
        }
    }
}
