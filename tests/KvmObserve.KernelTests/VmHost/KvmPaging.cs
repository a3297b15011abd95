namespace KvmObserve.KernelTests.VmHost;

/// <summary>The guest paging a VM test needs from a hardware KVM: nested (kvm_amd npt=1, kvm_intel ept=1) or shadow
/// (npt=0, ept=0), or any KVM at all. The test VM runs each kind with kvm_amd loaded to match.</summary>
public enum KvmPaging
{
    Any,
    Nested,
    Shadow,
}

public static class HostPaging
{
    /// <summary>What this host's hardware KVM uses, or null where no kvm_amd or kvm_intel is loaded (kvm_pvm, say,
    /// whose software virtualization never calls kvm_exit).</summary>
    public static KvmPaging? Current()
    {
        foreach (string p in (string[])["/sys/module/kvm_amd/parameters/npt", "/sys/module/kvm_intel/parameters/ept"])
        {
            if (File.Exists(p))
                return File.ReadAllText(p).Trim() is "Y" or "1" ? KvmPaging.Nested : KvmPaging.Shadow;
        }
        return null;
    }

    /// <summary>This host's /dev/kvm is kvm_amd's or kvm_intel's, so VM tests run here. A host whose only backend
    /// is kvm_pvm has /dev/kvm too, but no kvm_exit, kvm_entry or kvm_page_fault ever fires there: its VM tests run
    /// in the test VM, as on a host without /dev/kvm.</summary>
    public static bool HasHardwareKvm => File.Exists(Native.Kvm.KvmDevice.Node) && Current() is not null;

    /// <summary>Null when this host's KVM gives what <paramref name="paging"/> asks for, else what it lacks.</summary>
    public static string? Lacks(KvmPaging paging)
    {
        if (paging == KvmPaging.Any)
            return null;
        KvmPaging? current = Current();
        if (current is null)
            return "kvm_amd or kvm_intel (this host's KVM backend is neither, and fires no kvm_exit)";
        return current == paging ? null
            : $"KVM with {paging.ToString().ToLowerInvariant()} paging (kvm_amd npt / kvm_intel ept is {(current == KvmPaging.Nested ? "on" : "off")} here)";
    }
}
