using KvmObserve.Sources;
using System.Diagnostics;
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

/// <summary>A child process (the agent, perf, bpftrace, cat), killed on dispose so none outlives the run.</summary>
internal sealed class Child : IDisposable
{
    private readonly Process _process;
    private readonly List<string> _output = new();

    public Child(string file, IEnumerable<string> args, string? stdoutTo = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        _process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.Add(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.Add(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
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
        if (!_process.HasExited)
        {
            _process.Kill();
            _process.WaitForExit();
        }
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

/// <summary>A plain drain of the same tracepoints into nowhere: a private tracefs instance with the same events,
/// buffer size, wake-up watermark and trace clock as the tracefs source, each CPU's trace_pipe_raw read (as `cat` reads it: woken
/// at the watermark, then read until empty) and thrown away. What reading records costs with no decoding at all.</summary>
public sealed class DrainObserver(string tracefsRoot, IReadOnlyList<(string System, string Name)> events, bool splice = false) : IObserver, IDisposable
{
    private TracefsInstance? _instance;
    private readonly List<Thread> _readers = new();
    private volatile bool _stop;
    private long _bytes, _mark;

    public string Name => splice ? "drain (trace_pipe_raw spliced to nowhere)" : "drain (trace_pipe_raw to nowhere)";

    public void Start()
    {
        _instance = TracefsInstance.Create(tracefsRoot, "drain");
        _instance.SetBufferSizeKb(4096);
        _instance.SetBufferPercent(25);
        _instance.SetTraceClock("mono"); // as the tracefs source sets it: the same kernel work per record
        foreach ((string system, string name) in events)
            _instance.Enable(system, name);
        foreach (int cpu in _instance.Cpus())
        {
            var fd = Native.Sys.Open(_instance.PipeRawPath(cpu), nonBlocking: true);
            var thread = new Thread(() => { if (splice) Splice(fd); else Drain(fd); }) { IsBackground = true, Name = $"drain cpu{cpu}" };
            _readers.Add(thread);
            thread.Start();
        }
    }

    private void Drain(Native.SafeFd fd)
    {
        using (fd)
        using (var wake = new Native.SafeFd(Native.Sys.EventFd()))
        {
            var buffer = new byte[128 * 1024];
            while (!_stop)
            {
                if (Native.Sys.PollReadable(fd, wake, 100) != 1)
                    continue;
                ReadToEmpty(fd, buffer);
            }
            ReadToEmpty(fd, buffer); // what is left below the watermark when the run ends: read, as cat would at its end
        }
    }

    private void ReadToEmpty(Native.SafeFd fd, byte[] buffer)
    {
        int n;
        while ((n = Native.Sys.TryRead(fd, buffer)) > 0)
            Interlocked.Add(ref _bytes, n);
    }

    /// <summary>The copy-free drain: whole ring-buffer pages moved into a pipe by splice(2), and from the pipe to
    /// /dev/null, never copied to user space (the kernel splices full pages only: a partial page waits to fill).</summary>
    private void Splice(Native.SafeFd fd)
    {
        (Native.SafeFd pipeRead, Native.SafeFd pipeWrite) = Native.Sys.Pipe();
        using (fd)
        using (pipeRead)
        using (pipeWrite)
        using (var devNull = Native.Sys.Open("/dev/null", write: true))
        using (var wake = new Native.SafeFd(Native.Sys.EventFd()))
        {
            while (!_stop)
            {
                if (Native.Sys.PollReadable(fd, wake, 100) != 1)
                    continue;
                if (SpliceToEmpty(fd, pipeRead, pipeWrite, devNull) < 0)
                    Thread.Sleep(1); // readable, yet no full page to splice: poll says readable until a page is read
            }
            // The run's full pages below the wake-up watermark (all of them in a short run): spliced, as the plain
            // drain reads its rest at the end.
            SpliceToEmpty(fd, pipeRead, pipeWrite, devNull);
        }
    }

    private long SpliceToEmpty(Native.SafeFd fd, Native.SafeFd pipeRead, Native.SafeFd pipeWrite, Native.SafeFd devNull)
    {
        long n;
        while ((n = Native.Sys.TrySplice(fd, pipeWrite, 64 * 1024, nonBlocking: true)) > 0)
        {
            Interlocked.Add(ref _bytes, n);
            for (long left = n; left > 0;)
                left -= Math.Max(0, Native.Sys.TrySplice(pipeRead, devNull, (int)left, nonBlocking: false));
        }
        return n;
    }

    public void Mark() => _mark = Interlocked.Read(ref _bytes);

    /// <summary>Observed: bytes drained (records and page headers), not events.</summary>
    public ObserverRun Finish(long events)
    {
        StopReaders(); // after their last reads: the run's records below the wake-up watermark are counted too
        long read = Interlocked.Read(ref _bytes) - _mark;
        Dispose();
        return new ObserverRun(read, -1);
    }

    private void StopReaders()
    {
        _stop = true;
        foreach (Thread t in _readers)
            t.Join();
        _readers.Clear();
    }

    public void Dispose()
    {
        StopReaders();
        _instance?.Dispose();
        _instance = null;
    }
}

/// <summary>A reference observer that is another tool in its own process: started before the run, ready once it
/// observes, stopped with SIGINT after it, when it prints what it saw.</summary>
internal abstract class ToolObserver(string tool, string package) : IObserver, IDisposable
{
    private Child? _child;

    public abstract string Name { get; }

    /// <summary>The command line to start, given the tool's path.</summary>
    protected abstract (string File, string[] Args) Command(string path);

    /// <summary>Returns once the started tool observes (it has opened its counters or attached its probes).</summary>
    protected abstract void WaitReady(Child child);

    /// <summary>Events of the driven kind the tool printed on its way out (-1: it prints none).</summary>
    protected virtual long Observed(string output) => -1;

    public void Start()
    {
        string path = Tools.Find(tool) ?? throw new InvalidOperationException($"{tool} is not installed (apt-get install {package})");
        (string file, string[] args) = Command(path);
        _child = new Child(file, args);
        WaitReady(_child);
        if (_child.HasExited)
            throw new InvalidOperationException($"{Name}: {_child.Output}");
    }

    public void Mark() { }

    public ObserverRun Finish(long events)
    {
        _child!.Stop(2, TimeSpan.FromSeconds(20)); // SIGINT: the tool prints its counts and exits
        long observed = Observed(_child.Output);
        _child.Dispose();
        _child = null;
        return new ObserverRun(observed, -1);
    }

    public void Dispose() => _child?.Dispose();

    protected static string EventList(IEnumerable<(string System, string Name)> events) =>
        string.Join(',', events.Select(e => $"{e.System}:{e.Name}"));
}

/// <summary>`perf stat -a` counting the same tracepoints: what counting in the kernel costs, perf's way.</summary>
internal sealed class PerfStatObserver(IReadOnlyList<(string System, string Name)> events, string driven) : ToolObserver("perf", "linux-perf")
{
    public override string Name => "perf stat -a";

    protected override (string File, string[] Args) Command(string path) => (path, ["stat", "-a", "-x", ",", "-e", EventList(events)]);

    // perf prints nothing until it ends: ready once it holds a counter per event and CPU (a fixed wait missed a
    // warm-up VM's first exits where perf starts slowly, in the test VM).
    protected override void WaitReady(Child child) => Tools.WaitForPerfEvents(child, events.Count * CpuTopology.OnlineCpus().Count);

    protected override long Observed(string output) => output.Split('\n').Where(l => l.Contains($",kvm:{driven},", StringComparison.Ordinal))
        .Select(l => long.TryParse(l.Split(',')[0], CultureInfo.InvariantCulture, out long n) ? n : 0).Sum();
}

/// <summary>`perf record -a` of the same tracepoints (every sample, raw record included), written to nowhere: the
/// plain drain of perf's own rings, what the perf source is held against.</summary>
internal sealed class PerfRecordObserver(IReadOnlyList<(string System, string Name)> events) : ToolObserver("perf", "linux-perf")
{
    public override string Name => "perf record -a -R > /dev/null";

    protected override (string File, string[] Args) Command(string path) =>
        ("/bin/sh", ["-c", $"exec '{path}' record -a -R -e '{EventList(events)}' -o - > /dev/null"]);

    protected override void WaitReady(Child child)
    {
        Tools.WaitForPerfEvents(child, events.Count * CpuTopology.OnlineCpus().Count);
        Thread.Sleep(500); // then maps its rings and enables them
    }
}

/// <summary>bpftrace counting the same tracepoints into BPF maps, one unkeyed count per tracepoint (the cheapest
/// program bpftrace makes for it): the reference for in-kernel aggregation.</summary>
internal sealed class BpftraceObserver(IReadOnlyList<(string System, string Name)> events, string driven) : ToolObserver("bpftrace", "bpftrace")
{
    public override string Name => "bpftrace @event = count()";

    protected override (string File, string[] Args) Command(string path) =>
        (path, ["-e", string.Join(" ", events.Select(e => $"tracepoint:{e.System}:{e.Name} {{ @{e.Name} = count(); }}"))]);

    protected override void WaitReady(Child child)
    {
        DateTime until = DateTime.UtcNow.AddSeconds(60);
        while (!child.Output.Contains("Attaching", StringComparison.Ordinal) && !child.HasExited && DateTime.UtcNow < until)
            Thread.Sleep(50);
        Thread.Sleep(300); // "Attaching N probes..." comes before the attaching is done
    }

    protected override long Observed(string output) => output.Split('\n').Where(l => l.StartsWith($"@{driven}:", StringComparison.Ordinal))
        .Select(l => long.Parse(l[$"@{driven}:".Length..].Trim(), CultureInfo.InvariantCulture)).Sum();
}

internal static class Tools
{
    /// <summary>Waits (60 s at most) until <paramref name="child"/> holds <paramref name="count"/> perf event fds, then
    /// a moment more for it to enable them.</summary>
    public static void WaitForPerfEvents(Child child, int count)
    {
        DateTime until = DateTime.UtcNow.AddSeconds(60);
        while (!child.HasExited && DateTime.UtcNow < until && PerfEventFds(child.Pid) < count)
            Thread.Sleep(50);
        Thread.Sleep(200);
    }

    private static int PerfEventFds(int pid)
    {
        try
        {
            return new DirectoryInfo($"/proc/{pid}/fd").EnumerateFileSystemInfos()
                .Count(f => f.LinkTarget == "anon_inode:[perf_event]");
        }
        catch (IOException)
        {
            return 0;
        }
        catch (UnauthorizedAccessException)
        {
            return 0;
        }
    }

    public static string? Find(string name) =>
        new[] { "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin" }
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);
}

/// <summary>How to start this same program again (`dotnet kvmobserve.dll` or the apphost).</summary>
internal static class Self
{
    public static string Process => Environment.ProcessPath ?? throw new InvalidOperationException("no process path");

    public static string[] Args
    {
        get
        {
            string arg0 = Environment.GetCommandLineArgs()[0];
            return Path.GetFileNameWithoutExtension(Process) == "dotnet" && arg0.EndsWith(".dll", StringComparison.Ordinal) ? [arg0] : [];
        }
    }
}
