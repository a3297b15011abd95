using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Sources;
using KvmObserve.Sources.Bpf;
using KvmObserve.Sources.Perf;
using KvmObserve.Sources.PerfCount;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.KernelTests;

/// <summary>Each source started and stopped 100 times in this process: no fd (perf events, rings, trace_pipe_raw,
/// eventfds, BPF programs, maps and links), no mapping of a ring buffer and no tracefs instance may be left over.</summary>
public class SourceCycleTests
{
    /// <summary>This process's memory mappings of tracefs files (a mapped ring buffer's meta page and sub-buffers).</summary>
    private static int TracefsMappings() => File.ReadLines("/proc/self/maps").Count(l => l.Contains("trace_pipe_raw", StringComparison.Ordinal));

    /// <summary>This process's open fds and what each points at.</summary>
    private static Dictionary<string, string> OpenFds()
    {
        var fds = new Dictionary<string, string>();
        foreach (string fd in Directory.GetFileSystemEntries("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is string target) // null: the listing's own fd, closed since
                    fds[Path.GetFileName(fd)] = target;
            }
            catch (IOException) { }
        }
        return fds;
    }

    /// <summary>A kind of fd that sources open: files (tracefs, procfs), perf events, eventfds, BPF objects. The runtime
    /// opens others for itself, lazily and from any thread (the socket engine's epoll, the signal pipe of child-process
    /// handling, sockets of an earlier test's connection pool, inotify, an assembly or native library it loads on first
    /// use, which stays open): those are left to the growth check.</summary>
    private static bool SourceKind(string target) =>
        (target.StartsWith('/') && !target.EndsWith(".dll", StringComparison.Ordinal) && !target.Contains(".so", StringComparison.Ordinal))
        || target is "anon_inode:[perf_event]" or "anon_inode:[eventfd]"
        || target.StartsWith("anon_inode:bpf", StringComparison.Ordinal);

    /// <summary>This process's fds of the kinds sources open: perf events, eventfds, tracefs files.</summary>
    private static int SourceFds() => Directory.GetFileSystemEntries("/proc/self/fd").Count(fd =>
    {
        try
        {
            string target = new FileInfo(fd).LinkTarget ?? "";
            return target is "anon_inode:[perf_event]" or "anon_inode:[eventfd]" || target.Contains("/tracing/")
                || target.StartsWith("anon_inode:bpf", StringComparison.Ordinal); // bpf-prog, bpf-map, bpf_link
        }
        catch (IOException) { return false; }
    });

    [KernelTheory(Kvm = false)]
    [InlineData("tracefs")]
    [InlineData("tracefs-mmap")]
    [InlineData("perf")]
    [InlineData("perf-count")]
    [InlineData("bpf")]
    public void Hundred_start_stop_cycles_leak_no_fd(string name)
    {
        string root = TracefsLocator.Find(mountIfNeeded: true, out string? problem) ?? throw new InvalidOperationException(problem);
        var aggregator = new Aggregator(CpuTopology.PossibleCpus(), new VmRegistry());
        // A few tracepoints, not all: the kernel takes ~35 ms to unregister each perf probe (see PerfFds), and the
        // fds per tracepoint are alike.
        var options = new SourceOptions { PollTimeoutMs = 10, BufferKb = 64, Events = ["kvm_pio", "kvm_mmio", "kvm_userspace_exit", "kvm_msr"] };
        IEventSource Create() => name switch
        {
            "tracefs" => new TracefsSource(options, aggregator, root),
            "tracefs-mmap" => new TracefsSource(new SourceOptions { PollTimeoutMs = 10, BufferKb = 64, Events = options.Events, MapRingBuffer = true }, aggregator, root),
            "perf" => new PerfSamplingSource(options, aggregator, root, CpuTopology.OnlineCpus()),
            "bpf" => new BpfSource(options, aggregator, root),
            _ => new PerfCountingSource(options, aggregator, root, CpuTopology.OnlineCpus()),
        };

        // One cycle first: the runtime opens files of its own the first time (thread pool, assemblies).
        using (IEventSource warm = Create())
            warm.Start();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Dictionary<string, string> before = OpenFds();
        int sourceBefore = SourceFds(), mappingsBefore = TracefsMappings(), mappingsMax = 0;
        int duringMax = 0;
        for (int i = 0; i < 100; i++)
        {
            IEventSource source = Create();
            source.Start();
            duringMax = Math.Max(duringMax, SourceFds());
            mappingsMax = Math.Max(mappingsMax, TracefsMappings());
            source.Stop();
            source.Dispose();
        }
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Assert.True(duringMax > sourceBefore, "the source opened nothing: the test proves nothing");
        Assert.Equal(sourceBefore, SourceFds());
        // No fd of a kind sources open may be new; a per-cycle leak of any kind would leave 100.
        string[] added = OpenFds().Where(fd => !before.TryGetValue(fd.Key, out string? was) || was != fd.Value)
            .Select(fd => $"{fd.Key} -> {fd.Value}").ToArray();
        Assert.True(added.Length < 100, $"{added.Length} fds more after 100 cycles: {string.Join(", ", added.Take(10))}");
        Assert.True(!added.Any(fd => SourceKind(fd[(fd.IndexOf("-> ", StringComparison.Ordinal) + 3)..])),
            $"fds left open: {string.Join(", ", added)}");
        Assert.Equal(mappingsBefore, TracefsMappings());
        if (name == "tracefs-mmap")
            Assert.True(mappingsMax > mappingsBefore, "no ring buffer was mapped: the test proves nothing");
        Assert.Empty(KernelState.InstancesOf(Environment.ProcessId));
    }
}
