using System.Runtime.InteropServices;
using KvmObserve.Native;
using KvmObserve.Native.Kvm;

namespace KvmObserve.Workload;

/// <summary>One KVM VM: guest memory in slot 0 at GPA 0, optionally the in-kernel irqchip (needed for halt polling).</summary>
internal sealed unsafe class MicroVm : IDisposable
{
    private readonly SafeFd _kvm;
    private readonly MappedRegion _memory;

    public MicroVm(ulong memoryBytes, bool irqchip)
    {
        KvmDevice.ThrowIfMissing();
        _kvm = Sys.Open(KvmDevice.Node, write: true);
        int version = Sys.Ioctl(_kvm, KvmIoctl.GetApiVersion, 0, "KVM_GET_API_VERSION");
        if (version != KvmIoctl.ApiVersion)
            throw new NotSupportedException($"KVM API version {version}, expected {KvmIoctl.ApiVersion}");
        VmFd = new SafeFd(Sys.Ioctl(_kvm, KvmIoctl.CreateVm, 0, "KVM_CREATE_VM"));
        VcpuMmapSize = Sys.Ioctl(_kvm, KvmIoctl.GetVcpuMmapSize, 0, "KVM_GET_VCPU_MMAP_SIZE");

        _memory = MappedRegion.Anonymous((nuint)memoryBytes, noHugePages: true);
        var region = new KvmUserspaceMemoryRegion
        {
            Slot = 0, GuestPhysAddr = 0, MemorySize = memoryBytes, UserspaceAddr = (ulong)_memory.Pointer,
        };
        Sys.Ioctl(VmFd, KvmIoctl.SetUserMemoryRegion, (nint)(&region), "KVM_SET_USER_MEMORY_REGION");
        if (irqchip)
            Sys.Ioctl(VmFd, KvmIoctl.CreateIrqchip, 0, "KVM_CREATE_IRQCHIP");
        HasIrqchip = irqchip;
        GuestLayout.Build(Memory);
        SupportedCpuid = ReadSupportedCpuid();
    }

    public SafeFd VmFd { get; }
    public int VcpuMmapSize { get; }
    public bool HasIrqchip { get; }
    public Span<byte> Memory => _memory.AsSpan();
    public byte[] SupportedCpuid { get; }

    public ulong ReadGuestU64(ulong gpa) => *(ulong*)(_memory.Pointer + gpa);

    /// <summary>KVM_GET_SUPPORTED_CPUID as a ready kvm_cpuid2 blob for KVM_SET_CPUID2.</summary>
    private byte[] ReadSupportedCpuid()
    {
        const int maxEntries = 256;
        int entrySize = Marshal.SizeOf<KvmCpuidEntry2>();
        byte[] blob = new byte[8 + maxEntries * entrySize];
        fixed (byte* p = blob)
        {
            *(uint*)p = maxEntries;
            Sys.Ioctl(_kvm, KvmIoctl.GetSupportedCpuid, (nint)p, "KVM_GET_SUPPORTED_CPUID");
        }
        return blob;
    }

    public void Dispose()
    {
        VmFd.Dispose();
        _memory.Dispose();
        _kvm.Dispose();
    }
}
