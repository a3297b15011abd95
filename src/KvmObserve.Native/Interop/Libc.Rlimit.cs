using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    internal const int RLIMIT_NOFILE = 7; // include/uapi/asm-generic/resource.h

    /// <summary>struct rlimit: two rlim_t (unsigned long).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Rlimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport(Name, EntryPoint = "getrlimit", SetLastError = true)]
    internal static unsafe partial int GetRlimit(int resource, Rlimit* limit);
}
