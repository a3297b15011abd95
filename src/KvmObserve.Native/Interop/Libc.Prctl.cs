using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    internal const int PR_SET_NAME = 15;
    internal const int PR_SET_PDEATHSIG = 1;

    [LibraryImport(Name, EntryPoint = "prctl", SetLastError = true)]
    internal static partial int Prctl(int option, nint arg2, nint arg3, nint arg4, nint arg5);
}
