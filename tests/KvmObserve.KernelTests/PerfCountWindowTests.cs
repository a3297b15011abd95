using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Sources;
using KvmObserve.Sources.PerfCount;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.KernelTests;

/// <summary>perf-count's system-wide counters, which catch threads not attached yet, run only in attach windows that
/// an open of /dev/kvm starts. (That they stop while an attached VM runs, and that a late attach loses nothing, is
/// shown on real VMs in AgentOnLoadTests.)</summary>
public class PerfCountWindowTests
{
    private static (long Windows, double Seconds) WindowsOf(PerfCountingSource source) => source.AttachWindows!.Value;

    /// <summary>Watching /dev/kvm, with no VM starting, the start's window closes at once and an open of /dev/kvm
    /// (here, by the test itself: what a VMM does first) opens another. Where the device cannot be watched, nothing
    /// would tell the source that a VM starts: its system-wide counters stay on, and it says so once.</summary>
    [KernelFact]
    public void An_open_of_dev_kvm_opens_a_window_and_a_source_that_cannot_watch_for_it_keeps_its_counters_on()
    {
        string root = TracefsLocator.Find(mountIfNeeded: true, out string? problem) ?? throw new InvalidOperationException(problem);
        var warnings = new List<string>();
        SourceOptions Options() => new() { PollTimeoutMs = 10, Events = ["kvm_pio", "kvm_userspace_exit"], Warn = w => { lock (warnings) warnings.Add(w); } };
        var aggregator = new Aggregator(CpuTopology.PossibleCpus(), new VmRegistry());
        using var watching = new PerfCountingSource(Options(), aggregator, root, CpuTopology.OnlineCpus());
        using var blind = new PerfCountingSource(Options(), new Aggregator(CpuTopology.PossibleCpus(), new VmRegistry()), root,
            CpuTopology.OnlineCpus(), kvmDevice: "/nonexistent/kvm");
        watching.Start();
        blind.Start();

        Thread.Sleep(300);
        (long windows, double seconds) = WindowsOf(watching);
        Assert.Equal(1, windows);
        Thread.Sleep(200);
        Assert.Equal(seconds, WindowsOf(watching).Seconds); // closed: no VM to attach

        using (File.Open("/dev/kvm", FileMode.Open, FileAccess.ReadWrite)) { }
        DateTime deadline = DateTime.UtcNow.AddSeconds(5);
        while (WindowsOf(watching).Windows < 2 && DateTime.UtcNow < deadline)
            Thread.Sleep(10);
        Assert.Equal(2, WindowsOf(watching).Windows);

        (long blindWindows, double before) = WindowsOf(blind);
        Thread.Sleep(300);
        Assert.Equal(1, blindWindows);
        Assert.True(WindowsOf(blind).Seconds >= before + 0.25, "the blind source's system-wide counters stopped");
        Assert.Single(warnings, w => w.Contains("cannot watch /nonexistent/kvm", StringComparison.Ordinal));
        Assert.DoesNotContain(warnings, w => w.Contains("cannot watch /dev/kvm", StringComparison.Ordinal));
    }
}
