using System.Diagnostics;
using KvmObserve.Native.Kvm;

namespace KvmObserve.KernelTests;

/// <summary>`kvmobserve doctor` on this host: what it says must be what the host is. Runs with and without KVM: where
/// the kernel has no KVM device it must say so, and why, and claim nothing of a probe that could not run.</summary>
public class DoctorTests
{
    private static (int Code, string[] Lines) Doctor()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Agent.Dll);
        psi.ArgumentList.Add("doctor");
        using Process p = Process.Start(psi)!;
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(120_000), "doctor did not finish in 2 minutes");
        return (p.ExitCode, (stdout + stderr.Result).Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [KernelFact(Kvm = false)]
    public void Doctor_reports_this_hosts_kvm_device_and_probes_the_tracepoints_only_where_a_vm_can_run()
    {
        string instancesBefore = string.Join(',', Directory.GetDirectories("/sys/kernel/tracing/instances").Order());
        (int code, string[] lines) = Doctor();
        string Line(string check) => Assert.Single(lines, l => l.Contains($"] {check}: ", StringComparison.Ordinal));

        Assert.StartsWith("[ok  ]", Line("tracefs"));
        Assert.StartsWith("[ok  ]", Line("tracefs instance"));
        Assert.StartsWith("[ok  ]", Line("perf_event_open"));
        string kvm = Line("/dev/kvm");
        string pio = Line("kvm:kvm_pio");
        if (KvmDevice.Problem() is string missing)
        {
            Assert.StartsWith("[FAIL]", kvm);
            Assert.Contains(missing, kvm, StringComparison.Ordinal);
            Assert.NotEqual(0, code); // a host where no VM runs is no healthy KVM host
            Assert.Equal($"[info] kvm:kvm_pio: exists (id {File.ReadAllText("/sys/kernel/tracing/events/kvm/kvm_pio/id").Trim()}), enabled -- not probed: no VM can run here (/dev/kvm)", pio);
            Assert.DoesNotContain(lines, l => l.Contains("in the probe", StringComparison.Ordinal));
        }
        else
        {
            Assert.StartsWith("[ok  ]", kvm);
            Assert.Matches(@"seen firing \([1-9][0-9]* in the probe\)", pio); // its micro-VM drives PIO exits
        }
        Assert.Equal(instancesBefore, string.Join(',', Directory.GetDirectories("/sys/kernel/tracing/instances").Order()));
    }

    /// <summary>The agent itself runs where no VM can (it serves its metrics), and says once why it has no kvm
    /// series.</summary>
    [KernelFact(Kvm = false)]
    public void The_agent_says_at_start_whether_a_vm_can_run_here()
    {
        using var agent = Agent.Start("--source", "tracefs");
        Assert.Equal(0, agent.Stop());
        string[] said;
        lock (agent.Log)
            said = agent.Log.Where(l => l.Contains("No VM can run on this host", StringComparison.Ordinal)).ToArray();
        if (KvmDevice.Problem() is string missing)
            Assert.Contains(missing, Assert.Single(said), StringComparison.Ordinal);
        else
            Assert.Empty(said);
    }
}
