using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace KvmObserve.Aggregation.Discovery;

/// <summary>stat(2) of a process's fd directory: on Linux 6.2 and later its size is the number of open fds. With its
/// mtime, a cheap sign that a process opened or closed something since it was last looked at.</summary>
internal static unsafe partial class FdDirStat
{
    private const int StatSize = 144, SizeOffset = 48, MtimeOffset = 88; // struct stat on x86-64

    [LibraryImport("libc", EntryPoint = "stat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Stat(string path, byte* buffer);

    /// <summary>(size, mtime in ns) of <paramref name="path"/>, or null when it cannot be read.</summary>
    public static (long Size, long MtimeNs)? Of(string path)
    {
        byte* buffer = stackalloc byte[StatSize];
        if (Stat(path, buffer) != 0)
            return null;
        var s = new ReadOnlySpan<byte>(buffer, StatSize);
        return (BinaryPrimitives.ReadInt64LittleEndian(s[SizeOffset..]),
            BinaryPrimitives.ReadInt64LittleEndian(s[MtimeOffset..]) * 1_000_000_000 + BinaryPrimitives.ReadInt64LittleEndian(s[(MtimeOffset + 8)..]));
    }
}
