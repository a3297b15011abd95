namespace KvmObserve.Native.Interop;

/// <summary>P/Invoke declarations into the C library, one native call per file (Libc.*.cs).</summary>
internal static partial class Libc
{
    internal const string Name = "libc";
}
