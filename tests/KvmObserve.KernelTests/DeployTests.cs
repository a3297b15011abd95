using System.Diagnostics;
using YamlDotNet.RepresentationModel;

namespace KvmObserve.KernelTests;

/// <summary>
/// deploy/: the systemd unit passes systemd-analyze verify, the manifests and configs parse (and promtool accepts the
/// scrape config), the capabilities they grant are the ones README documents, and the agent run as an unprivileged
/// user holding only those capabilities serves its metrics from every source and leaves no kernel state behind.
/// </summary>
public sealed class DeployTests
{
    internal static readonly string Repo = FindRepo();
    private static readonly string[] Documented = ["BPF", "DAC_OVERRIDE", "PERFMON", "SYS_PTRACE"];

    private static string FindRepo()
    {
        string? dir = AppContext.BaseDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "KvmObserve.sln")))
            dir = Path.GetDirectoryName(dir);
        return dir ?? throw new InvalidOperationException("KvmObserve.sln not found above the test binaries");
    }

    private static (int Code, string Output) Run(string file, IEnumerable<string> args, IDictionary<string, string>? env = null, int timeoutMs = 120_000)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        foreach ((string k, string v) in env ?? new Dictionary<string, string>())
            psi.Environment[k] = v;
        using Process p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync(), stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutMs))
            p.Kill(entireProcessTree: true);
        p.WaitForExit();
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    private static List<YamlMappingNode> Documents(string relative)
    {
        var yaml = new YamlStream();
        using (var reader = new StreamReader(Path.Combine(Repo, relative)))
            yaml.Load(reader);
        return yaml.Documents.Select(d => (YamlMappingNode)d.RootNode).ToList();
    }

    private static YamlNode At(YamlNode node, params string[] path)
    {
        foreach (string key in path)
            node = int.TryParse(key, out int i) ? ((YamlSequenceNode)node).Children[i] : ((YamlMappingNode)node).Children[new YamlScalarNode(key)];
        return node;
    }

    private static string Scalar(YamlNode node, params string[] path) => ((YamlScalarNode)At(node, path)).Value!;

    [KernelFact(Kvm = false)]
    public void The_systemd_unit_passes_systemd_analyze_verify_and_grants_only_the_documented_capabilities()
    {
        Assert.True(File.Exists("/usr/bin/systemd-analyze") || Environment.GetEnvironmentVariable("CI") != "true", "systemd-analyze missing (apt-get install systemd)");
        if (!File.Exists("/usr/bin/systemd-analyze"))
            return;
        string unit = Path.Combine(Repo, "deploy/systemd/kvmobserve.service");
        // A root with the unit as it is, systemd's own units, and the agent where ExecStart looks for it.
        string root = Directory.CreateTempSubdirectory("kvmobserve-unit").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "etc/systemd/system"));
            Directory.CreateDirectory(Path.Combine(root, "usr/local/lib/kvmobserve"));
            Directory.CreateDirectory(Path.Combine(root, "usr/lib"));
            File.Copy(unit, Path.Combine(root, "etc/systemd/system/kvmobserve.service"));
            File.Copy(Path.Combine(AppContext.BaseDirectory, "kvmobserve"), Path.Combine(root, "usr/local/lib/kvmobserve/kvmobserve"));
            Assert.Equal(0, Run("cp", ["-r", "/usr/lib/systemd", Path.Combine(root, "usr/lib/")]).Code);
            (int code, string output) = Run("/usr/bin/systemd-analyze", ["verify", $"--root={root}", "kvmobserve.service"]);
            Assert.True(code == 0 && output.Trim().Length == 0, $"systemd-analyze verify: {code}: {output}");
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
        string[] lines = File.ReadAllLines(unit);
        string Value(string key) => lines.Single(l => l.StartsWith(key + "=", StringComparison.Ordinal))[(key.Length + 1)..];
        Assert.Equal(Documented.Select(c => "CAP_" + c), Value("CapabilityBoundingSet").Split(' '));
        Assert.Equal(Documented.Select(c => "CAP_" + c), Value("AmbientCapabilities").Split(' '));
        Assert.Equal("yes", Value("DynamicUser"));
        Assert.Equal("on-failure", Value("Restart"));
        Assert.Equal("yes", Value("NoNewPrivileges"));
    }

    [KernelFact(Kvm = false)]
    public void The_unit_starts_by_its_own_ExecStart_line_on_a_machine_without_etc_kvmobserve()
    {
        string execStart = File.ReadAllLines(Path.Combine(Repo, "deploy/systemd/kvmobserve.service"))
            .Single(l => l.StartsWith("ExecStart=", StringComparison.Ordinal))["ExecStart=".Length..];
        Assert.DoesNotContain("/etc/kvmobserve", execStart); // the only file there is optional (EnvironmentFile=-)
        string[] words = execStart.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("/usr/local/lib/kvmobserve/kvmobserve", words[0]);
        int port = Agent.FreePort();
        var psi = new System.Diagnostics.ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "kvmobserve"))
            { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string w in words.Skip(1))
            psi.ArgumentList.Add(w);
        psi.Environment["KVMOBSERVE__LISTEN"] = $"127.0.0.1:{port}"; // as kvmobserve.env would set it
        using var agent = System.Diagnostics.Process.Start(psi)!;
        var output = new System.Text.StringBuilder();
        agent.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        agent.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        agent.BeginOutputReadLine();
        agent.BeginErrorReadLine();
        try
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
            var waited = System.Diagnostics.Stopwatch.StartNew();
            bool healthy = false;
            while (!healthy && !agent.HasExited && waited.Elapsed < TimeSpan.FromSeconds(60))
            {
                try { healthy = http.GetAsync($"http://127.0.0.1:{port}/healthz").Result.IsSuccessStatusCode; }
                catch (AggregateException) { Thread.Sleep(250); }
            }
            lock (output)
                Assert.True(healthy, $"the unit's ExecStart did not serve /healthz: {output}");
        }
        finally
        {
            if (!agent.HasExited)
                Syscall.Kill(agent.Id, 15);
            agent.WaitForExit(20_000);
        }
        Assert.Equal(0, agent.ExitCode);
        Assert.Empty(KernelState.InstancesOf(agent.Id));
    }

    [KernelFact(Kvm = false)]
    public void The_image_build_steps_run_here_and_give_an_agent_with_its_probes_that_loads_them()
    {
        string dockerfile = File.ReadAllText(Path.Combine(Repo, "deploy/Dockerfile"));
        Assert.Contains("RUN deploy/build-image.sh /out", dockerfile);
        Assert.Contains("libbpf1", dockerfile);
        string output = Directory.CreateTempSubdirectory("kvmobserve-image").FullName;
        try
        {
            var psi = new System.Diagnostics.ProcessStartInfo("sh") { WorkingDirectory = Repo, RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add("deploy/build-image.sh");
            psi.ArgumentList.Add(output);
            using (var build = System.Diagnostics.Process.Start(psi)!)
            {
                Task<string> stdout = build.StandardOutput.ReadToEndAsync(), stderr = build.StandardError.ReadToEndAsync();
                build.WaitForExit();
                Assert.True(build.ExitCode == 0, stdout.Result + stderr.Result);
            }
            Assert.True(new FileInfo(Path.Combine(output, "probes", "kvmobserve.bpf.o")).Length > 0);
            // The published agent finds and loads its probes (and libbpf.so.1) as the image's would.
            (int code, string doctor) = Run(Path.Combine(output, "kvmobserve"), ["doctor"]);
            Assert.Contains("[ok  ] bpf: kvmobserve.bpf.o: every program loaded and verified", doctor);
            Assert.True(code is 0 or 1, doctor);
        }
        finally
        {
            Directory.Delete(output, recursive: true);
        }
    }

    [KernelFact(Kvm = false)]
    public void The_manifests_parse_and_run_the_agent_unprivileged_with_the_documented_capabilities()
    {
        List<YamlMappingNode> docs = Documents("deploy/kubernetes/daemonset.yaml");
        Assert.Equal(["Namespace", "ConfigMap", "DaemonSet"], docs.Select(d => Scalar(d, "kind")));
        YamlMappingNode ds = docs[2];
        YamlNode pod = At(ds, "spec", "template", "spec");
        Assert.Equal("true", Scalar(pod, "hostPID"));
        YamlNode container = At(pod, "containers", "0");
        Assert.Equal("false", Scalar(container, "securityContext", "privileged"));
        Assert.Equal(["ALL"], ((YamlSequenceNode)At(container, "securityContext", "capabilities", "drop")).Select(n => ((YamlScalarNode)n).Value));
        Assert.Equal(Documented, ((YamlSequenceNode)At(container, "securityContext", "capabilities", "add")).Select(n => ((YamlScalarNode)n).Value!));
        Assert.Equal("/healthz", Scalar(container, "livenessProbe", "httpGet", "path"));
        Assert.Equal("/healthz", Scalar(container, "readinessProbe", "httpGet", "path"));
        Assert.NotNull(At(container, "resources", "limits", "memory"));
        Assert.Equal("/sys/kernel/tracing", Scalar(pod, "volumes", "0", "hostPath", "path"));
        // The ConfigMap's settings file is one the agent accepts.
        string json = Scalar(docs[1], "data", "kvmobserve.json");
        string config = Path.Combine(Path.GetTempPath(), $"kvmobserve-cm-{Environment.ProcessId}.json");
        File.WriteAllText(config, json);
        (int code, string output) = Run("dotnet", [Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"), "run", "--config", config, "--print-config"]);
        File.Delete(config);
        Assert.True(code == 0, output);
        Assert.Contains("\"Listen\": \"0.0.0.0:9632\"", output);

        List<YamlMappingNode> monitoring = Documents("deploy/kubernetes/service-podmonitor.yaml");
        Assert.Equal(["Service", "PodMonitor"], monitoring.Select(d => Scalar(d, "kind")));
        Assert.Equal("metrics", Scalar(monitoring[1], "spec", "podMetricsEndpoints", "0", "port"));
        Assert.Single(Documents("deploy/prometheus/scrape-config-kubernetes.yml"));
    }

    [KernelFact(Kvm = false)]
    public void Promtool_accepts_the_scrape_config_and_the_agent_accepts_the_example_web_config_users()
    {
        string? promtool = new[] { "/usr/bin/promtool", "/usr/local/bin/promtool" }.FirstOrDefault(File.Exists);
        Assert.True(promtool is not null || Environment.GetEnvironmentVariable("CI") != "true", "promtool missing");
        if (promtool is not null)
        {
            (int code, string output) = Run(promtool, ["check", "config", Path.Combine(Repo, "deploy/prometheus/scrape-config.yml")]);
            Assert.True(code == 0, output);
        }
        YamlMappingNode web = Documents("deploy/prometheus/web-config.example.yml").Single();
        Assert.True(BCrypt.Net.BCrypt.Verify("changeme", Scalar(web, "basic_auth_users", "prometheus")));
    }

    /// <summary>Run as uid 65534 (nobody) with only the documented capabilities, each source starts, enables every
    /// tracepoint, serves /metrics and removes its kernel state on SIGTERM.</summary>
    [KernelTheory(Kvm = false)]
    [InlineData("tracefs")]
    [InlineData("perf")]
    [InlineData("perf-count")]
    [InlineData("bpf")]
    public void As_nobody_with_the_documented_capabilities_every_source_serves_its_metrics(string source)
    {
        Assert.True(File.Exists("/usr/bin/setpriv"), "setpriv missing (util-linux)");
        string caps = string.Concat(Documented.Select(c => ",+" + c.ToLowerInvariant()));
        string dotnet = Environment.ProcessPath is { } p && Path.GetFileName(p) == "dotnet" ? p : "/usr/bin/env";
        string before = KernelState.GlobalEnabledEvents();
        int port = Agent.FreePort();
        var psi = new ProcessStartInfo("/usr/bin/setpriv") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = "/tmp" };
        foreach (string a in new[] { "--reuid=65534", "--regid=65534", "--clear-groups", $"--inh-caps=-all{caps}", $"--ambient-caps=-all{caps}",
                     $"--bounding-set=-all{caps}", "--", dotnet })
            psi.ArgumentList.Add(a);
        if (dotnet == "/usr/bin/env")
            psi.ArgumentList.Add("dotnet");
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"), "run", "--listen", $"127.0.0.1:{port}", "--source", source })
            psi.ArgumentList.Add(a);
        psi.Environment["HOME"] = "/tmp";
        psi.Environment["DOTNET_CLI_HOME"] = "/tmp";
        using Process agent = Process.Start(psi)!;
        var log = new List<string>();
        agent.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.Add(e.Data); };
        agent.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.Add(e.Data); };
        agent.BeginOutputReadLine();
        agent.BeginErrorReadLine();
        try
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
            string? text = null;
            DateTime until = DateTime.UtcNow.AddSeconds(60);
            while (text is null && DateTime.UtcNow < until && !agent.HasExited)
            {
                try { text = http.GetStringAsync($"http://127.0.0.1:{port}/metrics").Result; }
                catch (AggregateException) { Thread.Sleep(200); }
            }
            Assert.True(text is not null, $"no /metrics: {string.Join('\n', log)}");
            Metrics m = Metrics.Parse(text);
            Assert.Equal(1, m.Sum("kvmobserve_source_info", ("source", source)));
            Assert.True(m.Samples.Count(s => s.Name == "kvmobserve_tracepoint_info" && s.Labels["enabled"] == "true") >= 10, text);
            Assert.Equal(Documented.Select(c => "cap_" + c.ToLowerInvariant()).Order(), EffectiveCaps(agent.Id));
            Assert.Equal("65534", File.ReadLines($"/proc/{agent.Id}/status").Single(l => l.StartsWith("Uid:")).Split('\t')[1]);
        }
        finally
        {
            Syscall.Kill(agent.Id, 15);
            agent.WaitForExit(15_000);
        }
        Assert.Equal(0, agent.ExitCode);
        Assert.Empty(KernelState.InstancesOf(agent.Id));
        Assert.Equal(before, KernelState.GlobalEnabledEvents());
    }

    /// <summary>Without CAP_DAC_OVERRIDE tracefs cannot be read: the agent says so, rather than that it is not mounted.</summary>
    [KernelFact(Kvm = false)]
    public void Without_dac_override_the_agent_says_tracefs_cannot_be_read()
    {
        (int code, string output) = Run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all,+perfmon",
            "--ambient-caps=-all,+perfmon", "--bounding-set=-all,+perfmon", "--", "/usr/bin/env", "dotnet",
            Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"), "run", "--listen", $"127.0.0.1:{Agent.FreePort()}", "--source", "perf"],
            new Dictionary<string, string> { ["HOME"] = "/tmp", ["DOTNET_CLI_HOME"] = "/tmp" });
        Assert.NotEqual(0, code);
        Assert.Contains("tracefs at /sys/kernel/tracing cannot be read by this user (needs root or CAP_DAC_OVERRIDE)", output.Split('\n')[0]);
    }

    /// <summary>The names of the capabilities in a process's effective set.</summary>
    private static IEnumerable<string> EffectiveCaps(int pid)
    {
        ulong mask = Convert.ToUInt64(File.ReadLines($"/proc/{pid}/status").Single(l => l.StartsWith("CapEff:")).Split('\t')[1], 16);
        var names = new Dictionary<int, string> { [1] = "cap_dac_override", [2] = "cap_dac_read_search", [19] = "cap_sys_ptrace", [21] = "cap_sys_admin", [38] = "cap_perfmon", [39] = "cap_bpf" };
        return Enumerable.Range(0, 64).Where(b => (mask & (1UL << b)) != 0).Select(b => names.GetValueOrDefault(b, $"cap_{b}")).Order();
    }
}
