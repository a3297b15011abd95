using KvmObserve.Sources;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Globalization;
using System.Net.Sockets;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Agent.Overhead;

/// <summary>What an observer did during one measured VM run.</summary>
/// <param name="Observed">Events it reports having seen (counted, read or drained): proof it was live; -1 if it cannot tell.</param>
/// <param name="CpuNs">CPU time its own process spent (user + system) while the VM ran; -1 where that is not its cost.</param>
/// <param name="Self">What the agent's own metrics say it did while the VM ran (each a /metrics family summed over its
/// series, the increase from before the run to after it), by family name; null for observers other than the agent.</param>
public sealed record ObserverRun(long Observed, long CpuNs, IReadOnlyDictionary<string, double>? Self = null);

/// <summary>One arm of an overhead run: something that watches the kvm tracepoints (or nothing), started before a
/// measured VM run and stopped after it.</summary>
public interface IObserver
{
    string Name { get; }

    /// <summary>Starts observing and returns once it observes (probes attached, events enabled).</summary>
    void Start();

    /// <summary>Called right before the VM runs: a baseline for <see cref="Finish"/>.</summary>
    void Mark();

    /// <summary>Called right after the VM ran (expecting at least <paramref name="events"/> of its tracepoint); stops.</summary>
    ObserverRun Finish(long events);
}

/// <summary>No probes at all: the guests' own speed.</summary>
public sealed class NoObserver : IObserver
{
    public string Name => "none";
    public void Start() { }
    public void Mark() { }
    public ObserverRun Finish(long events) => new(-1, -1);
}

/// <summary>A child process (the agent, perf, bpftrace, cat), stopped on dispose so none outlives the run. Stopped, not
/// killed: an agent killed with SIGKILL leaves its tracefs instance tracing. SIGTERM, SIGINT or SIGHUP to this process
/// stops every live child the same way before this process goes.</summary>
internal sealed class Child : IDisposable
{
    private static readonly HashSet<Child> Live = new();
    private static readonly PosixSignalRegistration[] Signals =
        [.. new[] { PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGHUP }.Select(s => PosixSignalRegistration.Create(s, _ => StopAll()))];

    private readonly Process _process;
    private readonly List<string> _output = new();

    /// <summary>The variable that has an agent stop when the process named in it ends (Program.cs).</summary>
    public const string StopWithParent = "KVMOBSERVE_STOP_WITH_PARENT";

    public Child(string file, IEnumerable<string> args, string? stdoutTo = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.Environment[StopWithParent] = Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture);
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        _process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.Add(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.Add(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        lock (Live)
            Live.Add(this);
        GC.KeepAlive(Signals);
    }

    private static void StopAll()
    {
        Child[] children;
        lock (Live)
            children = [.. Live];
        foreach (Child c in children)
            c.Dispose();
    }

    public int Pid => _process.Id;
    public bool HasExited => _process.HasExited;

    public string Output { get { lock (_output) return string.Join('\n', _output); } }

    /// <summary>user + system CPU time of the process so far, in ns.</summary>
    public long CpuNs() =>
        (long)(ProcfsParsers.ParseCpuTicks(File.ReadAllText($"/proc/{Pid}/stat")) ?? throw new InvalidDataException($"/proc/{Pid}/stat"))
        * (1_000_000_000 / 100); // USER_HZ is 100 on Linux

    /// <summary>Sends a signal and waits for the process to exit (killing it after <paramref name="timeout"/>).</summary>
    public int Stop(int signal, TimeSpan timeout)
    {
        if (!_process.HasExited)
            _ = Native.Sys.Kill(_process.Id, signal);
        if (!_process.WaitForExit(timeout))
        {
            _process.Kill();
            _process.WaitForExit();
        }
        _process.WaitForExit(); // drains the output handlers
        return _process.ExitCode;
    }

    public void Dispose()
    {
        lock (Live)
        {
            if (!Live.Remove(this))
                return;
        }
        if (!_process.HasExited)
            Stop(15, TimeSpan.FromSeconds(10));
        _process.Dispose();
    }
}

/// <summary>The agent itself (`kvmobserve run --source S`) in its own process, as users run it.</summary>
/// <param name="driven">The tracepoint the measured VM drives (kvm_pio, ...): what it counts as observed.</param>
public sealed class AgentObserver(string source, string driven) : IObserver, IDisposable
{
    private Child? _agent;
    private int _port;
    private long _cpuMark;
    private Dictionary<string, double> _selfMark = new();
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(5) };

    public string Name => $"agent --source {source}";

