using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    // ioctl(2) is variadic in C; on x86-64 SysV a pointer or integer third argument travels in the same register,
    // so one nint-typed import serves both "argument is a value" and "argument is a pointer".
    [LibraryImport(Name, EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int Ioctl(int fd, nuint request, nint argument);
}
