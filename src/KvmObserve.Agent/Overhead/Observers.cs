using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Agent.Overhead;

/// <summary>What an observer did during one measured VM run.</summary>
/// <param name="Observed">Events it reports having seen (counted, read or drained): proof it was live; -1 if it cannot tell.</param>
/// <param name="CpuNs">CPU time its own process spent (user + system) while the VM ran; -1 where that is not its cost.</param>
public sealed record ObserverRun(long Observed, long CpuNs);

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

    /// <summary>user + system CPU time of the process so far (/proc/PID/stat fields 14 and 15), in ns.</summary>
    public long CpuNs()
    {
        string stat = File.ReadAllText($"/proc/{Pid}/stat");
        string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        long ticks = long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture);
        return ticks * (1_000_000_000 / 100); // USER_HZ is 100 on Linux
    }

    /// <summary>Sends a signal and waits for the process to exit (killing it after <paramref name="timeout"/>).</summary>
    public int Stop(int signal, TimeSpan timeout)
    {
        if (!_process.HasExited)
            _ = Signals.Kill(_process.Id, signal);
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

internal static partial class Signals
{
    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);
}

/// <summary>The agent itself (`kvmobserve run --source S`) in its own process, as users run it.</summary>
public sealed class AgentObserver(string source) : IObserver, IDisposable
{
    private Child? _agent;
    private int _port;
    private long _cpuMark;
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
                    return;
            }
            catch (AggregateException) { }
            Thread.Sleep(100);
        }
        string output = _agent.Output;
        _agent.Dispose();
        _agent = null;
        throw new InvalidOperationException($"the agent (--source {source}) did not start: {output}");
    }

    /// <summary>Waits until the agent is quiet (at most one 10 ms tick of CPU in half a second; up to 20 s): a freshly
    /// started .NET process spends its first seconds tiering up its JIT code on a background thread, which a
    /// long-running agent has long finished. The run is measured in the agent's steady state.</summary>
    public void Mark()
    {
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
    }

    public ObserverRun Finish(long events)
    {
        long cpu = _agent!.CpuNs() - _cpuMark;
        long seen = 0;
        DateTime until = DateTime.UtcNow.AddSeconds(5);
        do
        {
            string text = _http.GetStringAsync($"http://127.0.0.1:{_port}/metrics").Result;
            seen = (long)text.Split('\n').Where(l => l.StartsWith("kvm_pio_total{", StringComparison.Ordinal))
                .Sum(l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture));
        }
        while (seen < events && DateTime.UtcNow < until && Sleep(100));
        int code = _agent.Stop(15, TimeSpan.FromSeconds(15));
        _agent.Dispose();
        _agent = null;
        if (code != 0)
            throw new InvalidOperationException($"the agent (--source {source}) exited with {code}");
        return new ObserverRun(seen, cpu);
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
public sealed class DrainObserver(string tracefsRoot, IReadOnlyList<(string System, string Name)> events) : IObserver, IDisposable
{
    private TracefsInstance? _instance;
    private readonly List<Thread> _readers = new();
    private volatile bool _stop;
    private long _bytes, _mark;

    public string Name => "drain (trace_pipe_raw to nowhere)";

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
            var thread = new Thread(() => Drain(fd)) { IsBackground = true, Name = $"drain cpu{cpu}" };
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
                int n;
                while ((n = Native.Sys.TryRead(fd, buffer)) > 0)
                    Interlocked.Add(ref _bytes, n);
            }
        }
    }

    public void Mark() => _mark = Interlocked.Read(ref _bytes);

    /// <summary>Observed: bytes drained (records and page headers), not events.</summary>
    public ObserverRun Finish(long events)
    {
        long read = Interlocked.Read(ref _bytes) - _mark;
        Dispose();
        return new ObserverRun(read, -1);
    }

    public void Dispose()
    {
        _stop = true;
        foreach (Thread t in _readers)
            t.Join();
        _readers.Clear();
        _instance?.Dispose();
        _instance = null;
    }
}

/// <summary>`perf stat -a` counting the same tracepoints: what counting in the kernel costs, perf's way.</summary>
public sealed class PerfStatObserver(IReadOnlyList<(string System, string Name)> events) : IObserver, IDisposable
{
    private Child? _perf;

    public string Name => "perf stat -a";

