using KvmObserve.Native;

namespace KvmObserve.Sources.Tracefs;

/// <summary>Finds tracefs: /sys/kernel/tracing, then /sys/kernel/debug/tracing; mounts it when allowed.</summary>
public static class TracefsLocator
{
    public static readonly string[] Candidates = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

    /// <summary>The mounted tracefs root, or null with the reason in <paramref name="problem"/>.</summary>
    public static string? Find(bool mountIfNeeded, out string? problem)
    {
        string mounts = File.Exists("/proc/mounts") ? File.ReadAllText("/proc/mounts") : "";
        foreach (string candidate in Candidates)
        {
            if (!IsMounted(mounts, candidate))
                continue;
            if (File.Exists(Path.Combine(candidate, "events", "header_page")))
            {
                problem = null;
                return candidate;
            }
            // Mounted, but its root-only files cannot be seen: a permission, not a missing mount.
            problem = $"tracefs at {candidate} cannot be read by this user (needs root or CAP_DAC_OVERRIDE)";
            return null;
        }
        if (!mountIfNeeded)
        {
            problem = "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)";
            return null;
        }
        string target = Candidates[0];
        try
        {
            Sys.Mount("nodev", target, "tracefs");
            problem = null;
            return target;
        }
        catch (NativeErrorException e)
        {
            problem = $"tracefs is not mounted and mounting it failed: {e.Message}";
            return null;
        }
    }

    /// <summary>Whether /proc/mounts lists a tracefs at <paramref name="path"/>.</summary>
    public static bool IsMounted(string procMounts, string path)
    {
        foreach (string line in procMounts.Split('\n'))
        {
            string[] f = line.Split(' ');
            if (f.Length >= 3 && f[1] == path && f[2] == "tracefs")
                return true;
        }
        return false;
    }
}
