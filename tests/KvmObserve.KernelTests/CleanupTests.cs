namespace KvmObserve.KernelTests;

/// <summary>No tracefs instance or enabled event outlives the agent: not after a clean stop, nor after SIGKILL once
/// the next agent has started and stopped.</summary>
public class CleanupTests
{
    [KernelFact(Kvm = false)]
    public void A_clean_stop_leaves_nothing()
    {
        string before = KernelState.GlobalEnabledEvents();
        var agent = Agent.Start();
        int pid = agent.Pid;
        Assert.Single(KernelState.InstancesOf(pid));
        Assert.Equal(0, agent.Stop());
        agent.Dispose();
        Assert.Empty(KernelState.InstancesOf(pid));
        Assert.Equal(before, KernelState.GlobalEnabledEvents());
    }

    [KernelFact(Kvm = false)]
    public void After_sigkill_the_next_start_removes_the_stale_instance()
    {
        var killed = Agent.Start();
        int deadPid = killed.Pid;
        killed.KillHard();
        killed.Dispose();
        Assert.Single(KernelState.InstancesOf(deadPid)); // what a crash leaves

        using (var next = Agent.Start())
        {
            Assert.Empty(KernelState.InstancesOf(deadPid));
            Assert.Contains(next.Log, l => l.Contains($"kvmobserve-{deadPid}"));
            Assert.Equal(0, next.Stop());
            Assert.Empty(KernelState.InstancesOf(next.Pid));
        }
        Assert.Equal("", KernelState.GlobalEnabledEvents());
    }

    [KernelFact(Kvm = false)]
    public void A_bad_setting_stops_startup_with_one_line_and_exit_code_2()
    {
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"), "run", "--listen", "nowhere" })
            psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(2, p.ExitCode);
        Assert.Equal("kvmobserve: --listen: 'nowhere' is not HOST:PORT (e.g. 127.0.0.1:9632)", stderr.Trim());
    }
}
