using System.Buffers.Binary;
using System.Runtime.InteropServices;
using KvmObserve.Native.Interop;

namespace KvmObserve.Native;

/// <summary>
/// The system calls the other stages use, with errno turned into <see cref="NativeErrorException"/>.
/// Methods named Try* return the errno instead of throwing, for callers on a loop that expects EAGAIN or EINTR.
/// </summary>
public static unsafe class Sys
{
    public static SafeFd Open(string path, bool write = false, bool nonBlocking = false)
    {
        int flags = (write ? Libc.O_RDWR : Libc.O_RDONLY) | Libc.O_CLOEXEC | (nonBlocking ? Libc.O_NONBLOCK : 0);
        int fd = Libc.Open(path, flags, 0);
        if (fd < 0)
            throw NativeErrorException.FromLastError($"open({path})");
        return new SafeFd(fd);
    }

    /// <summary>read(2) into <paramref name="buffer"/>; returns bytes read (0 = end of file) or -errno.</summary>
    public static int TryRead(SafeFd fd, Span<byte> buffer)
    {
        while (true)
        {
            nint n;
            fixed (byte* p = buffer)
                n = Libc.Read(fd.Value, p, (nuint)buffer.Length);
            if (n >= 0)
                return (int)n;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Errno.EINTR)
                return -errno;
        }
    }

    public static void Write(SafeFd fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            if (Libc.Write(fd.Value, p, (nuint)data.Length) < 0)
                throw NativeErrorException.FromLastError("write");
        }
    }

    /// <summary>ioctl(2) with a value or pointer argument; returns the kernel's non-negative result.</summary>
    public static int Ioctl(SafeFd fd, ulong request, nint argument, string what)
    {
        int r = TryIoctl(fd, request, argument);
        if (r < 0)
            throw new NativeErrorException(what, -r);
        return r;
    }

    /// <summary>ioctl(2); returns the result, or -errno (EINTR retried).</summary>
    public static int TryIoctl(SafeFd fd, ulong request, nint argument)
    {
        while (true)
        {
            int r = Libc.Ioctl(fd.Value, (nuint)request, argument);
            if (r >= 0)
                return r;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Errno.EINTR)
                return -errno;
        }
    }

    /// <summary>(size, mtime in ns, link count) of <paramref name="path"/> by stat(2), or null when it cannot be read.
    /// In procfs a process's fd directory has its open fds as its size (Linux 6.2+), and its task directory its thread
    /// count plus 2 as its link count.</summary>
    public static (long Size, long MtimeNs, long Links)? TryStat(string path)
    {
        byte* buffer = stackalloc byte[Libc.StatSize];
        if (Libc.Stat(path, buffer) != 0)
            return null;
        var s = new ReadOnlySpan<byte>(buffer, Libc.StatSize);
        return (BinaryPrimitives.ReadInt64LittleEndian(s[Libc.StatSizeOffset..]),
            BinaryPrimitives.ReadInt64LittleEndian(s[Libc.StatMtimeOffset..]) * 1_000_000_000
            + BinaryPrimitives.ReadInt64LittleEndian(s[(Libc.StatMtimeOffset + 8)..]),
            BinaryPrimitives.ReadInt64LittleEndian(s[Libc.StatNlinkOffset..]));
    }

    /// <summary>Reads a small file (a procfs stat) into <paramref name="buffer"/> with one open, one read(2) and a
    /// close, no allocation: its length (cut at the buffer's), or -1 when it cannot be opened or read (a process gone).
    /// procfs fills one read with the whole of such a file.</summary>
    public static int TryReadSmallFile(string path, Span<byte> buffer)
    {
        int fd = Libc.Open(path, Libc.O_RDONLY | Libc.O_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        try
        {
            nint n;
            fixed (byte* p = buffer)
                n = Libc.Read(fd, p, (nuint)buffer.Length);
            return n < 0 ? -1 : (int)n;
        }
        finally
        {
            Libc.Close(fd);
        }
    }

    /// <summary>Sends <paramref name="signal"/> to <paramref name="pid"/>; false when it is gone (or not ours to signal).</summary>
    public static bool Kill(int pid, int signal) => Libc.Kill(pid, signal) == 0;

    /// <summary>Fills <paramref name="buffer"/> from <paramref name="offset"/> of <paramref name="fd"/> with one
    /// pread(2); a short read is an error (EIO), as for a stats file of a known layout.</summary>
    public static void PreadExactly(SafeFd fd, Span<byte> buffer, long offset, string what)
    {
        fixed (byte* p = buffer)
        {
            nint n = Libc.Pread(fd.Value, p, (nuint)buffer.Length, offset);
            if (n != buffer.Length)
                throw new NativeErrorException($"pread({what})", n < 0 ? Marshal.GetLastPInvokeError() : Errno.EIO);
        }
    }

    /// <summary>A pipe (read end, write end), close-on-exec.</summary>
    public static (SafeFd Read, SafeFd Write) Pipe()
    {
        int* fds = stackalloc int[2];
        if (Libc.Pipe2(fds, Libc.O_CLOEXEC) < 0)
            throw NativeErrorException.FromLastError("pipe2");
        return (new SafeFd(fds[0]), new SafeFd(fds[1]));
    }

    /// <summary>splice(2) without offsets, pages moved where the kernel can: bytes moved, 0 at the end, -1 when a
    /// non-blocking splice would block (EAGAIN).</summary>
    public static long TrySplice(SafeFd from, SafeFd to, int length, bool nonBlocking)
    {
        while (true)
        {
            nint n = Libc.Splice(from.Value, null, to.Value, null, (nuint)length,
                Libc.SPLICE_F_MOVE | (nonBlocking ? Libc.SPLICE_F_NONBLOCK : 0));
            if (n >= 0)
                return n;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Errno.EINTR)
                continue;
            if (errno == Errno.EAGAIN)
                return -1;
            throw new NativeErrorException("splice", errno);
        }
    }

    /// <summary>IN_OPEN of inotify(7): the watched file was opened (device nodes included).</summary>
    public const uint InOpen = 0x20;

    /// <summary>A non-blocking inotify instance watching <paramref name="path"/> for <paramref name="mask"/>; null with
    /// errno when the kernel refuses (no such file, no inotify).</summary>
    public static SafeFd? TryInotify(string path, uint mask, out int errno)
    {
        int fd = Libc.InotifyInit1(Libc.IN_CLOEXEC | Libc.IN_NONBLOCK);
        if (fd < 0)
        {
            errno = Marshal.GetLastPInvokeError();
            return null;
        }
        var handle = new SafeFd(fd);
        if (Libc.InotifyAddWatch(fd, path, mask) < 0)
        {
            errno = Marshal.GetLastPInvokeError();
            handle.Dispose();
            return null;
        }
        errno = 0;
        return handle;
    }

    /// <summary>Reads a non-blocking fd until it would block (inotify events, an eventfd); true when anything was read.</summary>
    public static bool DrainNonBlocking(SafeFd fd)
    {
        Span<byte> buffer = stackalloc byte[1024];
        bool any = false;
        while (TryRead(fd, buffer) > 0)
            any = true;
        return any;
    }

    public static int EventFd() 
    {
        int fd = Libc.EventFd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
        if (fd < 0)
            throw NativeErrorException.FromLastError("eventfd");
        return fd;
    }

    /// <summary>Waits until <paramref name="fd"/> is readable or <paramref name="wakeFd"/> is signalled.</summary>
    /// <returns>1 when fd is readable, 2 when woken, 0 on timeout.</returns>
    public static int PollReadable(SafeFd fd, SafeFd wakeFd, int timeoutMilliseconds)
    {
        Libc.PollFd* fds = stackalloc Libc.PollFd[2];
        fds[0] = new Libc.PollFd { Fd = fd.Value, Events = Libc.POLLIN };
        fds[1] = new Libc.PollFd { Fd = wakeFd.Value, Events = Libc.POLLIN };
        int r = Libc.Poll(fds, 2, timeoutMilliseconds);
        if (r < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Errno.EINTR)
                return 0;
            throw new NativeErrorException("poll", errno);
        }
        if (fds[1].ReturnedEvents != 0)
            return 2;
        return fds[0].ReturnedEvents != 0 ? 1 : 0;
    }

    public static void Mount(string source, string target, string fileSystemType)
    {
        if (Libc.Mount(source, target, fileSystemType, 0, 0) != 0)
            throw NativeErrorException.FromLastError($"mount -t {fileSystemType} {source} {target}");
    }

    public static int Gettid() => Libc.Gettid();

    public static int Getppid() => Libc.Getppid();

    /// <summary>A descriptor that becomes readable when process <paramref name="pid"/> exits, however it ends
    /// (Linux 5.3); null when no such process runs.</summary>
    public static SafeFd? PidfdOpen(int pid)
    {
        long fd = Libc.Syscall(Libc.SYS_pidfd_open, pid, 0, 0, 0, 0);
        if (fd >= 0)
            return new SafeFd((int)fd);
        int errno = Marshal.GetLastPInvokeError();
        if (errno == 3) // ESRCH
            return null;
        throw new NativeErrorException($"pidfd_open({pid})", errno);
    }

    /// <summary>Blocks until <paramref name="fd"/> is readable.</summary>
    public static void WaitReadable(SafeFd fd)
    {
        var pfd = new Libc.PollFd { Fd = fd.Value, Events = Libc.POLLIN };
        while (Libc.Poll(&pfd, 1, -1) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Errno.EINTR)
                throw new NativeErrorException("poll", errno);
        }
    }

    /// <summary>Sets the calling thread's comm (at most 15 bytes), as QEMU names its vCPU threads "CPU N/KVM".</summary>
    public static void SetCurrentThreadName(string name)
    {
        byte* buffer = stackalloc byte[16];
        int n = System.Text.Encoding.UTF8.GetBytes(name.AsSpan(0, Math.Min(name.Length, 15)), new Span<byte>(buffer, 15));
        buffer[n] = 0;
        if (Libc.Prctl(Libc.PR_SET_NAME, (nint)buffer, 0, 0, 0) != 0)
            throw NativeErrorException.FromLastError("prctl(PR_SET_NAME)");
    }

    /// <summary>Sets one thread's nice value (Linux keeps one per thread; a new thread starts with its creator's).</summary>
    public static void SetThreadNice(int tid, int nice)
    {
        if (Libc.SetPriority(Libc.PRIO_PROCESS, (uint)tid, nice) != 0)
            throw NativeErrorException.FromLastError($"setpriority(thread {tid}, {nice})");
    }

    /// <summary>Asks the kernel to send <paramref name="signal"/> to this process when its parent dies.</summary>
    public static void SetParentDeathSignal(int signal) => Libc.Prctl(Libc.PR_SET_PDEATHSIG, signal, 0, 0, 0);

    /// <summary>Pins the calling thread to one CPU.</summary>
    public static void PinCurrentThread(int cpu)
    {
        ulong mask = 1UL << cpu;
        if (Libc.SchedSetAffinity(0, sizeof(ulong), &mask) != 0)
            throw NativeErrorException.FromLastError($"sched_setaffinity(cpu {cpu})");
    }
}
