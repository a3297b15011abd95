using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    [LibraryImport(Name, EntryPoint = "pread", SetLastError = true)]
    internal static unsafe partial nint Pread(int fd, byte* buffer, nuint count, long offset);
}
