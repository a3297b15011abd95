namespace KvmObserve.Workload;

/// <summary>What a vCPU of the micro-VM does; several run one after the other.</summary>
[Flags]
public enum LoadMode
{
    None = 0,
    /// <summary>out %al,(%dx) to port 0x3f8 at CPL0: kvm_pio + kvm_userspace_exit (IO) each.</summary>
    Pio = 1,
    /// <summary>Stores to 0xd0000000 (no memslot): kvm_mmio + kvm_userspace_exit (MMIO) each.</summary>
    Mmio = 2,
    /// <summary>rdmsr 0x1a0 (IA32_MISC_ENABLE) and wrmsr of the value read, at CPL0: two kvm_msr each, handled in the kernel.</summary>
    Msr = 4,
    /// <summary>cpuid leaf 0 at CPL0: kvm_cpuid each.</summary>
    Cpuid = 8,
    /// <summary>sti; hlt with the in-kernel irqchip, woken by a one-shot x2APIC timer: halt polling, kvm_vcpu_wakeup.</summary>
    Hlt = 16,
    /// <summary>One store per fresh 4 KiB page at CPL3 (shadow paging): kvmmmu spte events per page.</summary>
    Touch = 32,
}
