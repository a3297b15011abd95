using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace KvmObserve.KernelTests;


/// <summary>The real agent as a child process (`kvmobserve run`), on a free loopback port.</summary>
public sealed partial class Agent : IDisposable
{
    internal static readonly string Dll = Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll");
    private readonly Process _process;
    private readonly HttpClient _http;
    private readonly string _scheme;

    private Agent(int port, HttpMessageHandler? handler, string scheme, string[] wrapper, params string[] extra)
    {
        Port = port;
        _scheme = scheme;
        _http = new HttpClient(handler ?? new HttpClientHandler()) { Timeout = TestTime.Seconds(10) };
        var psi = new ProcessStartInfo(wrapper.Length > 0 ? wrapper[0] : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string w in wrapper.Skip(1).Append("dotnet").Skip(wrapper.Length > 0 ? 0 : 1))
            psi.ArgumentList.Add(w);
        psi.ArgumentList.Add(Dll);
        psi.ArgumentList.Add("run");
        psi.ArgumentList.Add("--listen");
        psi.ArgumentList.Add($"127.0.0.1:{port}");
        foreach (string e in extra)
            psi.ArgumentList.Add(e);
        _process = Process.Start(psi)!;
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (Log) Log.Add(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (Log) Log.Add(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public int Port { get; }
    public int Pid => _process.Id;
    public List<string> Log { get; } = new();

    public static Agent Start(params string[] extra) => Start(null, "http", extra);

    /// <summary>An agent started through <paramref name="wrapper"/>, a command that execs the rest (setpriv, to run it
    /// with fewer capabilities): its pid is the agent's.</summary>
    public static Agent StartUnder(string[] wrapper, params string[] extra) => Start(null, "http", wrapper, extra);

    /// <summary>An agent reached through <paramref name="handler"/> (TLS settings) at <paramref name="scheme"/>.</summary>
    public static Agent Start(HttpMessageHandler? handler, string scheme, params string[] extra) => Start(handler, scheme, [], extra);

    private static Agent Start(HttpMessageHandler? handler, string scheme, string[] wrapper, string[] extra)
    {
        var agent = new Agent(FreePort(), handler, scheme, wrapper, extra);
        var deadline = DateTime.UtcNow + TestTime.Seconds(30);
        while (DateTime.UtcNow < deadline)
        {
            if (agent._process.HasExited)
                throw new InvalidOperationException($"agent exited with {agent._process.ExitCode}: {string.Join('\n', agent.Log)}");
            try
            {
                if (agent._http.GetAsync($"{scheme}://127.0.0.1:{agent.Port}/healthz").Result.IsSuccessStatusCode)
                    return agent;
            }
            catch (AggregateException) { }
            Thread.Sleep(100);
        }
        agent.Dispose();
        throw new TimeoutException("agent did not become healthy");
    }

    public string Url => $"{_scheme}://127.0.0.1:{Port}";

    public HttpClient Http => _http;

    public string ScrapeText() => _http.GetStringAsync($"{Url}/metrics").Result;

    public Metrics Scrape() => Metrics.Parse(ScrapeText());

    /// <summary>Scrapes until <paramref name="done"/> holds (the readers may still be draining), then once more.</summary>
    public Metrics ScrapeUntil(Func<Metrics, bool> done, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(15)) * TestTime.Scale;
        Metrics m = Scrape();
        while (!done(m) && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(100);
            m = Scrape();
        }
        Thread.Sleep(300);
        return Scrape();
    }


    /// <summary>Whether a log line matching <paramref name="match"/> arrives within <paramref name="timeout"/>. The
    /// console logger writes from its own thread and the output is read asynchronously: a line can follow by some ms
    /// what a scrape already shows, so a check of the log right after a scrape must wait for it.</summary>
    public bool WaitForLog(Func<string, bool> match, TimeSpan? timeout = null)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        do
        {
            lock (Log)
            {
                if (Log.Any(match))
                    return true;
            }
            Thread.Sleep(50);
        }
        while (waited.Elapsed < (timeout ?? TestTime.Seconds(10)));
        return false;
    }

    /// <summary>A copy of the log so far: the list itself grows while the agent runs.</summary>
    public string[] LogLines()
    {
        lock (Log)
            return [.. Log];
    }

    /// <summary>The log so far, as one string (for failure messages).</summary>
    public string LogText()
    {
        lock (Log)
            return string.Join('\n', Log);
    }

    /// <summary>SIGTERM and wait; returns the exit code.</summary>
    public int Stop()
    {
        Syscall.Kill(_process.Id, 15);
        if (!_process.WaitForExit(TestTime.Ms(10_000)))
            throw new TimeoutException($"agent did not stop within {TestTime.Seconds(10).TotalSeconds:0} s of SIGTERM");
        return _process.ExitCode;
    }

    public void KillHard()
    {
        Syscall.Kill(_process.Id, 9);
        _process.WaitForExit();
    }

    private bool _disposed;

    /// <summary>Stops the agent if it still runs (also after a failed assertion: no agent may outlive its test, with
    /// its probes in the kernel). Safe to call twice.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        if (!_process.HasExited)
        {
            Syscall.Kill(_process.Id, 15);
            if (!_process.WaitForExit(TestTime.Ms(10_000)))
                _process.Kill();
        }
        _process.Dispose();
        _http.Dispose();
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>`kvmobserve load ...`, its JSON report parsed.</summary>
    public static JsonElement Load(params string[] args) => Load([], args);

    /// <summary>`kvmobserve load ...` under `perf stat -a`: its report, and how many times each of
    /// <paramref name="tracepoints"/> ("kvm:kvm_exit") fired on the whole machine while it ran, as the kernel counted.</summary>
    public static (JsonElement Report, Dictionary<string, long> Counts) LoadCounted(IEnumerable<string> tracepoints, params string[] args)
    {
        string counts = Path.Combine(Path.GetTempPath(), $"kvmobserve-perfstat-{Environment.ProcessId}-{Guid.NewGuid():N}.csv");
        try
        {
            JsonElement report = Load(["perf", "stat", "-a", "-x", ",", "-o", counts, "-e", string.Join(',', tracepoints), "--"], args);
            var result = new Dictionary<string, long>(StringComparer.Ordinal);
            // perf stat -x, lines: value,unit,event,... ("<not counted>" where the event never ran).
            foreach (string line in File.ReadLines(counts).Where(l => l.Length > 0 && l[0] != '#'))
            {
                string[] f = line.Split(',');
                if (f.Length >= 3)
                    result[f[2]] = long.TryParse(f[0], CultureInfo.InvariantCulture, out long n) ? n : 0;
            }
            return (report, result);
        }
        finally
        {
            File.Delete(counts);
        }
    }

    private static JsonElement Load(string[] wrapper, string[] args)
    {
        var psi = new ProcessStartInfo(wrapper.Length > 0 ? wrapper[0] : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string w in wrapper.Skip(1))
            psi.ArgumentList.Add(w);
        if (wrapper.Length > 0)
            psi.ArgumentList.Add("dotnet");
        psi.ArgumentList.Add(Dll);
        psi.ArgumentList.Add("load");
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TestTime.Ms(120_000)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"load did not finish in {TestTime.Seconds(120).TotalSeconds:0} s");
        }
        Assert.True(p.ExitCode == 0, $"load failed ({p.ExitCode}): {stderr.Result}");
        return JsonDocument.Parse(stdout.Result).RootElement.Clone();
    }
}

internal static partial class Syscall
{
    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);
}
