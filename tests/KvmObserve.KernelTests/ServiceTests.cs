using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace KvmObserve.KernelTests;

/// <summary>
/// The agent as a service: /metrics over TLS with basic auth from a web config file (hashes made by htpasswd, Python's
/// bcrypt and BCrypt.Net), OpenMetrics by content negotiation, and a SIGTERM that stops it within 5 s with a last OTLP
/// export and the kernel state removed.
/// </summary>
public sealed class ServiceTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kvmobserve-web").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd(), stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: {stderr}");
        return stdout.Trim();
    }

    /// <summary>A self-signed certificate for 127.0.0.1, as PEM files.</summary>
    private X509Certificate2 WriteCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=kvmobserve-test", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        X509Certificate2 cert = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        File.WriteAllText(Path.Combine(_dir, "server.crt"), cert.ExportCertificatePem());
        File.WriteAllText(Path.Combine(_dir, "server.key"), key.ExportPkcs8PrivateKeyPem());
        return cert;
    }

    [KernelFact(Kvm = false)]
    public void Tls_and_basic_auth_accept_hashes_from_common_tools_and_reject_wrong_or_missing_passwords()
    {
        Assert.True(File.Exists("/usr/bin/htpasswd") || Environment.GetEnvironmentVariable("CI") != "true", "htpasswd missing (apt-get install apache2-utils)");
        Assert.True(File.Exists("/usr/bin/python3"), "python3 missing");
        var hashes = new Dictionary<string, (string Password, string Hash)>
        {
            ["dotnet"] = ("s3cret-a", BCrypt.Net.BCrypt.HashPassword("s3cret-a", workFactor: 6)), // $2a$
        };
        if (File.Exists("/usr/bin/htpasswd"))
            hashes["apache"] = ("s3cret-y", Run("/usr/bin/htpasswd", "-nbB", "-C", "6", "apache", "s3cret-y").Split(':', 2)[1]); // $2y$
        string py = Run("/usr/bin/python3", "-c", "import bcrypt; print(bcrypt.hashpw(b's3cret-b', bcrypt.gensalt(rounds=6)).decode())");
        hashes["python"] = ("s3cret-b", py); // $2b$
        X509Certificate2 cert = WriteCertificate();
        string web = Path.Combine(_dir, "web.yml");
        File.WriteAllText(web, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n"
            + string.Concat(hashes.Select(h => $"  {h.Key}: '{h.Value.Hash}'\n")));

        string? seen = null;
        var handler = new HttpClientHandler
        {
            // The handshake is real; the test trusts exactly its own certificate.
            ServerCertificateCustomValidationCallback = (_, presented, _, _) =>
            {
                seen = presented?.Thumbprint;
                return presented?.Thumbprint == cert.Thumbprint;
            },
        };
        using Agent agent = Agent.Start(handler, "https", "--web-config", web);
        Assert.Equal(cert.Thumbprint, seen);
        HttpStatusCode Get(string? user, string? password)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, $"{agent.Url}/metrics");
            if (user is not null)
                request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{user}:{password}")));
            return agent.Http.Send(request).StatusCode;
        }
        foreach ((string user, (string password, string hash)) in hashes)
        {
            Assert.True(Get(user, password) == HttpStatusCode.OK, $"{user} ({hash[..4]}) was refused");
            Assert.Equal(HttpStatusCode.Unauthorized, Get(user, password + "x"));
        }
        Assert.Equal(HttpStatusCode.Unauthorized, Get(null, null));
        Assert.Equal(HttpStatusCode.Unauthorized, Get("nobody", "s3cret-a"));
        Assert.True(agent.WaitForLog(l => l.Contains($"https://127.0.0.1:{agent.Port}/metrics (basic auth)")), agent.LogText());
        // Plain HTTP on the TLS port gets no metrics.
        using var plain = new HttpClient();
        Assert.ThrowsAny<Exception>(() => plain.GetStringAsync($"http://127.0.0.1:{agent.Port}/metrics").Result);
    }

    [KernelFact(Kvm = false)]
    public void A_bad_web_config_stops_startup_naming_it()
    {
        string web = Path.Combine(_dir, "web.yml");
        File.WriteAllText(web, "basic_auth_users:\n  alice: plaintext\n");
        (int code, string stderr) = RunAgent("--web-config", web);
        Assert.Equal(2, code);
        Assert.Equal($"kvmobserve: --web-config: {web}: basic_auth_users.alice: not a bcrypt hash ($2a$, $2b$ or $2y$, e.g. from htpasswd -nB)", stderr.Trim());
        File.WriteAllText(web, "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n");
        (code, stderr) = RunAgent("--web-config", web);
        Assert.Equal(2, code);
        Assert.StartsWith($"kvmobserve: --web-config: {web}: cannot load the TLS certificate {_dir}/missing.crt", stderr.Trim());
        File.WriteAllText(web, "http_server_config:\n  http2: false\n");
        (code, stderr) = RunAgent("--web-config", web);
        Assert.Equal(2, code);
        Assert.Equal($"kvmobserve: --web-config: {web}: 'http_server_config' is not supported (supported: tls_server_config, basic_auth_users)", stderr.Trim());
    }

    private static (int, string) RunAgent(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"));
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stderr);
    }

    /// <summary>The families every exporter serves, as a Prometheus user expects them: the process_* ones equal to
    /// what procfs says of the agent's process, each collection of the scrape a success, promtool content.</summary>
    [KernelFact(Kvm = false)]
    public void The_process_and_collector_families_tell_the_truth_of_the_agent_and_pass_promtool()
    {
        using Agent agent = Agent.Start("--source", "tracefs");
        string text = agent.ScrapeText();
        Metrics m = Metrics.Parse(text);
        int fds = Directory.GetFileSystemEntries($"/proc/{agent.Pid}/fd").Length;
        Assert.InRange(m.Sum("process_open_fds"), fds - 16, fds + 16); // a scrape opens a few, the rings' fds stay
        Assert.True(m.Sum("process_open_fds") > Environment.ProcessorCount, "the tracefs source holds a ring per CPU");
        string limit = File.ReadLines($"/proc/{agent.Pid}/limits").Single(l => l.StartsWith("Max open files", StringComparison.Ordinal));
        Assert.Equal(double.Parse(limit.Split(' ', StringSplitOptions.RemoveEmptyEntries)[3], System.Globalization.CultureInfo.InvariantCulture), m.Sum("process_max_fds"));
        double started = new DateTimeOffset(Process.GetProcessById(agent.Pid).StartTime.ToUniversalTime()).ToUnixTimeMilliseconds() / 1000.0;
        Assert.InRange(m.Sum("process_start_time_seconds"), started - 1.5, started + 1.5);
        long rss = long.Parse(File.ReadLines($"/proc/{agent.Pid}/status").Single(l => l.StartsWith("VmRSS:", StringComparison.Ordinal))
            .Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        Assert.InRange(m.Sum("process_resident_memory_bytes"), rss / 2, rss * 2);
        Assert.Equal(1, m.Sum("kvmobserve_collector_success", ("collector", "tracefs")));
        Assert.Equal(1, m.Sum("kvmobserve_collector_success", ("collector", "schedstat")));
        Assert.Equal(1, m.Sum("kvmobserve_build_info"));
        Promtool.AssertAccepts(text);
        Assert.Equal(0, agent.Stop());
    }

    [KernelFact(Kvm = false)]
    public void OpenMetrics_is_served_to_those_who_ask_for_it()
    {
        using Agent agent = Agent.Start();
        using var request = new HttpRequestMessage(HttpMethod.Get, $"{agent.Url}/metrics");
        // What Prometheus 2.x sends.
        request.Headers.TryAddWithoutValidation("Accept", "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
        using HttpResponseMessage response = agent.Http.Send(request);
        string text = response.Content.ReadAsStringAsync().Result;
        Assert.Equal("application/openmetrics-text", response.Content.Headers.ContentType!.MediaType);
        Assert.EndsWith("# EOF\n", text);
        Assert.Contains("# TYPE kvmobserve_events_lost counter\n", text);
        Assert.Contains("kvmobserve_events_lost_total{", text);
        string plain = agent.ScrapeText();
        Assert.DoesNotContain("# EOF", plain);
        Assert.Contains("# TYPE kvmobserve_events_lost_total counter\n", plain);
    }

    [KernelFact(Kvm = false)]
    public void Sigterm_stops_within_5_s_with_a_last_otlp_export_and_the_kernel_state_removed()
    {
        string before = KernelState.GlobalEnabledEvents();
        var receiver = OtlpSink.Start();
        // An interval far longer than the test: the only export is the one made on the way out.
        // The source auto picks (bpf here): its programs, maps and links are the kernel state to remove.
        using var agent = Agent.Start("--otlp-endpoint", $"http://127.0.0.1:{receiver.Port}", "--otlp-protocol", "http/protobuf", "--otlp-interval", "1h");
        int pid = agent.Pid;
        bool bpf = agent.Scrape().Sum("kvmobserve_source_info", ("source", "bpf")) == 1;
        if (bpf)
            Assert.NotEmpty(KernelState.AgentBpf().Programs);
        else
            Assert.Single(KernelState.InstancesOf(pid));
        var sw = Stopwatch.StartNew();
        Assert.Equal(0, agent.Stop());
        double seconds = sw.Elapsed.TotalSeconds;
        agent.Dispose();
        Assert.True(seconds < 5, $"stopped in {seconds:F1} s");
        Assert.True(receiver.Requests >= 1, "no OTLP export on the way out");
        receiver.Dispose();
        Assert.Empty(KernelState.InstancesOf(pid));
        Assert.Equal(before, KernelState.GlobalEnabledEvents());
        if (bpf)
            Assert.Equal("", KernelState.WaitForNoAgentBpf());
    }

    /// <summary>Counts http/protobuf posts; enough to see the final export arrive.</summary>
    private sealed class OtlpSink : IDisposable
    {
        private readonly HttpListener _listener = new();
        private int _requests;
        public int Port { get; private init; }
        public int Requests => Volatile.Read(ref _requests);

        public static OtlpSink Start()
        {
            int port = Agent.FreePort();
            var sink = new OtlpSink { Port = port };
            sink._listener.Prefixes.Add($"http://127.0.0.1:{port}/");
            sink._listener.Start();
            _ = Task.Run(sink.Loop);
            return sink;
        }

        private async Task Loop()
        {
            while (_listener.IsListening)
            {
                HttpListenerContext c;
                try
                {
                    c = await _listener.GetContextAsync();
                }
                catch (Exception) when (!_listener.IsListening)
                {
                    return;
                }
                await c.Request.InputStream.CopyToAsync(Stream.Null);
                if (c.Request.Url!.AbsolutePath == "/v1/metrics")
                    Interlocked.Increment(ref _requests);
                c.Response.StatusCode = 200;
                c.Response.ContentType = "application/x-protobuf";
                c.Response.Close();
            }
        }

        public void Dispose() => _listener.Close();
    }
}
