using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    // struct linux_dirent64 (include/linux/dirent.h): d_ino u64, d_off s64, d_reclen u16 at 16, d_type u8 at 18,
    // d_name NUL-terminated at 19
    internal const int DirentReclenOffset = 16, DirentNameOffset = 19;

    [LibraryImport(Name, EntryPoint = "getdents64", SetLastError = true)]
    internal static unsafe partial nint Getdents64(int fd, byte* buffer, nuint count);
}
