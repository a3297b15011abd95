using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    internal const int IN_CLOEXEC = 0x80000, IN_NONBLOCK = 0x800;

    [LibraryImport(Name, EntryPoint = "inotify_init1", SetLastError = true)]
    internal static partial int InotifyInit1(int flags);
}
