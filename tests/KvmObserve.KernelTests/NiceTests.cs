using System.Globalization;
using KvmObserve.Workload;

namespace KvmObserve.KernelTests;

/// <summary>
/// The agent's CPU priority, on the real agent: a source that counts in the kernel runs every thread at nice 19 (its
/// counts wait in the kernel; a vCPU that wants its core is not preempted by the agent's JIT, naming or poll threads,
/// which a perf-count agent at nice 0 did for 1-8 ms per 300,000-exit VM), threads started later included, except
/// perf-count's own thread, which must answer an open of /dev/kvm at once, and discovery and naming, which must read a
/// VM's name while it runs; a source that streams records keeps the nice it was started with; --nice sets any.
/// </summary>
public sealed class NiceTests
{
    /// <summary>Each thread's nice: field 19 of /proc/PID/task/TID/stat, the 17th after the comm's closing paren.</summary>
    private static Dictionary<string, int> NiceOfThreads(int pid)
    {
        var nices = new Dictionary<string, int>();
        foreach (string task in Directory.GetDirectories($"/proc/{pid}/task"))
        {
            string stat;
            try { stat = File.ReadAllText(Path.Combine(task, "stat")); }
            catch (IOException) { continue; } // exited meanwhile
            string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            nices[$"{Path.GetFileName(task)} {File.ReadAllText(Path.Combine(task, "comm")).Trim()}"] =
                int.Parse(fields[16], CultureInfo.InvariantCulture);
        }
        return nices;
    }

    private static int OwnNice() => NiceOfThreads(Environment.ProcessId).Values.First();

    /// <summary>The threads that keep the agent's nice (comm is cut at 15 characters): the source's own, discovery,
    /// naming, the VM-creation uevents' reader and the schedstat sampler.</summary>
    private static bool Urgent(string thread) =>
        thread.EndsWith(" kvmobserve perf", StringComparison.Ordinal) || thread.EndsWith(" kvmobserve disc", StringComparison.Ordinal)
        || thread.EndsWith(" kvmobserve nami", StringComparison.Ordinal) || thread.EndsWith(" kvmobserve bpf", StringComparison.Ordinal)
        || thread.EndsWith(" kvmobserve vm e", StringComparison.Ordinal) || thread.EndsWith(" kvmobserve sche", StringComparison.Ordinal);

    [KernelFact]
    public void A_counting_agent_runs_at_nice_19_a_streaming_one_as_started_and_nice_sets_either()
    {
        int own = OwnNice();
        using (Agent counting = Agent.Start("--source", "perf-count"))
        {
            VmRunner.Run(new LoadOptions { Modes = LoadMode.Pio, Count = 2_000, Vcpus = 1 }, "nice"); // threads the VM brings
            counting.ScrapeText(); // and a scrape's
            Dictionary<string, int> nices = NiceOfThreads(counting.Pid);
            Assert.True(nices.Count > 10, $"{nices.Count} threads");
            // perf-count's own thread answers each open of /dev/kvm; discovery, naming, the uevents' reader and the
            // schedstat sampler read VMs while they run:
            // they keep the nice the agent started with
            Assert.Equal(5, nices.Count(t => Urgent(t.Key)));
            Assert.All(nices.Where(t => Urgent(t.Key)), t => Assert.True(t.Value == own, $"thread {t.Key} at nice {t.Value}"));
            Assert.All(nices.Where(t => !Urgent(t.Key)), t => Assert.True(t.Value == 19, $"thread {t.Key} at nice {t.Value}"));
            Assert.True(counting.WaitForLog(l => l.Contains("Threads at nice 19 (auto: the source counts in the kernel", StringComparison.Ordinal)), counting.LogText());
        }
        // Without CAP_SYS_NICE (the shipped systemd unit and DaemonSet do not grant it) the agent cannot lower a
        // thread's nice once raised: perf-count's thread must be left at its nice, not raised and set back.
        using (Agent bounded = Agent.StartUnder(["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"], "--source", "perf-count"))
        {
            Dictionary<string, int> nices = NiceOfThreads(bounded.Pid);
            Assert.All(nices.Where(t => Urgent(t.Key)), t => Assert.Equal(own, t.Value));
            Assert.Equal(nices.Count - 5, nices.Count(t => t.Value == 19));
            Assert.DoesNotContain(bounded.LogLines(), l => l.Contains("warn:", StringComparison.Ordinal));
        }
        using (Agent bpf = Agent.Start("--source", "bpf"))
        {
            VmRunner.Run(new LoadOptions { Modes = LoadMode.Pio, Count = 2_000, Vcpus = 1 }, "nice");
            bpf.ScrapeText();
            // The bpf watcher adds a new thread's first series, for naming while its VM runs: it keeps the nice too
            Dictionary<string, int> nices = NiceOfThreads(bpf.Pid);
            Assert.Equal(5, nices.Count(t => Urgent(t.Key)));
            Assert.All(nices, t => Assert.True(t.Value == (Urgent(t.Key) ? own : 19), $"thread {t.Key} at nice {t.Value}"));
        }
        using (Agent streaming = Agent.Start("--source", "tracefs"))
        {
            streaming.ScrapeText();
            Assert.All(NiceOfThreads(streaming.Pid), t => Assert.True(t.Value == own, $"thread {t.Key} at nice {t.Value}, not {own}"));
        }
        using (Agent set = Agent.Start("--source", "tracefs", "--nice", "5"))
        {
            set.ScrapeText();
            Assert.All(NiceOfThreads(set.Pid).Where(t => !Urgent(t.Key)), t => Assert.True(t.Value == 5, $"thread {t.Key} at nice {t.Value}"));
        }
    }
}
