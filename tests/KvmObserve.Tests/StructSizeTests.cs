using System.Runtime.CompilerServices;
using KvmObserve.Native;
using KvmObserve.Native.Kvm;

namespace KvmObserve.Tests;

/// <summary>Each struct must match its kernel header (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h).</summary>
public class StructSizeTests
{
    [Fact]
    public void Kvm_structs_match_the_uapi_headers()
    {
        Assert.Equal(32, Unsafe.SizeOf<KvmUserspaceMemoryRegion>());
        Assert.Equal(144, Unsafe.SizeOf<KvmRegs>());
        Assert.Equal(24, Unsafe.SizeOf<KvmSegment>());
        Assert.Equal(16, Unsafe.SizeOf<KvmDtable>());
        Assert.Equal(312, Unsafe.SizeOf<KvmSregs>());
        Assert.Equal(40, Unsafe.SizeOf<KvmCpuidEntry2>());
        Assert.Equal(16, Unsafe.SizeOf<KvmMsrEntry>());
        Assert.Equal(32, Unsafe.SizeOf<KvmMsi>());
    }

    [Fact]
    public void Ioctl_numbers_match_the_kernel_encoding()
    {
        Assert.Equal(0xAE01UL, KvmIoctl.CreateVm);
        Assert.Equal(0xAE80UL, KvmIoctl.Run);
        Assert.Equal(0x4020AE46UL, KvmIoctl.SetUserMemoryRegion);
        Assert.Equal(0x8138AE83UL, KvmIoctl.GetSregs);
        Assert.Equal(0xC008AE05UL, KvmIoctl.GetSupportedCpuid);
        Assert.Equal(0x5220UL, IoctlNumber.Io('R', 0x20)); // TRACE_MMAP_IOCTL_GET_READER, include/uapi/linux/trace_mmap.h
    }
}
