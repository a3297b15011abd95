using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    [LibraryImport(Name, EntryPoint = "getppid")]
    internal static partial int Getppid();
}
