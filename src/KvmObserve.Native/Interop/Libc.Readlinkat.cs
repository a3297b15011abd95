using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    [LibraryImport(Name, EntryPoint = "readlinkat", SetLastError = true)]
    internal static unsafe partial nint Readlinkat(int dirFd, byte* path, byte* buffer, nuint size);
}
