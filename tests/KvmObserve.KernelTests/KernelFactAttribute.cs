using KvmObserve.KernelTests.VmHost;
using KvmObserve.Native.Kvm;
using Xunit.Sdk;

namespace KvmObserve.KernelTests;

/// <summary>
/// A test that needs the real kernel: root and tracefs, and a VM unless <see cref="Kvm"/> is false. A test that needs a
/// VM runs here where this host has /dev/kvm, and in the test VM (tests/vmhost/: kvm_amd in QEMU) where it has none.
/// Where something is missing the test is skipped with the reason, except under CI=true, where it fails.
/// </summary>
[XunitTestCaseDiscoverer("KvmObserve.KernelTests.VmHost.KernelFactDiscoverer", "KvmObserve.KernelTests")]
public sealed class KernelFactAttribute : FactAttribute
{
    public bool Kvm
    {
        get;
        set
        {
            field = value;
            Skip = Requirements.SkipReason(value, Paging);
        }
    } = true;

    /// <summary>The guest paging the test needs of a hardware KVM (<see cref="KvmPaging.Any"/>: any KVM).</summary>
    public KvmPaging Paging
    {
        get;
        set
        {
            field = value;
            Skip = Requirements.SkipReason(Kvm, value);
        }
    }

    /// <summary>The test reads tracefs ring buffers through their memory map, which kernels before 6.10 lack: a true
    /// lack where the test runs (the test VM's kernel is 6.1), skipped with the reason even under CI.</summary>
    public bool RingMmap
    {
        get;
        set
        {
            field = value;
            Skip = Requirements.SkipReason(Kvm, Paging) ?? (value && (HostPaging.HasHardwareKvm || !Kvm) ? Requirements.RingMmapLacking() : null);
        }
    }

    public KernelFactAttribute() => Skip = Requirements.SkipReason(kvm: true, KvmPaging.Any);
}

/// <summary>A <see cref="KernelFactAttribute"/> with data rows.</summary>
[XunitTestCaseDiscoverer("KvmObserve.KernelTests.VmHost.KernelTheoryDiscoverer", "KvmObserve.KernelTests")]
public sealed class KernelTheoryAttribute : TheoryAttribute
{
    public bool Kvm
    {
        get;
        set
        {
            field = value;
            Skip = Requirements.SkipReason(value, Paging);
        }
    } = true;

    /// <inheritdoc cref="KernelFactAttribute.Paging"/>
    public KvmPaging Paging
    {
        get;
        set
        {
            field = value;
            Skip = Requirements.SkipReason(Kvm, value);
        }
    }

    public KernelTheoryAttribute() => Skip = Requirements.SkipReason(kvm: true, KvmPaging.Any);
}

public static class Requirements
{
    private static bool UnderCi => Environment.GetEnvironmentVariable("CI") == "true";

    /// <summary>KVMOBSERVE_TEST_VM=off: VM tests skip where this host has no /dev/kvm, instead of booting the test VM
    /// (a quick local run; CI ignores it).</summary>
    private static bool TestVmOff => Environment.GetEnvironmentVariable("KVMOBSERVE_TEST_VM") == "off";

    /// <summary>Null when the test must run (and fail on whatever is missing), else why it is skipped.</summary>
    public static string? SkipReason(bool kvm, KvmPaging paging)
    {
        string? missing = Missing(kvm, paging);
        if (missing is null)
            return null;
        // A KVM that pages otherwise cannot be changed by a test (kvm_amd's npt is set at load): a true lack, said.
        if (kvm && HostPaging.HasHardwareKvm && HostPaging.Lacks(paging) is not null)
            return $"needs {missing}";
        return UnderCi ? null : $"needs {missing}";
    }

    /// <summary>Whether this kernel maps tracefs ring buffers (6.10+); null when it does, else why not.</summary>
    public static string? RingMmapLacking() => Environment.OSVersion.Version < new Version(6, 10)
        ? $"the tracefs ring-buffer memory map (Linux 6.10+; this kernel is {Environment.OSVersion.Version})" : null;

    /// <summary>What this host lacks for the test, or null. A VM test lacks nothing where the test VM can boot.</summary>
    public static string? Missing(bool kvm = true, KvmPaging paging = KvmPaging.Any)
    {
        if (Environment.UserName != "root")
            return "root (tracefs instances and KVM)";
        if (!Directory.Exists("/sys/kernel/tracing/events") && !Directory.Exists("/sys/kernel/debug/tracing/events"))
            return "tracefs";
        if (!kvm)
            return null;
        if (HostPaging.HasHardwareKvm)
            return HostPaging.Lacks(paging);
        string here = KvmDevice.Problem() ?? $"{KvmDevice.Node} is neither kvm_amd's nor kvm_intel's (kvm_pvm fires no kvm_exit)";
        if (TestVmOff && !UnderCi)
            return $"a VM: {here}, and the test VM is off (KVMOBSERVE_TEST_VM=off)";
        return TestVm.CannotBoot() is string why ? $"a VM: {here}, and the test VM needs {why}" : null;
    }
}
