using System.Runtime.InteropServices;
using KvmObserve.Native.Interop;

namespace KvmObserve.Native;

/// <summary>An mmap(2) mapping, unmapped when disposed or finalized.</summary>
public sealed unsafe class MappedRegion : SafeHandle
{
    private MappedRegion(nint address, nuint length) : base(Libc.MAP_FAILED, ownsHandle: true)
    {
        SetHandle(address);
        Length = length;
    }

    public nuint Length { get; }

    public byte* Pointer => (byte*)handle;

    public override bool IsInvalid => handle == Libc.MAP_FAILED || handle == 0;

    public Span<byte> AsSpan() => new((void*)handle, checked((int)Length));

    /// <summary>Private anonymous memory, e.g. guest RAM for the micro-VM.</summary>
    public static MappedRegion Anonymous(nuint length, bool noHugePages)
    {
        nint address = Libc.Mmap(0, length, Libc.PROT_READ | Libc.PROT_WRITE,
            Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);
        if (address == Libc.MAP_FAILED)
            throw NativeErrorException.FromLastError($"mmap(anonymous, {length} bytes)");
        if (noHugePages)
            Libc.Madvise(address, length, Libc.MADV_NOHUGEPAGE);
        return new MappedRegion(address, length);
    }

    /// <summary>A shared mapping of a file descriptor (e.g. a vCPU's struct kvm_run).</summary>
    public static MappedRegion Shared(SafeFd fd, nuint length, bool writable, long offset = 0)
    {
        int protection = Libc.PROT_READ | (writable ? Libc.PROT_WRITE : 0);
        nint address = Libc.Mmap(0, length, protection, Libc.MAP_SHARED, fd.Value, offset);
        if (address == Libc.MAP_FAILED)
            throw NativeErrorException.FromLastError($"mmap(fd {fd.Value}, {length} bytes)");
        return new MappedRegion(address, length);
    }

    protected override bool ReleaseHandle() => Libc.Munmap(handle, Length) == 0;
}
