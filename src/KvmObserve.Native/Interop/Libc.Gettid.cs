using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    [LibraryImport(Name, EntryPoint = "gettid")]
    internal static partial int Gettid();
}
