using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KvmObserve.Native.Kvm;

// Every struct here must match include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h of Linux 6.x;
// KvmStructSizeTests asserts each size.

/// <summary>struct kvm_userspace_memory_region (32 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmUserspaceMemoryRegion
{
    public uint Slot;
    public uint Flags;
    public ulong GuestPhysAddr;
    public ulong MemorySize;
    public ulong UserspaceAddr;
}

/// <summary>struct kvm_regs, x86 (144 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmRegs
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp;
    public ulong R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
}

/// <summary>struct kvm_segment, x86 (24 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmSegment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    public byte Type, Present, Dpl, Db, S, L, G, Avl, Unusable, Padding;
}

/// <summary>struct kvm_dtable, x86 (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmDtable
{
    public ulong Base;
    public ushort Limit;
    public ushort Padding0, Padding1, Padding2;
}

/// <summary>struct kvm_sregs, x86 (312 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmSregs
{
    public KvmSegment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public KvmDtable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer, ApicBase;
    public InterruptBitmap Bitmap;

    /// <summary>__u64 interrupt_bitmap[(KVM_NR_INTERRUPTS + 63) / 64], KVM_NR_INTERRUPTS = 256.</summary>
    [InlineArray(4)]
    public struct InterruptBitmap { private ulong _element; }
}

/// <summary>struct kvm_cpuid_entry2, x86 (40 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmCpuidEntry2
{
    public uint Function, Index, Flags, Eax, Ebx, Ecx, Edx;
    public uint Padding0, Padding1, Padding2;
}

/// <summary>struct kvm_msr_entry, x86 (16 bytes); struct kvm_msrs is an 8-byte header followed by these.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmMsrEntry
{
    public uint Index;
    public uint Reserved;
    public ulong Data;
}

/// <summary>struct kvm_msi (32 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmMsi
{
    public uint AddressLo, AddressHi, Data, Flags, DevId;
    public uint Padding0, Padding1, Padding2;
}

/// <summary>The fixed head of struct kvm_run and the exit union members the micro-VM reads.</summary>
public static class KvmRunLayout
{
    public const int ExitReasonOffset = 8;      // __u32 exit_reason
    public const int UnionOffset = 32;          // the exit-reason union starts after cr8 and apic_base
    // union member io: __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset
    public const int IoDirection = UnionOffset + 0, IoSize = UnionOffset + 1, IoPort = UnionOffset + 2;
    public const int IoCount = UnionOffset + 4, IoDataOffset = UnionOffset + 8;
    // union member mmio: __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write
    public const int MmioPhysAddr = UnionOffset + 0, MmioData = UnionOffset + 8, MmioLen = UnionOffset + 16, MmioIsWrite = UnionOffset + 20;
    // union member internal: __u32 suberror
    public const int InternalSuberror = UnionOffset + 0;
}

/// <summary>KVM_EXIT_* of include/uapi/linux/kvm.h.</summary>
public static class KvmExitReason
{
    public const uint Unknown = 0, Exception = 1, Io = 2, Hypercall = 3, Debug = 4, Hlt = 5, Mmio = 6;
    public const uint Shutdown = 8, FailEntry = 9, Intr = 10, InternalError = 17, SystemEvent = 24;
}
