using System.Runtime.InteropServices;

namespace KvmObserve.Native.Interop;

internal static partial class Libc
{
    internal const int AF_NETLINK = 16, SOCK_DGRAM = 2, SOCK_NONBLOCK = 0x800, SOCK_CLOEXEC = 0x80000;
    internal const int NETLINK_KOBJECT_UEVENT = 15;

    /// <summary>struct sockaddr_nl, include/uapi/linux/netlink.h (12 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct SockaddrNl
    {
        public ushort Family;
        public ushort Pad;
        public uint Pid;
        public uint Groups;
    }

    [LibraryImport(Name, EntryPoint = "socket", SetLastError = true)]
    internal static partial int Socket(int domain, int type, int protocol);

    [LibraryImport(Name, EntryPoint = "bind", SetLastError = true)]
    internal static unsafe partial int Bind(int fd, SockaddrNl* address, uint length);
}
