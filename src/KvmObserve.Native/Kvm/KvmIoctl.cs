using System.Runtime.CompilerServices;

namespace KvmObserve.Native.Kvm;

/// <summary>KVM ioctl numbers, include/uapi/linux/kvm.h (KVMIO = 0xAE).</summary>
public static class KvmIoctl
{
    private const uint Kvmio = 0xAE;

    public static readonly ulong GetApiVersion = IoctlNumber.Io(Kvmio, 0x00);
    public static readonly ulong CreateVm = IoctlNumber.Io(Kvmio, 0x01);
    public static readonly ulong CheckExtension = IoctlNumber.Io(Kvmio, 0x03);
    public static readonly ulong GetVcpuMmapSize = IoctlNumber.Io(Kvmio, 0x04);
    public static readonly ulong GetSupportedCpuid = IoctlNumber.Iowr(Kvmio, 0x05, 8);
    public static readonly ulong CreateVcpu = IoctlNumber.Io(Kvmio, 0x41);
    public static readonly ulong SetUserMemoryRegion =
        IoctlNumber.Iow(Kvmio, 0x46, Unsafe.SizeOf<KvmUserspaceMemoryRegion>());
    public static readonly ulong CreateIrqchip = IoctlNumber.Io(Kvmio, 0x60);
    public static readonly ulong Run = IoctlNumber.Io(Kvmio, 0x80);
    public static readonly ulong GetRegs = IoctlNumber.Ior(Kvmio, 0x81, Unsafe.SizeOf<KvmRegs>());
    public static readonly ulong SetRegs = IoctlNumber.Iow(Kvmio, 0x82, Unsafe.SizeOf<KvmRegs>());
    public static readonly ulong GetSregs = IoctlNumber.Ior(Kvmio, 0x83, Unsafe.SizeOf<KvmSregs>());
    public static readonly ulong SetSregs = IoctlNumber.Iow(Kvmio, 0x84, Unsafe.SizeOf<KvmSregs>());
    public static readonly ulong SetMsrs = IoctlNumber.Iow(Kvmio, 0x89, 8);
    public static readonly ulong GetLapic = IoctlNumber.Ior(Kvmio, 0x8e, LapicStateSize);
    public static readonly ulong SetLapic = IoctlNumber.Iow(Kvmio, 0x8f, LapicStateSize);
    public static readonly ulong SetMpState = IoctlNumber.Iow(Kvmio, 0x99, sizeof(uint)); // struct kvm_mp_state
    public static readonly ulong SetCpuid2 = IoctlNumber.Iow(Kvmio, 0x90, 8);
    public static readonly ulong SignalMsi = IoctlNumber.Iow(Kvmio, 0xa5, Unsafe.SizeOf<KvmMsi>());

    /// <summary>sizeof(struct kvm_lapic_state): char regs[KVM_APIC_REG_SIZE = 0x400].</summary>
    public const int LapicStateSize = 0x400;

    public const int ApiVersion = 12;

    /// <summary>KVM_MP_STATE_RUNNABLE: with an in-kernel irqchip, vCPUs other than 0 otherwise wait for INIT/SIPI.</summary>
    public const uint MpStateRunnable = 0;
}
