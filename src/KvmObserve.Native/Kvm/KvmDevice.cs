namespace KvmObserve.Native.Kvm;

/// <summary>Whether VMs can run on this host: the KVM device node, and when it is missing, why.</summary>
public static class KvmDevice
{
    public const string Node = "/dev/kvm";

    /// <summary>Null when <paramref name="node"/> exists; otherwise one line that says why no VM can run here. The
    /// kernel registers its KVM device as the misc device "kvm" (sysfs class/misc/kvm, whose dev file holds
    /// major:minor) once a backend (kvm_intel, kvm_amd, kvm_pvm) has bound: with it, only the node is missing; without
    /// it, no backend bound (no vmx/svm, the module not loaded, or a kernel that is itself a guest without nested
    /// virtualization, which kvm_pvm declines to bind in).</summary>
    public static string? Problem(string node = Node, string sysRoot = "/sys")
    {
        if (File.Exists(node))
            return null;
        string misc = MiscDir(sysRoot);
        if (Directory.Exists(misc))
        {
            string dev = File.Exists(Path.Combine(misc, "dev")) ? File.ReadAllText(Path.Combine(misc, "dev")).Trim() : "";
            string[] numbers = dev.Split(':');
            string mknod = numbers.Length == 2 ? $"mknod {node} c {numbers[0]} {numbers[1]}" : "mknod";
            return $"{node} is absent, but the kernel has a KVM device ({(dev.Length > 0 ? dev : "misc kvm")}): create the node ({mknod})";
        }
        return $"{node} is absent and the kernel registered no KVM device (no {misc}): no KVM backend bound here "
            + "(no vmx/svm, its module not loaded, or this kernel is itself a guest without nested virtualization), so no VM can run";
    }

    /// <summary>The kernel registered a KVM device, whether or not its node is in /dev.</summary>
    public static bool Registered(string sysRoot = "/sys") => Directory.Exists(MiscDir(sysRoot));

    /// <summary>Throws <see cref="Problem"/> as an InvalidOperationException: for a command that is about to run VMs,
    /// before it starts anything else.</summary>
    public static void ThrowIfMissing()
    {
        if (Problem() is string missing)
            throw new InvalidOperationException(missing);
    }

    private static string MiscDir(string sysRoot) => Path.Combine(sysRoot, "class", "misc", "kvm");
}