    public void Start()
    {
        _port = FreePort();
        _agent = new Child(Self.Process, [.. Self.Args, "run", "--source", source, "--listen", $"127.0.0.1:{_port}"]);
        DateTime until = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < until && !_agent.HasExited)
        {
            try
            {
                if (_http.GetAsync($"http://127.0.0.1:{_port}/healthz").Result.IsSuccessStatusCode)
                {
                    _readyAt = DateTime.UtcNow;
                    return;
                }
            }
            catch (AggregateException) { }
            Thread.Sleep(100);
        }
        string output = _agent.Output;
        _agent.Dispose();
        _agent = null;
        throw new InvalidOperationException($"the agent (--source {source}) did not start: {output}");
    }

    /// <summary>How long the agent runs before a measured VM: a freshly started .NET process tiers its code up on a
    /// background thread for its first seconds, and the code its polls run while a VM runs (called a few times a
    /// second) reaches the tier-up threshold only then. Measured here with 50,000-exit VMs: an agent 1 s old added
    /// about 300 ns per exit more than one 12 s old, or than one without tiered compilation at all.</summary>
    public static readonly TimeSpan SettleTime = TimeSpan.FromSeconds(10);

    private DateTime _readyAt;

    /// <summary>Waits until the agent has run for <see cref="SettleTime"/> and is quiet (at most one 10 ms tick of CPU
    /// in half a second; up to 20 s more), as a long-running agent is: the run is measured in its steady state.</summary>
    public void Mark()
    {
        TimeSpan young = SettleTime - (DateTime.UtcNow - _readyAt);
        if (young > TimeSpan.Zero)
            Thread.Sleep(young);
        DateTime until = DateTime.UtcNow.AddSeconds(20);
        long last = _agent!.CpuNs();
        while (DateTime.UtcNow < until)
        {
            Thread.Sleep(500);
            long now = _agent.CpuNs();
            if (now - last <= 10_000_000)
                break;
            last = now;
        }
        _cpuMark = _agent.CpuNs();
        _selfMark = SelfFamilies(_http.GetStringAsync($"http://127.0.0.1:{_port}/metrics").Result, driven);
    }

    /// <summary>The agent's own metrics an overhead round reports: what explains a round that cost more than others
    /// (how long a counting source kept its attach window open, how often a reader woke), and what it counted.</summary>
    public static readonly string[] SelfReported =
    [
        "kvmobserve_events_total", "kvmobserve_events_unattributed_total", "kvmobserve_events_lost_total",
        "kvmobserve_decode_errors_total", "kvmobserve_attach_windows_total", "kvmobserve_attach_window_seconds_total",
        "kvmobserve_reader_wakeups_total",
    ];

    /// <summary>Each of <see cref="SelfReported"/> summed over its series, as the exposition reads now (the events
    /// counted, and those no thread accounts for: of the <paramref name="driven"/> tracepoint only). Events, lost and
    /// malformed records are there for every source, 0 when it has none.</summary>
    public static Dictionary<string, double> SelfFamilies(string exposition, string driven)
    {
        string eventLabel = $"event=\"{driven}\"";
        var sums = new Dictionary<string, double>
        {
            ["kvmobserve_events_total"] = 0, ["kvmobserve_events_lost_total"] = 0, ["kvmobserve_decode_errors_total"] = 0,
        };
        foreach (string line in exposition.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#')
                continue;
            int end = line.IndexOfAny(['{', ' ']);
            if (end <= 0)
                continue;
            string family = line[..end];
            if (Array.IndexOf(SelfReported, family) < 0
                || (family is "kvmobserve_events_total" or "kvmobserve_events_unattributed_total" && !line.Contains(eventLabel, StringComparison.Ordinal)))
                continue;
            sums[family] = sums.GetValueOrDefault(family) + double.Parse(line[(line.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture);
        }
        return sums;
    }

    public ObserverRun Finish(long events)
    {
        long cpu = _agent!.CpuNs() - _cpuMark;
        long seen;
        Dictionary<string, double> self;
        DateTime until = DateTime.UtcNow.AddSeconds(5);
        do
        {
            // Every event of the driven tracepoint it counted since it started: attributed to a VM or not
            self = SelfFamilies(_http.GetStringAsync($"http://127.0.0.1:{_port}/metrics").Result, driven);
            seen = (long)self.GetValueOrDefault("kvmobserve_events_total");
        }
        while (seen < events && DateTime.UtcNow < until && Sleep(100));
        foreach (string family in self.Keys.ToArray())
            self[family] -= _selfMark.GetValueOrDefault(family);
        int code = _agent.Stop(15, TimeSpan.FromSeconds(15));
        _agent.Dispose();
        _agent = null;
        if (code != 0)
            throw new InvalidOperationException($"the agent (--source {source}) exited with {code}");
        return new ObserverRun(seen, cpu, self);
    }

    private static bool Sleep(int ms)
    {
        Thread.Sleep(ms);
        return true;
    }

    private static int FreePort()
    {
        using var l = new TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        return ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
    }

    public void Dispose()
    {
        _agent?.Dispose();
        _http.Dispose();
    }
}
