using System.Globalization;
using System.Runtime.InteropServices;
using KvmObserve.Native.Interop;

namespace KvmObserve.Native.Kvm;

/// <summary>
/// The uevents KVM sends as each VM is created (virt/kvm/kvm_main.c, kvm_uevent_notify_change: "EVENT=create" with the
/// creating process's "PID=N"), read from the kernel's uevent netlink group. The agent learns a VM from it while its
/// process is certainly alive, in its KVM_CREATE_VM call: a VM that lives less than a discovery interval would
/// otherwise be gone, name and threads, before procfs was looked at.
/// </summary>
public sealed class KvmUevents : IDisposable
{
    private readonly SafeFd _socket;
    private readonly byte[] _buffer = new byte[8192];

    private KvmUevents(SafeFd socket) => _socket = socket;

    /// <summary>A non-blocking listener, or null with errno (EPERM without CAP_NET_ADMIN in a user namespace, or no
    /// netlink at all).</summary>
    public static unsafe KvmUevents? TryOpen(out int errno)
    {
        int fd = Libc.Socket(Libc.AF_NETLINK, Libc.SOCK_DGRAM | Libc.SOCK_NONBLOCK | Libc.SOCK_CLOEXEC, Libc.NETLINK_KOBJECT_UEVENT);
        if (fd < 0)
        {
            errno = Marshal.GetLastPInvokeError();
            return null;
        }
        var socket = new SafeFd(fd);
        // Group 1 is the kernel's own broadcast (udevd re-sends to group 2, in its own format).
        var address = new Libc.SockaddrNl { Family = Libc.AF_NETLINK, Groups = 1 };
        if (Libc.Bind(fd, &address, (uint)sizeof(Libc.SockaddrNl)) != 0)
        {
            errno = Marshal.GetLastPInvokeError();
            socket.Dispose();
            return null;
        }
        errno = 0;
        return new KvmUevents(socket);
    }

    /// <summary>Waits up to <paramref name="timeoutMilliseconds"/> for a uevent or for <paramref name="wake"/>; 2 when
    /// woken, else 1 or 0 (read with <see cref="ReadCreated"/> either way).</summary>
    public int Wait(SafeFd wake, int timeoutMilliseconds) => Sys.PollReadable(_socket, wake, timeoutMilliseconds);

    /// <summary>Adds the pid of each VM created since the last call to <paramref name="pids"/>; false when the kernel
    /// dropped uevents for want of room (ENOBUFS): the caller should then look at procfs at once.</summary>
    public bool ReadCreated(List<int> pids)
    {
        bool complete = true;
        while (true)
        {
            int n = Sys.TryRead(_socket, _buffer);
            if (n == -Errno.ENOBUFS)
            {
                complete = false;
                continue;
            }
            if (n <= 0)
                return complete;
            if (TryParseCreated(_buffer.AsSpan(0, n)) is int pid)
                pids.Add(pid);
        }
    }

    /// <summary>The PID of a kvm device's "EVENT=create" uevent: "change@/devices/virtual/misc/kvm", then
    /// NUL-separated KEY=VALUE pairs. Null for any other message.</summary>
    public static int? TryParseCreated(ReadOnlySpan<byte> message)
    {
        bool kvm = false, create = false;
        int? pid = null;
        int i = 0;
        while (i < message.Length)
        {
            int end = message[i..].IndexOf((byte)0);
            ReadOnlySpan<byte> field = end < 0 ? message[i..] : message.Slice(i, end);
            i += end < 0 ? message.Length : end + 1;
            if (field.StartsWith("DEVPATH="u8))
                kvm = field.EndsWith("/misc/kvm"u8);
            else if (field.SequenceEqual("EVENT=create"u8))
                create = true;
            else if (field.StartsWith("PID="u8) && int.TryParse(field[4..], NumberStyles.None, CultureInfo.InvariantCulture, out int p) && p > 0)
                pid = p;
        }
        return kvm && create ? pid : null;
    }

    public void Dispose() => _socket.Dispose();
}
