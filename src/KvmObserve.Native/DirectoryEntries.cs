using System.Buffers.Binary;
using KvmObserve.Native.Interop;

namespace KvmObserve.Native;

/// <summary>
/// The entries of one directory, read with getdents64(2) into a buffer the caller gives (a stackalloc), names as
/// UTF-8 bytes: no allocation and no stat(2) per entry. A symlink's target (an fd in /proc/PID/fd) is read relative
/// to the open directory with one readlinkat(2), where FileInfo.LinkTarget takes an lstat, a readlink and two strings.
/// A directory that cannot be opened (a process gone meanwhile) has no entries. Dispose closes it.
/// </summary>
public unsafe ref struct DirectoryEntries
{
    private readonly Span<byte> _buffer;
    private int _fd;
    private int _length, _next, _name;

    public DirectoryEntries(string path, Span<byte> buffer)
    {
        _buffer = buffer;
        _fd = Libc.Open(path, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
    }

    /// <summary>False when the directory could not be opened.</summary>
    public readonly bool Opened => _fd >= 0;

    /// <summary>The current entry's name, without its NUL.</summary>
    public readonly ReadOnlySpan<byte> Name
    {
        get
        {
            ReadOnlySpan<byte> rest = _buffer[_name.._next];
            int nul = rest.IndexOf((byte)0);
            return nul < 0 ? rest : rest[..nul];
        }
    }

    /// <summary>Moves to the next entry other than "." and "..", reading the next batch when this one is done; false
    /// at the end, or on a read error (a directory removed under it).</summary>
    public bool MoveNext()
    {
        while (_fd >= 0)
        {
            if (_next >= _length)
            {
                nint n;
                fixed (byte* p = _buffer)
                    n = Libc.Getdents64(_fd, p, (nuint)_buffer.Length);
                if (n <= 0)
                    return false;
                _length = (int)n;
                _next = 0;
            }
            int at = _next;
            int reclen = BinaryPrimitives.ReadUInt16LittleEndian(_buffer[(at + Libc.DirentReclenOffset)..]);
            if (reclen <= 0)
                return false;
            _next = at + reclen;
            _name = at + Libc.DirentNameOffset;
            ReadOnlySpan<byte> name = Name;
            if (name.SequenceEqual("."u8) || name.SequenceEqual(".."u8))
                continue;
            return true;
        }
        return false;
    }

    /// <summary>The current entry's symlink target into <paramref name="target"/>: its length, or -1 when the entry
    /// is not a symlink or is gone (an fd closed meanwhile). A target longer than the buffer is cut to it.</summary>
    public readonly int ReadLink(Span<byte> target)
    {
        nint n;
        fixed (byte* name = &_buffer[_name])
        fixed (byte* p = target)
            n = Libc.Readlinkat(_fd, name, p, (nuint)target.Length);
        return n < 0 ? -1 : (int)n;
    }

    public void Dispose()
    {
        if (_fd >= 0)
            Libc.Close(_fd);
        _fd = -1;
    }
}
