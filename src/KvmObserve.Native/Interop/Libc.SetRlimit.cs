using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    [LibraryImport(Name, EntryPoint = "setrlimit", SetLastError = true)]
    internal static unsafe partial int SetRlimit(int resource, Rlimit* limit);
}
