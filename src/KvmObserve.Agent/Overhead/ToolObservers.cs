using KvmObserve.Sources;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Agent.Overhead;

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
