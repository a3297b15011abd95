using System.Globalization;

namespace KvmObserve.Workload;

/// <summary>`load --cgroup DIR`: a cgroup v2 directory per VM below DIR, as libvirt makes a scope per VM under
/// machine.slice (and KubeVirt a pod, systemd-run a unit).</summary>
public static class VmCgroup
{
    /// <summary>Creates DIR/kvmobserve-load-NAME and returns its path; DIR must be a directory of a cgroup v2 mount.</summary>
    public static string Create(string parent, string name)
    {
        if (!File.Exists(Path.Combine(parent, "cgroup.controllers")))
            throw new InvalidOperationException($"--cgroup: {parent} is not a cgroup v2 directory (no cgroup.controllers; cgroup2 is mounted at /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)");
        string path = Path.Combine(parent, "kvmobserve-load-" + string.Concat(name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_')));
        Directory.CreateDirectory(path);
        return path;
    }

    /// <summary>Moves the calling process (every thread of it) into <paramref name="path"/>.</summary>
    public static void Enter(string path)
    {
        try
        {
            File.WriteAllText(Path.Combine(path, "cgroup.procs"), Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        }
        catch (IOException e)
        {
            throw new InvalidOperationException($"--cgroup: cannot move the VM's process into {path}: {e.Message}");
        }
    }

    /// <summary>This process's cgroup v2 path (the "0::" line of /proc/self/cgroup), "" without one.</summary>
    public static string OfSelf()
    {
        foreach (string line in File.ReadLines("/proc/self/cgroup"))
        {
            if (line.StartsWith("0::", StringComparison.Ordinal))
                return line[3..];
        }
        return "";
    }

    /// <summary>Removes a VM's cgroup once its process has exited (the kernel empties it a moment after).</summary>
    public static void Remove(string path)
    {
        for (int attempt = 0; attempt < 100 && Directory.Exists(path); attempt++)
        {
            try
            {
                Directory.Delete(path);
            }
            catch (IOException)
            {
                Thread.Sleep(20); // still populated (EBUSY) for a moment after the exit
            }
        }
    }
}
