using System.Globalization;

namespace KvmObserve.Agent.Hosting;

internal static class CpuTopology
{
    /// <summary>Highest possible CPU id + 1, from /sys/devices/system/cpu/possible ("0-1", "0-3,8-11").</summary>
    public static int PossibleCpus()
    {
        const string path = "/sys/devices/system/cpu/possible";
        if (!File.Exists(path))
            return Environment.ProcessorCount;
        int max = 0;
        foreach (string range in File.ReadAllText(path).Trim().Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            string last = range.Contains('-') ? range[(range.IndexOf('-') + 1)..] : range;
            max = Math.Max(max, int.Parse(last, NumberStyles.None, CultureInfo.InvariantCulture));
        }
        return max + 1;
    }
}
