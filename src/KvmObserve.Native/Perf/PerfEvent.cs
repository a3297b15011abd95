using System.Runtime.InteropServices;
using System.Text;
using KvmObserve.Native.Interop;

namespace KvmObserve.Native.Perf;

/// <summary>perf_event_open(2) and the ioctls on its fds. Every fd comes back in a <see cref="SafeFd"/>, opened with
/// PERF_FLAG_FD_CLOEXEC, so nothing outlives the process however it ends.</summary>
public static unsafe class PerfEvent
{
    /// <summary>Opens an event; returns the fd, or null with <paramref name="errno"/> set.</summary>
    /// <param name="pid">A thread id, or -1 for every thread of <paramref name="cpu"/>.</param>
    /// <param name="cpu">A CPU, or -1 for every CPU the thread runs on.</param>
    public static SafeFd? TryOpen(in PerfEventAttr attr, int pid, int cpu, SafeFd? group, out int errno)
    {
        PerfEventAttr copy = attr;
        copy.AttrSize = PerfEventAttr.Size;
        long fd = Libc.Syscall(Libc.SYS_perf_event_open, (nint)(&copy), pid, cpu, group?.Value ?? -1,
            (nint)PerfConstants.FlagFdCloexec);
        if (fd < 0)
        {
            errno = Marshal.GetLastPInvokeError();
            return null;
        }
        errno = 0;
        return new SafeFd((int)fd);
    }

    public static SafeFd Open(in PerfEventAttr attr, int pid, int cpu, SafeFd? group, string what) =>
        TryOpen(attr, pid, cpu, group, out int errno) ?? throw new NativeErrorException($"perf_event_open({what})", errno);

    /// <summary>Sets an ftrace filter ("exit_reason == 30") on a tracepoint event; returns 0 or -errno.</summary>
    public static int TrySetFilter(SafeFd fd, string filter)
    {
        int length = Encoding.ASCII.GetByteCount(filter);
        byte* text = stackalloc byte[length + 1];
        Encoding.ASCII.GetBytes(filter, new Span<byte>(text, length));
        text[length] = 0;
        return Sys.TryIoctl(fd, PerfConstants.IocSetFilter, (nint)text);
    }

    /// <summary>Sends <paramref name="fd"/>'s records into <paramref name="target"/>'s ring (same CPU).</summary>
    public static void SetOutput(SafeFd fd, SafeFd target) =>
        Sys.Ioctl(fd, PerfConstants.IocSetOutput, target.Value, "PERF_EVENT_IOC_SET_OUTPUT");

    public static void Enable(SafeFd fd) => Sys.Ioctl(fd, PerfConstants.IocEnable, 0, "PERF_EVENT_IOC_ENABLE");

    /// <summary>Disables the event; a closed or dying fd is not an error here (stop paths call this).</summary>
    public static void Disable(SafeFd fd) => Sys.TryIoctl(fd, PerfConstants.IocDisable, 0);

    /// <summary>read(2) of the event's counter block into <paramref name="buffer"/>; returns bytes or -errno.</summary>
    public static int TryRead(SafeFd fd, Span<byte> buffer) => Sys.TryRead(fd, buffer);
}
