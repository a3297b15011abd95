using System.Diagnostics;
using System.Text.Json;
using KvmObserve.Native;

namespace KvmObserve.KernelTests;

/// <summary>A vCPU pinned to CPU 0 next to a busy thread pinned there too waits about as long as it runs: the agent's
/// steal (schedstat run_delay) and run time show it, in seconds, and the steal equals what the guest is told.</summary>
public class StealTests
{
    [KernelFact]
    public void A_vcpu_sharing_its_cpu_with_a_hog_shows_steal_in_seconds()
    {
        using Agent agent = Agent.Start();
        using var stop = new CancellationTokenSource();
        var hog = new Thread(() =>
        {
            Sys.PinCurrentThread(0);
            while (!stop.IsCancellationRequested) { }
        }) { IsBackground = true, Name = "cpu0 hog" };
        hog.Start();
        string name = $"steal{Environment.ProcessId}";
        var wall = Stopwatch.StartNew();
        JsonElement report;
        try
        {
            report = Agent.Load("--mode", "pio", "--count", "20000", "--duration", "3", "--pin", "--name", name);
        }
        finally
        {
            stop.Cancel();
            hog.Join();
        }
        double seconds = wall.Elapsed.TotalSeconds;
        Assert.Equal(name, report.GetProperty("vms")[0].GetProperty("name").GetString());
        string text = agent.ScrapeText();
        Metrics m = Metrics.Parse(text);
        double run = m.Sum("kvm_vcpu_run_seconds_total", ("vm", name), ("vcpu", "0"));
        double steal = m.Sum("kvm_vcpu_steal_seconds_total", ("vm", name), ("vcpu", "0"));
        // ~3 s of guest time shared half and half with the hog, less up to one 0.5 s sample lost at the VM's exit
        string log;
        lock (agent.Log)
            log = string.Join('\n', agent.Log.TakeLast(30));
        string seen = $"run {run:F3} s, steal {steal:F3} s in {seconds:F1} s; the agent's series of the VM:\n"
            + string.Join('\n', text.Split('\n').Where(l => l.Contains(name, StringComparison.Ordinal) && l.Contains("_seconds", StringComparison.Ordinal)))
            + "\nits log:\n" + log;
        Assert.True(run >= 0.5 && run <= seconds && steal >= 0.5 && steal <= seconds && run + steal >= 1.5, seen);
        Assert.True(m.Sum("kvm_vmm_threads_run_seconds_total", ("vm", name)) > 0, "the VMM's other threads ran too");

        // What KVM itself wrote into the guest's kvm_steal_time (MSR_KVM_STEAL_TIME, which load enables) at the vCPU's
        // last entry: the agent's figure, sampled every 0.5 s, is within one sampling interval of it (steal grows at
        // most 1 s per s).
        double guest = report.GetProperty("vms")[0].GetProperty("vcpus")[0].GetProperty("guest_steal_ns").GetInt64() / 1e9;
        Assert.InRange(guest, 0.5, seconds);
        Assert.InRange(steal, guest - 0.5, guest + 0.5);
    }
}
