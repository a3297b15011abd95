using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    internal const int PRIO_PROCESS = 0;

    /// <summary>With PRIO_PROCESS and a thread id, Linux sets that one thread's nice value.</summary>
    [LibraryImport(Name, EntryPoint = "setpriority", SetLastError = true)]
    internal static partial int SetPriority(int which, uint who, int prio);
}
