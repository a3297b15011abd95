namespace KvmObserve.Native;

/// <summary>The _IO/_IOR/_IOW/_IOWR encodings of include/uapi/asm-generic/ioctl.h.</summary>
public static class IoctlNumber
{
    private const int NrShift = 0, TypeShift = 8, SizeShift = 16, DirShift = 30;
    private const uint None = 0, Write = 1, Read = 2;

    public static ulong Io(uint type, uint nr) => Encode(None, type, nr, 0);
    public static ulong Ior(uint type, uint nr, int size) => Encode(Read, type, nr, (uint)size);
    public static ulong Iow(uint type, uint nr, int size) => Encode(Write, type, nr, (uint)size);
    public static ulong Iowr(uint type, uint nr, int size) => Encode(Read | Write, type, nr, (uint)size);

    private static ulong Encode(uint dir, uint type, uint nr, uint size) =>
        (dir << DirShift) | (size << SizeShift) | (type << TypeShift) | (nr << NrShift);
}
