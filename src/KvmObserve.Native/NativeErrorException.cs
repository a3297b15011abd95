using System.Runtime.InteropServices;

namespace KvmObserve.Native;

/// <summary>A failed system call: carries errno and the C library's text for it, and names what was attempted.</summary>
public sealed class NativeErrorException : IOException
{
    public NativeErrorException(string operation, int errno)
        : base($"{operation} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})")
    {
        Errno = errno;
        Operation = operation;
    }

    public int Errno { get; }

    public string Operation { get; }

    /// <summary>Builds the exception from the errno saved by the last SetLastError=true call.</summary>
    public static NativeErrorException FromLastError(string operation) => new(operation, Marshal.GetLastPInvokeError());
}

/// <summary>errno values the agent reacts to (include/uapi/asm-generic/errno-base.h, errno.h).</summary>
public static class Errno
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int ESRCH = 3;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int ENODEV = 19;
    public const int EINVAL = 22;
    public const int ENOSPC = 28;
    public const int ENOSYS = 38;
    public const int ENOBUFS = 105;
}
