namespace KvmObserve.KernelTests;

/// <summary>No tracefs instance, enabled event, BPF program, map or link outlives the agent: not after a clean stop,
/// nor after SIGKILL (the BPF objects are held by the process's fds and go with it; a tracefs instance is removed once
/// the next agent has started and stopped).</summary>
public class CleanupTests
{
    [KernelFact(Kvm = false)]
    public void A_clean_stop_leaves_nothing()
    {
        string before = KernelState.GlobalEnabledEvents();
        using var agent = Agent.Start("--source", "tracefs");
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
        using var killed = Agent.Start("--source", "tracefs");
        int deadPid = killed.Pid;
        killed.KillHard();
        killed.Dispose();
        Assert.Single(KernelState.InstancesOf(deadPid)); // what a crash leaves

        using (var next = Agent.Start("--source", "tracefs"))
        {
            Assert.Empty(KernelState.InstancesOf(deadPid));
            Assert.True(next.WaitForLog(l => l.Contains($"kvmobserve-{deadPid}")), next.LogText());
            Assert.Equal(0, next.Stop());
            Assert.Empty(KernelState.InstancesOf(next.Pid));
        }
        Assert.Equal("", KernelState.GlobalEnabledEvents());
    }

    [KernelTheory(Kvm = false)]
    [InlineData(15)]
    [InlineData(9)]
    public void The_bpf_source_leaves_no_program_map_or_link_after_sigterm_or_sigkill(int signal)
    {
        if (KernelState.Bpftool is null)
        {
            Assert.True(Environment.GetEnvironmentVariable("CI") != "true", "bpftool is missing (apt-get install bpftool)");
            return; // a developer machine without bpftool: nothing lists the kernel's BPF objects here
        }
        Assert.Equal("", KernelState.WaitForNoAgentBpf()); // nothing of an earlier test
        using var agent = Agent.Start("--source", "bpf");
        var (programs, maps, links) = KernelState.AgentBpf();
        Assert.Contains(programs, p => p.StartsWith("kvmo_exit ", StringComparison.Ordinal));
        Assert.Contains(maps, m => m.StartsWith("kvmo_counts ", StringComparison.Ordinal));
        Assert.True(links.Count >= 10, $"{links.Count} links: {string.Join(", ", links)}");
        if (signal == 9)
            agent.KillHard();
        else
            Assert.Equal(0, agent.Stop());
        agent.Dispose();
        Assert.Equal("", KernelState.WaitForNoAgentBpf());
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

    [KernelFact(Kvm = false)]
    public void A_port_in_use_stops_startup_with_one_line_and_leaves_no_kernel_state()
    {
        string before = KernelState.GlobalEnabledEvents();
        using var taken = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        // As Kestrel's listener: .NET sets SO_REUSEADDR and SO_REUSEPORT for it on Linux.
        taken.Server.SetSocketOption(System.Net.Sockets.SocketOptionLevel.Socket, System.Net.Sockets.SocketOptionName.ReuseAddress, true);
        taken.Start();
        int port = ((System.Net.IPEndPoint)taken.LocalEndpoint).Port;
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"), "run", "--source", "tracefs", "--listen", $"127.0.0.1:{port}" })
            psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(2, p.ExitCode);
        Assert.Equal($"kvmobserve: --listen 127.0.0.1:{port}: the address is in use (another agent?)", stderr.Trim());
        Assert.Empty(KernelState.InstancesOf(p.Id));
        Assert.Equal(before, KernelState.GlobalEnabledEvents());
    }

    [KernelFact(Kvm = false)]
    public void A_stale_instance_whose_pid_now_runs_something_else_is_removed()
    {
        // PID 1 runs, and is not an agent: an instance named for it is a dead agent's, its PID reused.
        string stale = Path.Combine(KernelState.Tracefs, "instances", "kvmobserve-1");
        Directory.CreateDirectory(stale);
        try
        {
            Assert.Contains("kvmobserve-1", KvmObserve.Sources.Tracefs.TracefsInstance.RemoveStale(KernelState.Tracefs));
            Assert.False(Directory.Exists(stale));
        }
        finally
        {
            if (Directory.Exists(stale))
                Directory.Delete(stale);
        }
    }

    [KernelFact(Kvm = false)]
    public void An_agent_that_overhead_started_is_stopped_not_killed_when_its_arm_ends()
    {
        // SIGTERM as soon as the instance exists, while the agent is still starting: the race that once exited 143
        // with the instance left (about every other run), so several runs.
        for (int run = 0; run < 6; run++)
        {
            var child = new KvmObserve.Agent.Overhead.Child("dotnet",
                [Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"), "run", "--source", "tracefs", "--listen", $"127.0.0.1:{Agent.FreePort()}"]);
            int pid = child.Pid;
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (KernelState.InstancesOf(pid).Count == 0 && !child.HasExited && waited.Elapsed < TimeSpan.FromSeconds(60))
                Thread.Sleep(100);
            Assert.Single(KernelState.InstancesOf(pid));
            int exit = child.Stop(15, TimeSpan.FromSeconds(10)); // what Dispose does when an arm ends, and on SIGTERM, SIGINT or SIGHUP
            child.Dispose();
            Assert.True(KernelState.InstancesOf(pid).Count == 0, $"run {run}: exit {exit}, instance left; the agent said:\n{child.Output}");
            Assert.Equal(0, exit);
        }
    }

    [KernelFact(Kvm = false)]
    public void An_agent_that_overhead_started_stops_when_overhead_is_killed()
    {
        // A shell stands for the overhead process: it starts the agent as Child does (its PID in the variable) and
        // gets SIGKILL, which no handler of its own can answer.
        string log = Path.Combine(Path.GetTempPath(), $"kvmobserve-orphan-{Environment.ProcessId}.log");
        var psi = new System.Diagnostics.ProcessStartInfo("sh") { RedirectStandardOutput = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"{KvmObserve.Agent.Overhead.Child.StopWithParent}=$$ dotnet '{Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll")}' " +
            $"run --source tracefs --listen 127.0.0.1:{Agent.FreePort()} > '{log}' 2>&1 & echo $!; wait");
        using var shell = System.Diagnostics.Process.Start(psi)!;
        int agent = int.Parse(shell.StandardOutput.ReadLine()!);
        try
        {
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (KernelState.InstancesOf(agent).Count == 0 && waited.Elapsed < TimeSpan.FromSeconds(60))
                Thread.Sleep(100);
            Assert.Single(KernelState.InstancesOf(agent));
            shell.Kill();
            shell.WaitForExit();
            waited.Restart();
            while (Directory.Exists($"/proc/{agent}") && waited.Elapsed < TimeSpan.FromSeconds(20))
                Thread.Sleep(100);
            Assert.False(Directory.Exists($"/proc/{agent}"), "the agent runs on after its parent was killed");
            Assert.Empty(KernelState.InstancesOf(agent));
            Assert.Contains("stopped; kernel state removed", File.ReadAllText(log));
        }
        finally
        {
            if (Directory.Exists($"/proc/{agent}"))
                Syscall.Kill(agent, 9);
            File.Delete(log);
        }
    }

    [KernelFact(Kvm = false)]
    public void Sigterm_at_any_moment_of_startup_leaves_nothing()
    {
        string before = KernelState.GlobalEnabledEvents();
        foreach (int delayMs in new[] { 150, 300, 450, 600, 800, 1200 })
        {
            var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"), "run", "--source", "tracefs", "--listen", $"127.0.0.1:{Agent.FreePort()}" })
                psi.ArgumentList.Add(a);
            using var p = System.Diagnostics.Process.Start(psi)!;
            Thread.Sleep(delayMs);
            Syscall.Kill(p.Id, 15);
            Assert.True(p.WaitForExit(30_000), $"SIGTERM {delayMs} ms after the start: still running");
            Assert.True(p.ExitCode == 0, $"SIGTERM {delayMs} ms after the start: exit {p.ExitCode}: {p.StandardError.ReadToEnd()}");
            Assert.Empty(KernelState.InstancesOf(p.Id));
        }
        Assert.Equal(before, KernelState.GlobalEnabledEvents());
    }
}
