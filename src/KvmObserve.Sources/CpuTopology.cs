using System.Globalization;

namespace KvmObserve.Sources;

/// <summary>The CPUs of this machine, from /sys/devices/system/cpu/{possible,online}.</summary>
public static class CpuTopology
{
    /// <summary>Highest possible CPU id + 1: how many per-CPU shards the aggregator needs.</summary>
    public static int PossibleCpus()
    {
        IReadOnlyList<int> possible = ReadList("/sys/devices/system/cpu/possible");
        return possible.Count == 0 ? Environment.ProcessorCount : possible.Max() + 1;
    }

    /// <summary>The CPUs online now: where per-CPU perf events can be opened.</summary>
    public static IReadOnlyList<int> OnlineCpus()
    {
        IReadOnlyList<int> online = ReadList("/sys/devices/system/cpu/online");
        return online.Count == 0 ? Enumerable.Range(0, Environment.ProcessorCount).ToList() : online;
    }

    private static IReadOnlyList<int> ReadList(string path) => File.Exists(path) ? ParseList(File.ReadAllText(path)) : [];

    /// <summary>Parses the kernel's CPU list format: "0-1", "0-3,8-11", "5".</summary>
    public static IReadOnlyList<int> ParseList(string text)
    {
        var cpus = new List<int>();
        foreach (string range in text.Trim().Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int dash = range.IndexOf('-');
            int first = int.Parse(dash < 0 ? range : range[..dash], NumberStyles.None, CultureInfo.InvariantCulture);
            int last = dash < 0 ? first : int.Parse(range[(dash + 1)..], NumberStyles.None, CultureInfo.InvariantCulture);
            for (int c = first; c <= last; c++)
                cpus.Add(c);
        }
        return cpus;
    }
}