    public void Start()
    {
        string perf = Tools.Find("perf") ?? throw new InvalidOperationException("perf is not installed (apt-get install linux-perf)");
        _perf = new Child(perf, ["stat", "-a", "-x", ",", "-e", string.Join(',', events.Select(e => $"{e.System}:{e.Name}"))]);
        Thread.Sleep(1000); // perf prints nothing until it ends: time to open its counters
        if (_perf.HasExited)
            throw new InvalidOperationException($"perf stat: {_perf.Output}");
    }

    public void Mark() { }

    public ObserverRun Finish(long events)
    {
        _perf!.Stop(2, TimeSpan.FromSeconds(10)); // SIGINT: perf prints its counts
        long pio = _perf.Output.Split('\n').Where(l => l.Contains("kvm:kvm_pio", StringComparison.Ordinal))
            .Select(l => long.TryParse(l.Split(',')[0], CultureInfo.InvariantCulture, out long n) ? n : 0).Sum();
        _perf.Dispose();
        _perf = null;
        return new ObserverRun(pio, -1);
    }

    public void Dispose() => _perf?.Dispose();
}

/// <summary>`perf record -a` of the same tracepoints (every sample, raw record included), written to nowhere: the
/// plain drain of perf's own rings, what the perf source is held against.</summary>
public sealed class PerfRecordObserver(IReadOnlyList<(string System, string Name)> events) : IObserver, IDisposable
{
    private Child? _perf;

    public string Name => "perf record -a -R > /dev/null";

    public void Start()
    {
        string perf = Tools.Find("perf") ?? throw new InvalidOperationException("perf is not installed (apt-get install linux-perf)");
        string list = string.Join(',', events.Select(e => $"{e.System}:{e.Name}"));
        _perf = new Child("/bin/sh", ["-c", $"exec '{perf}' record -a -R -e '{list}' -o - > /dev/null"]);
        Thread.Sleep(1500); // perf opens and maps its rings
        if (_perf.HasExited)
            throw new InvalidOperationException($"perf record: {_perf.Output}");
    }

    public void Mark() { }

    public ObserverRun Finish(long events)
    {
        _perf!.Stop(2, TimeSpan.FromSeconds(10));
        _perf.Dispose();
        _perf = null;
        return new ObserverRun(-1, -1);
    }

    public void Dispose() => _perf?.Dispose();
}

/// <summary>bpftrace counting the same tracepoints into BPF maps, one unkeyed count per tracepoint (the cheapest
/// program bpftrace makes for it): the reference for in-kernel aggregation.</summary>
public sealed class BpftraceObserver(IReadOnlyList<(string System, string Name)> events) : IObserver, IDisposable
{
    private Child? _bpftrace;

    public string Name => "bpftrace @event = count()";

    public void Start()
    {
        string bpftrace = Tools.Find("bpftrace") ?? throw new InvalidOperationException("bpftrace is not installed (apt-get install bpftrace)");
        string program = string.Join(" ", events.Select(e => $"tracepoint:{e.System}:{e.Name} {{ @{e.Name} = count(); }}"));
        _bpftrace = new Child(bpftrace, ["-e", program]);
        DateTime until = DateTime.UtcNow.AddSeconds(60);
        while (!_bpftrace.Output.Contains("Attaching", StringComparison.Ordinal) && !_bpftrace.HasExited && DateTime.UtcNow < until)
            Thread.Sleep(50);
        Thread.Sleep(300); // "Attaching N probes..." comes before the attaching is done
        if (_bpftrace.HasExited)
            throw new InvalidOperationException($"bpftrace: {_bpftrace.Output}");
    }

    public void Mark() { }

    public ObserverRun Finish(long events)
    {
        _bpftrace!.Stop(2, TimeSpan.FromSeconds(20)); // SIGINT: bpftrace prints its map
        long pio = _bpftrace.Output.Split('\n').Where(l => l.StartsWith("@kvm_pio:", StringComparison.Ordinal))
            .Select(l => long.Parse(l["@kvm_pio:".Length..].Trim(), CultureInfo.InvariantCulture)).Sum();
        _bpftrace.Dispose();
        _bpftrace = null;
        return new ObserverRun(pio, -1);
    }

    public void Dispose() => _bpftrace?.Dispose();
}

internal static class Tools
{
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
