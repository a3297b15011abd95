using System.Buffers.Text;
using System.Globalization;

namespace KvmObserve.Aggregation.Discovery;

/// <summary>Pure parsers for the procfs files VM discovery reads; tested on fixtures.</summary>
public static class ProcfsParsers
{
    public const string KvmVmFdTarget = "anon_inode:kvm-vm";
    public const string KvmVcpuFdPrefix = "anon_inode:kvm-vcpu:";

    /// <summary>The Tgid line of /proc/TID/status: the process a thread belongs to.</summary>
    public static int? ParseTgid(string status)
    {
        foreach (string line in status.Split('\n'))
        {
            if (line.StartsWith("Tgid:", StringComparison.Ordinal) &&
                int.TryParse(line.AsSpan(5).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int tgid))
                return tgid;
        }
        return null;
    }

    /// <summary>/proc/PID/task/TID/schedstat (Documentation/scheduler/sched-stats.rst): time on the CPU (ns), time
    /// runnable but waiting for a CPU (run_delay, ns: a vCPU thread's steal as the host sees it), timeslices run.</summary>
    public static (ulong RunNs, ulong WaitNs)? ParseSchedstat(string schedstat)
    {
        string[] f = schedstat.Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (f.Length < 2
            || !ulong.TryParse(f[0], NumberStyles.None, CultureInfo.InvariantCulture, out ulong run)
            || !ulong.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out ulong wait))
            return null;
        return (run, wait);
    }

    /// <summary><see cref="ParseSchedstat(string)"/> of the bytes read from the file (no string made).</summary>
    public static (ulong RunNs, ulong WaitNs)? ParseSchedstat(ReadOnlySpan<byte> schedstat)
    {
        ReadOnlySpan<byte> rest = schedstat.TrimStart((byte)' ');
        int space = rest.IndexOf((byte)' ');
        if (space < 0 || Index64(rest[..space]) is not ulong run)
            return null;
        rest = rest[(space + 1)..].TrimStart((byte)' ');
        int end = rest.IndexOfAny((byte)' ', (byte)'\n');
        return Index64(end < 0 ? rest : rest[..end]) is ulong wait ? (run, wait) : null;
    }

    private static ulong? Index64(ReadOnlySpan<byte> digits) =>
        !digits.IsEmpty && digits.IndexOfAnyExceptInRange((byte)'0', (byte)'9') < 0
            && Utf8Parser.TryParse(digits, out ulong n, out int used) && used == digits.Length ? n : null;

    /// <summary>Field 22 (starttime) of /proc/PID/stat.</summary>
    public static ulong? ParseStartTime(string stat) => StatField(stat, 22);

    /// <summary>Field 22 (starttime) of /proc/PID/stat as the bytes read from it (no string made): counted from the
    /// last ')', as <see cref="ParseStartTime(string)"/>.</summary>
    public static ulong? ParseStartTime(ReadOnlySpan<byte> stat)
    {
        int close = stat.LastIndexOf((byte)')');
        if (close < 0)
            return null;
        ReadOnlySpan<byte> rest = stat[(close + 1)..];
        for (int field = 3; ; field++)
        {
            rest = rest.TrimStart((byte)' ');
            int end = rest.IndexOfAny((byte)' ', (byte)'\n');
            ReadOnlySpan<byte> value = end < 0 ? rest : rest[..end];
            if (value.IsEmpty)
                return null;
            if (field == 22)
                return Utf8Parser.TryParse(value, out ulong v, out int used) && used == value.Length ? v : null;
            rest = rest[value.Length..];
        }
    }

    /// <summary>Fields 14 and 15 (utime + stime) of /proc/PID/stat: the process's CPU time in clock ticks.</summary>
    public static ulong? ParseCpuTicks(string stat) =>
        StatField(stat, 14) is ulong user && StatField(stat, 15) is ulong system ? user + system : null;

    /// <summary>Numeric field <paramref name="field"/> (1-based, as proc(5) counts) of /proc/PID/stat, from field 3 on.
    /// comm (field 2) may hold spaces and ')', so fields are counted from the last ')'.</summary>
    private static ulong? StatField(string stat, int field)
    {
        int close = stat.LastIndexOf(')');
        if (close < 0)
            return null;
        string[] rest = stat[(close + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        int i = field - 3; // rest[0] is field 3 (state)
        return i >= 0 && rest.Length > i && ulong.TryParse(rest[i], NumberStyles.None, CultureInfo.InvariantCulture, out ulong v) ? v : null;
    }

    /// <summary>
    /// The vCPU index VMMs put in their vCPU thread names: QEMU "CPU 3/KVM" (as `load` names them too), Firecracker
    /// "fc_vcpu 3", crosvm "crosvm_vcpu3", cloud-hypervisor "vcpu3".
    /// </summary>
    public static int? VcpuFromThreadName(string comm)
    {
        ReadOnlySpan<char> s = comm.AsSpan().Trim();
        if (s.StartsWith("CPU ", StringComparison.Ordinal))
        {
            s = s[4..];
            int slash = s.IndexOf('/');
            if (slash < 0 || !s[(slash + 1)..].StartsWith("KVM", StringComparison.Ordinal))
                return null;
            return Index(s[..slash]);
        }
        foreach (string prefix in (ReadOnlySpan<string>)["fc_vcpu ", "crosvm_vcpu", "vcpu"])
        {
            if (s.StartsWith(prefix, StringComparison.Ordinal))
                return Index(s[prefix.Length..]);
        }
        return null;
    }

    private static int? Index(ReadOnlySpan<char> digits) =>
        int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : null;

    /// <summary>Splits /proc/PID/cmdline (NUL-separated).</summary>
    public static string[] SplitCmdline(string cmdline) => cmdline.Split('\0', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>
    /// Names a VM from its command line: QEMU's -name guest=X,... or -name X (and -uuid), `kvmobserve load`'s --name X,
    /// Firecracker's --id X, cloud-hypervisor's --api-socket and crosvm's --socket file names; otherwise comm-pid.
    /// </summary>
    public static (string Name, string Vmm, string Uuid) IdentifyVm(string[] argv, string comm, int pid)
    {
        string program = argv.Length > 0 ? Path.GetFileName(argv[0]) : comm;
        string? name = null, uuid = null;
        string vmm = comm;
        if (program.Contains("qemu", StringComparison.OrdinalIgnoreCase) || comm.StartsWith("qemu", StringComparison.Ordinal))
        {
            vmm = "qemu";
            for (int i = 0; i + 1 < argv.Length; i++)
            {
                if (argv[i] is "-name" or "--name")
                    name = QemuName(argv[i + 1]);
                else if (argv[i] is "-uuid" or "--uuid")
                    uuid = argv[i + 1];
            }
        }
        else if (IsKvmObserveLoad(argv))
        {
            vmm = "kvmobserve-load";
            name = OptionValue(argv, "--name");
        }
        else if (program.StartsWith("firecracker", StringComparison.Ordinal) || comm.StartsWith("firecracker", StringComparison.Ordinal))
        {
            vmm = "firecracker";
            name = OptionValue(argv, "--id") is { } id && id != "anonymous-instance" ? id : null; // Firecracker's default id
        }
        else if (program.StartsWith("cloud-hypervisor", StringComparison.Ordinal) || comm.StartsWith("cloud-hyperviso", StringComparison.Ordinal))
        {
            vmm = "cloud-hypervisor";
            name = SocketName(OptionValue(argv, "--api-socket")); // it has no name option; its API socket names it
        }
        else if (program.StartsWith("crosvm", StringComparison.Ordinal) || comm.StartsWith("crosvm", StringComparison.Ordinal))
        {
            vmm = "crosvm";
            name = SocketName(OptionValue(argv, "--socket") ?? OptionValue(argv, "-s"));
        }
        return (string.IsNullOrEmpty(name) ? $"{comm}-{pid}" : name, vmm, uuid ?? "");
    }

    /// <summary>"path=/run/vm/web.sock,fd=3" or "/run/vm/web.sock" gives "web".</summary>
    private static string? SocketName(string? option)
    {
        if (string.IsNullOrEmpty(option))
            return null;
        string path = option;
        foreach (string part in option.Split(','))
        {
            if (part.StartsWith("path=", StringComparison.Ordinal))
                path = part["path=".Length..];
        }
        if (path.Contains('=')) // only fd=N or other settings: no path to name it by
            return null;
        string name = Path.GetFileNameWithoutExtension(path);
        return name.Length > 0 ? name : null;
    }

    private static bool IsKvmObserveLoad(string[] argv)
    {
        bool kvmobserve = false;
        foreach (string a in argv)
        {
            if (a.Contains("kvmobserve", StringComparison.OrdinalIgnoreCase) || a.EndsWith("KvmObserve.Agent.dll", StringComparison.Ordinal))
                kvmobserve = true;
            else if (kvmobserve && a == "load")
                return true;
        }
        return false;
    }

    private static string? OptionValue(string[] argv, string option)
    {
        for (int i = 0; i < argv.Length; i++)
        {
            if (argv[i] == option && i + 1 < argv.Length)
                return argv[i + 1];
            if (argv[i].StartsWith(option + "=", StringComparison.Ordinal))
                return argv[i][(option.Length + 1)..];
        }
        return null;
    }

    /// <summary>QEMU's -name takes "guest=NAME,opt=..." or a bare "NAME[,opt=...]"; ",," is a literal comma.</summary>
    private static string QemuName(string value)
    {
        var parts = new List<string>();
        var current = new System.Text.StringBuilder();
        for (int i = 0; i < value.Length; i++)
        {
            if (value[i] == ',')
            {
                if (i + 1 < value.Length && value[i + 1] == ',') { current.Append(','); i++; continue; }
                parts.Add(current.ToString());
                current.Clear();
                continue;
            }
            current.Append(value[i]);
        }
        parts.Add(current.ToString());
        foreach (string p in parts)
        {
            if (p.StartsWith("guest=", StringComparison.Ordinal))
                return p["guest=".Length..];
        }
        return parts[0].Contains('=') ? "" : parts[0];
    }

    /// <summary>Linux x86-64 syscall number of ioctl.</summary>
    private const int SysIoctl = 16;

    /// <summary>
    /// The fd of an ioctl the thread is blocked in, from /proc/PID/task/TID/syscall ("NR ARG0 ... SP PC", args in
    /// hex); null for another syscall, "running" (the thread is on a CPU, perhaps in guest mode) or -1 (not in one).
    /// </summary>
    public static int? IoctlFd(string syscall)
    {
        string[] f = syscall.Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (f.Length < 2 || !int.TryParse(f[0], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int nr) || nr != SysIoctl)
            return null;
        ReadOnlySpan<char> arg = f[1].AsSpan();
        if (arg.StartsWith("0x", StringComparison.Ordinal))
            arg = arg[2..];
        return int.TryParse(arg, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int fd) && fd >= 0 ? fd : null;
    }

    /// <summary>N of an "anon_inode:kvm-vcpu:N" fd link.</summary>
    /// <summary><see cref="VcpuFromFdTarget(string?)"/> of a link target as the bytes readlink gave.</summary>
    public static int? VcpuFromFdTarget(ReadOnlySpan<byte> target) =>
        target.StartsWith("anon_inode:kvm-vcpu:"u8) ? Index(target["anon_inode:kvm-vcpu:"u8.Length..]) : null;

    /// <summary>A decimal number of digits only (no sign, no spaces), as <see cref="Index(ReadOnlySpan{char})"/>.</summary>
    public static int? Index(ReadOnlySpan<byte> digits) => Index64(digits) is ulong n && n <= int.MaxValue ? (int)n : null;

    /// <summary>Whether a link target (bytes) is a VM's fd, <see cref="KvmVmFdTarget"/>.</summary>
    public static bool IsVmFdTarget(ReadOnlySpan<byte> target) => target.SequenceEqual("anon_inode:kvm-vm"u8);

    public static int? VcpuFromFdTarget(string? target) =>
        target is not null && target.StartsWith(KvmVcpuFdPrefix, StringComparison.Ordinal) ? Index(target.AsSpan(KvmVcpuFdPrefix.Length)) : null;

    /// <summary>
    /// The pod UID in a process's /proc/PID/cgroup when it runs in a Kubernetes pod: "…/kubepods-burstable-pod&lt;uid&gt;.slice/…"
    /// (systemd driver, '-' in the UID written as '_') or "…/kubepods/burstable/pod&lt;uid&gt;/…" (cgroupfs driver), v1 or v2.
    /// </summary>
    public static string? KubernetesPodUid(string cgroup)
    {
        foreach (string line in cgroup.Split('\n'))
        {
            int kubepods = line.IndexOf("kubepods", StringComparison.Ordinal);
            if (kubepods < 0)
                continue;
            foreach (string segment in line[kubepods..].Split('/'))
            {
                int pod = segment.LastIndexOf("pod", StringComparison.Ordinal);
                if (pod < 0)
                    continue;
                string uid = segment[(pod + 3)..];
                if (uid.EndsWith(".slice", StringComparison.Ordinal))
                    uid = uid[..^".slice".Length];
                uid = uid.Replace('_', '-');
                if (Guid.TryParseExact(uid, "D", out _))
                    return uid;
            }
        }
        return null;
    }

    /// <summary>KubeVirt's libvirt domain "NAMESPACE_VMI" as the vm label "NAMESPACE/VMI" and the namespace; another
    /// name is kept, with no namespace.</summary>
    public static (string Name, string Namespace) KubeVirtName(string domain)
    {
        int underscore = domain.IndexOf('_');
        if (underscore <= 0 || underscore == domain.Length - 1)
            return (domain, "");
        string ns = domain[..underscore];
        return ($"{ns}/{domain[(underscore + 1)..]}", ns);
    }
}
