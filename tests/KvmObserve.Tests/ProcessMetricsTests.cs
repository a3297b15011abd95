using System.Diagnostics;
using System.Text.RegularExpressions;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Format;
using KvmObserve.Exposition;
using KvmObserve.Testing;

namespace KvmObserve.Tests;

/// <summary>The process_* families and build_info every exporter serves, checked against what this process's own
/// procfs files and limits say; and the collection success and duration of a scrape.</summary>
public sealed class ProcessMetricsTests
{
    private static Metrics Scrape(Aggregator? aggregator = null, Func<int>? failedReaders = null)
    {
        var registry = VmRegistry.WithoutProcfs();
        var w = new System.Buffers.ArrayBufferWriter<byte>();
        MetricsRenderer.Render(w, new ExpositionContext
        {
            Aggregator = aggregator ?? new Aggregator(1, registry),
            SourceName = "perf-count",
            Tracepoints = [],
            ExitReasons = ExitReasonTables.BuiltIn,
            UserspaceExitReasons = new Dictionary<long, string>(),
            FailedReaders = failedReaders ?? (static () => 0),
        });
        return Metrics.Parse(System.Text.Encoding.UTF8.GetString(w.WrittenSpan));
    }

    [Fact]
    public void Process_families_equal_what_procfs_says_of_this_process()
    {
        Metrics m = Scrape();
        int fds = Directory.GetFileSystemEntries("/proc/self/fd").Length;
        Assert.InRange(m.Sum("process_open_fds"), fds - 8, fds + 8); // the scrape's own files open and close
        string limits = File.ReadLines("/proc/self/limits").Single(l => l.StartsWith("Max open files", StringComparison.Ordinal));
        Assert.Equal(double.Parse(Regex.Split(limits.Trim(), @"\s{2,}")[1], System.Globalization.CultureInfo.InvariantCulture), m.Sum("process_max_fds"));
        double started = new DateTimeOffset(Process.GetCurrentProcess().StartTime.ToUniversalTime()).ToUnixTimeMilliseconds() / 1000.0;
        Assert.InRange(m.Sum("process_start_time_seconds"), started - 1.5, started + 1.5);
        Assert.InRange(m.Sum("process_cpu_seconds_total"), 0.01, Environment.CpuUsage.TotalTime.TotalSeconds + 0.5);
        long rss = long.Parse(File.ReadLines("/proc/self/status").Single(l => l.StartsWith("VmRSS:", StringComparison.Ordinal))
            .Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        Assert.InRange(m.Sum("process_resident_memory_bytes"), rss / 2, rss * 2);
        Assert.True(m.Sum("process_virtual_memory_bytes") > m.Sum("process_resident_memory_bytes"));
    }

    [Fact]
    public void Build_info_names_the_version_the_commit_and_the_runtime()
    {
        Metrics m = Scrape();
        var info = Assert.Single(m.Samples, s => s.Name == "kvmobserve_build_info");
        Assert.Equal(1, info.Value);
        Assert.Matches(@"^\d+\.\d+\.\d+", info.Labels["version"]);
        Assert.StartsWith(".NET ", info.Labels["runtime"], StringComparison.Ordinal);
        Assert.Equal(Environment.Version.ToString(), info.Labels["runtime"][".NET ".Length..]);
        // Built from this repository's checkout: the revision is one of its commits.
        Assert.Matches("^[0-9a-f]{40}$", info.Labels["revision"]);
        var git = Process.Start(new ProcessStartInfo("git", ["cat-file", "-t", info.Labels["revision"]])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = AppContext.BaseDirectory,
        })!;
        string type = git.StandardOutput.ReadToEnd().Trim();
        git.WaitForExit();
        Assert.Equal("commit", type);
    }

    [Theory]
    [InlineData("4242 (kvmobserve) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 12 0 123456 3000000000 25000 18446744073709551615", 3.25, 123456, 3000000000, 25000)]
    [InlineData("7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 99 4096 1 0", 0.03, 99, 4096, 1)]
    public void A_stat_line_is_read_after_the_commands_last_parenthesis(string line, double cpu, long start, long vsize, long rss)
    {
        ProcessMetrics.Stat stat = Assert.NotNull(ProcessMetrics.ParseStat(line));
        Assert.Equal(cpu, stat.CpuSeconds, 9);
        Assert.Equal(start, stat.StartTicks);
        Assert.Equal(vsize, stat.VirtualBytes);
        Assert.Equal(rss, stat.ResidentPages);
    }

    [Theory]
    [InlineData("")]
    [InlineData("7 (no close")]
    [InlineData("7 (short) S 1 2 3")]
    [InlineData("7 (x) S 1 7 7 0 -1 0 0 0 0 0 -1 2 0 0 20 0 1 0 99 4096 1 0")]
    public void A_stat_line_that_is_not_one_gives_nothing(string line) => Assert.Null(ProcessMetrics.ParseStat(line));

    [Fact]
    public void A_refresh_that_fails_fails_the_sources_collection_not_the_scrape()
    {
        var aggregator = new Aggregator(1, VmRegistry.WithoutProcfs());
        Assert.Equal(1, Scrape(aggregator).Sum("kvmobserve_collector_success", ("collector", "perf-count")));
        aggregator.AddRefresher(() => throw new KvmObserve.Native.NativeErrorException("read(counting group)", 19));
        Metrics failed = Scrape(aggregator);
        Assert.Equal(0, failed.Sum("kvmobserve_collector_success", ("collector", "perf-count")));
        Assert.Single(failed.Samples, s => s.Name == "kvmobserve_collector_duration_seconds" && s.Labels["collector"] == "perf-count");
        Assert.Contains(failed.Samples, s => s.Name == "process_open_fds"); // the rest of the scrape is served
    }

    [Fact]
    public void A_reader_that_stopped_fails_the_sources_collection() =>
        Assert.Equal(0, Scrape(failedReaders: () => 1).Sum("kvmobserve_collector_success", ("collector", "perf-count")));
}
