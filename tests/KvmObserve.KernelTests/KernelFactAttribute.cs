using KvmObserve.Native.Kvm;

namespace KvmObserve.KernelTests;

/// <summary>
/// A test that needs the real kernel: root and tracefs, and /dev/kvm unless <see cref="Kvm"/> is false. Where one is
/// missing it is skipped with the reason, except under CI=true, where only KVM may be missing, and only on a kernel
/// that registered no KVM device at all (a machine without KVM); anything else missing there fails the test.
/// </summary>
public sealed class KernelFactAttribute : FactAttribute
{
    public bool Kvm
    {
        get;
        set
        {
            field = value;
            Skip = Requirements.SkipReason(value);
        }
    } = true;

    public KernelFactAttribute() => Skip = Requirements.SkipReason(kvm: true);
}

/// <summary>A <see cref="KernelFactAttribute"/> with data rows.</summary>
public sealed class KernelTheoryAttribute : TheoryAttribute
{
    public bool Kvm
    {
        get;
        set
        {
            field = value;
            Skip = Requirements.SkipReason(value);
        }
    } = true;

    public KernelTheoryAttribute() => Skip = Requirements.SkipReason(kvm: true);
}

public static class Requirements
{
    private static bool UnderCi => Environment.GetEnvironmentVariable("CI") == "true";

    /// <summary>The kernel has a KVM device (registered as the "kvm" misc device) even if no node is in /dev.</summary>
    public static bool KernelHasKvm => File.Exists(KvmDevice.Node) || KvmDevice.Registered();

    /// <summary>Null when the test must run (and fail on whatever is missing), else why it is skipped.</summary>
    public static string? SkipReason(bool kvm)
    {
        string? missing = Missing(kvm);
        if (missing is null)
            return null;
        if (!UnderCi)
            return $"needs {missing}";
        // CI runs as root with tracefs mounted: only a machine without KVM may skip, and it says so.
        return kvm && !KernelHasKvm && Missing(kvm: false) is null
            ? $"needs a VM: {KvmDevice.Problem()}"
            : null;
    }

    public static string? Missing(bool kvm = true)
    {
        if (Environment.UserName != "root")
            return "root (tracefs instances and KVM)";
        if (!Directory.Exists("/sys/kernel/tracing/events") && !Directory.Exists("/sys/kernel/debug/tracing/events"))
            return "tracefs";
        if (kvm && !File.Exists(KvmDevice.Node))
            return "/dev/kvm";
        return null;
    }
}
