using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    // struct stat on x86-64 (arch/x86/include/uapi/asm/stat.h): st_nlink at 16, st_size at 48, st_mtim at 88, 144 bytes in all
    internal const int StatSize = 144, StatNlinkOffset = 16, StatSizeOffset = 48, StatMtimeOffset = 88;

    [LibraryImport(Name, EntryPoint = "stat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static unsafe partial int Stat(string path, byte* buffer);
}
