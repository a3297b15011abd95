using System.Globalization;
using KvmObserve.Native;

namespace KvmObserve.KernelTests;

/// <summary>
/// The tracefs source flooded past its ring, on any kernel (no VM): 20,000 markers of 1,000 bytes written from CPU 0
/// into the agent's own instance (trace_marker: records the agent reads but does not decode, counted as "unknown")
/// fill a one-page ring far faster than its reader, woken only when the ring is full, drains it. Every marker is then
/// read or lost, and what the agent counts lost on each CPU is what the kernel says it overwrote or dropped there
/// (per_cpu/cpuN/stats). Through the memory map, kernels since 6.15 (and stable ones from 6.12) say so in the page
/// itself, not in the meta page: a reader of the meta page alone counted none of 16,959 lost.
/// </summary>
public sealed class TracefsLossTests
{
    private const int Markers = 20_000;

    [KernelFact(Kvm = false, RingMmap = true)]
    public void Mapped_every_marker_is_read_or_counted_lost_as_the_kernel_counts_per_cpu() => Flood("true");

    [KernelFact(Kvm = false)]
    public void Copied_every_marker_is_read_or_counted_lost_as_the_kernel_counts_per_cpu() => Flood("false");

    private static void Flood(string mapped)
    {
        using Agent agent = Agent.Start("--source", "tracefs", "--tracefs-mmap", mapped, "--buffer-kb", "4", "--wakeup-percent", "100");
        if (mapped == "true")
            Assert.DoesNotContain(agent.LogLines(), l => l.Contains("cannot be memory-mapped", StringComparison.Ordinal));
        string instance = Path.Combine(TracefsRoot(), "instances", $"kvmobserve-{agent.Pid}");
        var writer = new Thread(() =>
        {
            Sys.PinCurrentThread(0);
            using var marker = new FileStream(Path.Combine(instance, "trace_marker"), FileMode.Open, FileAccess.Write, FileShare.ReadWrite, bufferSize: 0);
            byte[] text = new byte[1000];
            Array.Fill(text, (byte)'m');
            for (int i = 0; i < Markers; i++)
                marker.Write(text); // one write(2), one record
        }) { Name = "markers" };
        writer.Start();
        writer.Join();

        static double Unknown(Metrics m) => m.Sum("kvmobserve_decode_errors_total", ("source", "tracefs"), ("event", "unknown"));
        static double Lost(Metrics m, string? cpu = null) => cpu is null
            ? m.Sum("kvmobserve_events_lost_total", ("source", "tracefs"))
            : m.Sum("kvmobserve_events_lost_total", ("source", "tracefs"), ("cpu", cpu));
        agent.ScrapeUntil(m => Unknown(m) + Lost(m) >= Markers);
        // The kernel's account and the agent's, once neither moves: the reader catches up at its next poll timeout.
        Dictionary<string, long> kernel = [];
        Metrics seen = agent.Scrape();
        for (int attempt = 0; attempt < 20; attempt++)
        {
            Thread.Sleep(500);
            kernel = KernelLost(instance);
            seen = agent.Scrape();
            if (kernel.All(k => Lost(seen, k.Key) == k.Value) && kernel.SequenceEqual(KernelLost(instance)))
                break;
        }
        Assert.True(kernel.GetValueOrDefault("0") > 0, $"the ring on CPU 0 did not overrun (read {Unknown(seen)}); the test proves nothing");
        foreach ((string cpu, long lost) in kernel)
            Assert.True(Lost(seen, cpu) == lost, $"cpu {cpu}: the kernel lost {lost}, the agent counted {Lost(seen, cpu)} lost, "
                + $"read {Unknown(seen)}; its stats: {File.ReadAllText(Path.Combine(instance, "per_cpu", $"cpu{cpu}", "stats")).ReplaceLineEndings(", ")}");
        // Each marker is one record, read (unknown) or lost; the agent's thread-creation records can be lost beside them.
        Assert.InRange(Unknown(seen), 1, Markers);
        Assert.True(Unknown(seen) + Lost(seen, "0") >= Markers, $"read {Unknown(seen)} and lost {Lost(seen, "0")} of {Markers} markers; "
            + $"cpu 0's stats: {File.ReadAllText(Path.Combine(instance, "per_cpu", "cpu0", "stats")).ReplaceLineEndings(", ")}");
        Assert.Equal(0, seen.Sum("kvmobserve_decode_errors_total", ("source", "tracefs"), ("event", "page")));
        Assert.Equal(0, agent.Stop());
    }

    internal static string TracefsRoot() =>
        Directory.Exists("/sys/kernel/tracing/instances") ? "/sys/kernel/tracing" : "/sys/kernel/debug/tracing";

    /// <summary>Per CPU, what the ring lost: overwritten (overrun, commit overrun) or not written (dropped events).</summary>
    internal static Dictionary<string, long> KernelLost(string instance)
    {
        var lost = new Dictionary<string, long>();
        foreach (string dir in Directory.GetDirectories(Path.Combine(instance, "per_cpu"), "cpu*").Order())
        {
            long n = 0;
            foreach (string line in File.ReadLines(Path.Combine(dir, "stats")))
            {
                string[] f = line.Split(':', 2);
                if (f.Length == 2 && f[0] is "overrun" or "commit overrun" or "dropped events"
                    && long.TryParse(f[1].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long v))
                    n += v;
            }
            lost[Path.GetFileName(dir)[3..]] = n;
        }
        return lost;
    }
}
