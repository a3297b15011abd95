using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;

namespace KvmObserve.Exposition;

/// <summary>
/// The process_* families every Prometheus exporter serves (client_golang's process collector: the same names, types
/// and units, read from the same procfs files), and kvmobserve_build_info, so dashboards and alerts written for
/// node_exporter-style targets work unchanged.
/// </summary>
public static class ProcessMetrics
{
    /// <summary>USER_HZ: the unit of /proc/PID/stat's times, 100 on every Linux ABI the agent runs on.</summary>
    private const double TicksPerSecond = 100;

    private static readonly double? StartTime = ReadStartTime();

    /// <summary>The version and the commit it was built from (the SDK puts "+COMMIT" in the informational version when
    /// built from a git checkout), and the .NET runtime: Go exporters' version, revision and goversion.</summary>
    public static (string Version, string Revision, string Runtime) Build { get; } = ReadBuild();

    /// <summary>The agent's own figures, named as before process_* existed (the shipped dashboards and rules read them).</summary>
    public static void WriteRuntime(MetricWriter w)
    {
        w.Family("kvmobserve_cpu_seconds_total", "counter", "CPU time the agent's process has used (user and system).");
        w.Begin("kvmobserve_cpu_seconds_total").Value(Environment.CpuUsage.TotalTime.TotalSeconds);
        w.Family("kvmobserve_resident_memory_bytes", "gauge", "The agent's resident memory (working set).");
        w.Begin("kvmobserve_resident_memory_bytes").Value(Environment.WorkingSet);
        w.Family("kvmobserve_gc_heap_bytes", "gauge", "Bytes of the agent's managed heap in use (GC.GetTotalMemory).");
        w.Begin("kvmobserve_gc_heap_bytes").Value(GC.GetTotalMemory(forceFullCollection: false));
        w.Family("kvmobserve_gc_collections_total", "counter", "Garbage collections of the agent's managed heap, by generation (a collection of generation 2 also counts in 0 and 1).");
        for (int generation = 0; generation <= GC.MaxGeneration; generation++)
            w.Begin("kvmobserve_gc_collections_total").Label("generation", generation).Value(GC.CollectionCount(generation));
        w.Family("kvmobserve_allocated_bytes_total", "counter", "Bytes the agent has allocated on its managed heap (the hot path allocates none).");
        w.Begin("kvmobserve_allocated_bytes_total").Value(GC.GetTotalAllocatedBytes());
    }

    public static void Write(MetricWriter w)
    {
        w.Family("kvmobserve_build_info", "gauge", "The agent's version, the commit it was built from and its .NET runtime; always 1.");
        w.Begin("kvmobserve_build_info").Label("version", Build.Version).Label("revision", Build.Revision)
            .Label("runtime", Build.Runtime).Value(1L);

        Stat? stat = ReadStat("/proc/self/stat");
        w.Family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        if (stat is { } cpu)
            w.Begin("process_cpu_seconds_total").Value(cpu.CpuSeconds);
        w.Family("process_open_fds", "gauge", "Number of open file descriptors.");
        if (CountFds("/proc/self/fd") is int open)
            w.Begin("process_open_fds").Value(open);
        w.Family("process_max_fds", "gauge", "Maximum number of open file descriptors.");
        if (MaxFds() is long max)
            w.Begin("process_max_fds").Value(max);
        w.Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
        if (stat is { } vm)
            w.Begin("process_virtual_memory_bytes").Value(vm.VirtualBytes);
        w.Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        if (stat is { } rss)
            w.Begin("process_resident_memory_bytes").Value(rss.ResidentPages * Environment.SystemPageSize);
        w.Family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
        if (StartTime is double started)
            w.Begin("process_start_time_seconds").Value(started);
    }

    /// <summary>The fields of /proc/PID/stat the families need (proc(5): utime 14, stime 15, starttime 22, vsize 23,
    /// rss 24), counted after the command's closing parenthesis, since a command may hold spaces and parentheses.</summary>
    public readonly record struct Stat(double CpuSeconds, long StartTicks, long VirtualBytes, long ResidentPages);

    public static Stat? ParseStat(string text)
    {
        int close = text.LastIndexOf(')');
        if (close < 0)
            return null;
        string[] f = text[(close + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // f[0] is field 3 (state): field N is f[N - 3].
        if (f.Length < 22 || !long.TryParse(f[11], NumberStyles.None, CultureInfo.InvariantCulture, out long utime)
            || !long.TryParse(f[12], NumberStyles.None, CultureInfo.InvariantCulture, out long stime)
            || !long.TryParse(f[19], NumberStyles.None, CultureInfo.InvariantCulture, out long start)
            || !long.TryParse(f[20], NumberStyles.None, CultureInfo.InvariantCulture, out long vsize)
            || !long.TryParse(f[21], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long rss))
            return null;
        return new Stat((utime + stime) / TicksPerSecond, start, vsize, rss);
    }

    private static Stat? ReadStat(string path)
    {
        try
        {
            return ParseStat(File.ReadAllText(path));
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static int? CountFds(string directory)
    {
        try
        {
            int n = 0;
            foreach (string _ in Directory.EnumerateFileSystemEntries(directory))
                n++;
            return n;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static long? MaxFds()
    {
        try
        {
            ulong current = KvmObserve.Native.FdLimit.Get().Current;
            return current > long.MaxValue ? long.MaxValue : (long)current;
        }
        catch (KvmObserve.Native.NativeErrorException)
        {
            return null;
        }
    }

    /// <summary>Boot time (/proc/stat btime) plus the process's start in ticks since boot, as client_golang does.</summary>
    private static double? ReadStartTime()
    {
        try
        {
            string? btime = File.ReadLines("/proc/stat").FirstOrDefault(l => l.StartsWith("btime ", StringComparison.Ordinal));
            if (btime is null || !long.TryParse(btime.AsSpan(6).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long boot)
                || ReadStat("/proc/self/stat") is not { } stat)
                return null;
            return boot + stat.StartTicks / TicksPerSecond;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static (string, string, string) ReadBuild()
    {
        string informational = typeof(ProcessMetrics).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0.0.0";
        int plus = informational.IndexOf('+');
        return plus < 0 ? (informational, "unknown", RuntimeInformation.FrameworkDescription)
            : (informational[..plus], informational[(plus + 1)..], RuntimeInformation.FrameworkDescription);
    }
}
