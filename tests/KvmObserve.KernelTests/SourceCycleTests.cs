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
    private static Dictionary<string, string> OpenFds() => Directory.GetFileSystemEntries("/proc/self/fd").ToDictionary(
        fd => Path.GetFileName(fd),
        fd =>
        {
            try { return new FileInfo(fd).LinkTarget ?? "?"; }
            catch (IOException) { return "(closed)"; }
        });

    /// <summary>What the runtime opens for itself, lazily and from any thread (the socket engine's epoll and pipe, the
    /// signal pipe of child-process handling, sockets of an earlier test's connection pool). No source opens these.</summary>
    private static bool IsRuntimeOwn(string target) =>
        target is "anon_inode:[eventpoll]" || target.StartsWith("pipe:", StringComparison.Ordinal)
        || target.StartsWith("socket:", StringComparison.Ordinal);

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
        // Every fd opened since, whatever its kind, is a leak unless the runtime opened it for itself; a per-cycle leak
        // of any kind would leave 100.
        string[] added = OpenFds().Where(fd => !before.TryGetValue(fd.Key, out string? was) || was != fd.Value)
            .Select(fd => $"{fd.Key} -> {fd.Value}").ToArray();
        Assert.True(added.Length < 100, $"{added.Length} fds more after 100 cycles: {string.Join(", ", added.Take(10))}");
        Assert.True(added.All(fd => IsRuntimeOwn(fd[(fd.IndexOf("-> ", StringComparison.Ordinal) + 3)..])),
            $"fds left open: {string.Join(", ", added)}");
        Assert.Equal(mappingsBefore, TracefsMappings());
        if (name == "tracefs-mmap")
            Assert.True(mappingsMax > mappingsBefore, "no ring buffer was mapped: the test proves nothing");
        Assert.Empty(KernelState.InstancesOf(Environment.ProcessId));
    }
}
