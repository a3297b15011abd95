using KvmObserve.Aggregation.Discovery;

namespace KvmObserve.Tests;

/// <summary>schedstat is in nanoseconds and the metrics in seconds: unit slips are common in exporters, so the
/// conversion is checked on a procfs tree built on disk.</summary>
public sealed class SchedstatCollectorTests : IDisposable
{
    private readonly string _proc = Directory.CreateTempSubdirectory("kvmobserve-proc").FullName;

    public void Dispose() => Directory.Delete(_proc, recursive: true);

    private void Write(string relative, string text)
    {
        string path = Path.Combine(_proc, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
    }

    /// <summary>A VMM process 500 holding a VM fd, with a main thread and two vCPU threads named as QEMU names them.</summary>
    private void Vm(params (int Tid, string Comm, string Schedstat)[] threads)
    {
        Write("500/stat", "500 (qemu-system-x86) S 1 500 500 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 4242 0 0");
        Write("500/comm", "qemu-system-x86\n");
        Write("500/cmdline", "qemu-system-x86_64\0-name\0guest=web\0");
        Directory.CreateDirectory(Path.Combine(_proc, "500/fd"));
        File.CreateSymbolicLink(Path.Combine(_proc, "500/fd/7"), ProcfsParsers.KvmVmFdTarget);
        foreach ((int tid, string comm, string schedstat) in threads)
        {
            Write($"500/task/{tid}/comm", comm + "\n");
            Write($"500/task/{tid}/schedstat", schedstat);
            Write($"{tid}/status", $"Name:\t{comm}\nTgid:\t500\nPid:\t{tid}\n");
        }
    }

    [Fact]
    public void Nanoseconds_become_seconds_per_vcpu_and_for_the_other_threads()
    {
        Vm((500, "qemu-system-x86", "2000000000 500000000 10\n"),
            (501, "CPU 0/KVM", "7500000000 1250000000 300\n"),
            (502, "CPU 1/KVM", "3000000000 0 90\n"),
            (503, "IO iothread1", "1000000000 250000000 40\n"));
        var registry = new VmRegistry(_proc);
        registry.Scan();
        IReadOnlyList<SchedstatCollector.Totals> totals = new SchedstatCollector(registry, _proc).Collect();
        Assert.Equal(
            [new("web", -1, 3.0, 0.75), new("web", 0, 7.5, 1.25), new("web", 1, 3.0, 0.0)],
            totals);
    }

    [Fact]
    public void A_thread_that_exits_keeps_its_last_reading()
    {
        Vm((500, "qemu-system-x86", "1 1 1\n"), (501, "CPU 0/KVM", "4000000000 1000000000 5\n"));
        var registry = new VmRegistry(_proc);
        registry.Scan();
        var collector = new SchedstatCollector(registry, _proc);
        collector.Sample();
        Directory.Delete(Path.Combine(_proc, "500/task/501"), recursive: true);
        Assert.Contains(new SchedstatCollector.Totals("web", 0, 4.0, 1.0), collector.Collect());
    }

    [Theory]
    [InlineData("123 456 7\n", 123UL, 456UL)]
    [InlineData("0 0 1", 0UL, 0UL)]
    public void Schedstat_lines_parse(string text, ulong run, ulong wait) =>
        Assert.Equal((run, wait), ProcfsParsers.ParseSchedstat(text));

    [Theory]
    [InlineData("")]
    [InlineData("12")]
    [InlineData("x 1 2")]
    public void Malformed_schedstat_is_rejected(string text) => Assert.Null(ProcfsParsers.ParseSchedstat(text));
}
