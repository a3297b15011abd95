using System.Globalization;
using KvmObserve.Native;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// The CPU priority of the agent's threads. A source that counts in the kernel (bpf, perf-count) loses nothing when
/// the agent waits for a CPU: its counts keep in maps and counters until the next read. So by default its threads run
/// at nice 19, and a vCPU that wants its CPU is not preempted by them: measured here, a 300,000-exit VM pinned to one
/// core spent 1.1-8.0 ms off its CPU under a perf-count agent at nice 0 (the JIT, naming and poll threads woke on its
/// core when the other was busy), 1.0-1.6 ms at nice 19, 0.6-1.3 ms under `perf stat -a`. A source that streams
/// records must keep up with its ring buffers, so its threads keep the nice they were started with; so do a source's
/// <see cref="KvmObserve.Sources.IEventSource.UrgentThreads"/> (perf-count's own, which answers each open of
/// /dev/kvm; bpf's watcher, which adds a new thread's series while its VM runs, to be named). They are left alone
/// rather than set back: going back down needs CAP_SYS_NICE, which the shipped systemd unit and DaemonSet do not grant.
/// </summary>
public static class ThreadNice
{
    public const int Counting = 19;

    /// <summary>The nice value to set (null: leave the threads as started) and why.</summary>
    public static (int? Nice, string Reason) For(int? configured, bool sourceHasRecords) => configured switch
    {
        int n => (n, "--nice"),
        null when sourceHasRecords => (null, "auto: the source streams records, whose readers must keep up"),
        null => (Counting, "auto: the source counts in the kernel, where its counts wait for the agent; the vCPUs come first"),
    };

    /// <summary>Sets every thread of this process but <paramref name="keep"/> to <paramref name="nice"/>; threads
    /// started later start with their creator's value. The task list is read twice: a thread started meanwhile by one
    /// not yet set would start with the old value.</summary>
    public static void Apply(int nice, IReadOnlyList<int> keep)
    {
        var done = new HashSet<int>(keep);
        for (int pass = 0; pass < 2; pass++)
        {
            foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
            {
                if (!int.TryParse(Path.GetFileName(task), NumberStyles.None, CultureInfo.InvariantCulture, out int tid) || !done.Add(tid))
                    continue;
                try
                {
                    Sys.SetThreadNice(tid, nice);
                }
                catch (NativeErrorException e) when (e.Errno == Errno.ESRCH)
                {
                    // exited meanwhile
                }
                catch (NativeErrorException e) when (e.Errno is Errno.EPERM or Errno.EACCES)
                {
                    throw new InvalidOperationException($"--nice: {nice} needs CAP_SYS_NICE (a nice below the one the agent started with)", e);
                }
            }
        }
    }
}
