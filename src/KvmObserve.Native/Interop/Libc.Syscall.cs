using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    // arch/x86/entry/syscalls/syscall_64.tbl
    internal const long SYS_perf_event_open = 298;
    internal const long SYS_bpf = 321;
    internal const long SYS_pidfd_open = 434;

    [LibraryImport(Name, EntryPoint = "syscall", SetLastError = true)]
    internal static partial long Syscall(long number, nint a1, nint a2, nint a3, nint a4, nint a5);
}
