using System.Runtime.InteropServices;
using KvmObserve.Native.Interop;

namespace KvmObserve.Native;

/// <summary>Owns one Linux file descriptor; closing is guaranteed by the SafeHandle machinery even on a crash path.</summary>
public sealed class SafeFd : SafeHandle
{
    public SafeFd() : base(new nint(-1), ownsHandle: true) { }

    public SafeFd(int fd) : base(new nint(-1), ownsHandle: true) => SetHandle(fd);

    public override bool IsInvalid => handle == -1;

    /// <summary>The raw descriptor number, valid while this handle is alive.</summary>
    public int Value => (int)handle;

    protected override bool ReleaseHandle() => Libc.Close((int)handle) == 0;
}
