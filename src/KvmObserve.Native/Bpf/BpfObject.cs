using System.Runtime.InteropServices;
using System.Text;

namespace KvmObserve.Native.Bpf;

/// <summary>A BPF problem, with what libbpf and the verifier said about it (the last lines of their log).</summary>
public sealed class BpfException(string message, int errno = 0) : Exception(message)
{
    public int Errno { get; } = errno;
}

/// <summary>
/// One BPF ELF object opened and loaded through libbpf, and the links that attach its programs. Everything the kernel
/// holds for it (programs, maps, links) is reachable only through file descriptors of this process: nothing is
/// pinned, so when the process ends, however it ends, the kernel detaches and frees all of it.
/// </summary>
public sealed unsafe class BpfObject : IDisposable
{
    private nint _obj;
    private readonly List<BpfLink> _links = new();
    private readonly long _logMark;

    private BpfObject(nint obj, long logMark)
    {
        _obj = obj;
        _logMark = logMark;
    }

    public string Path { get; private init; } = "";

    /// <summary>Opens the ELF file (no kernel object yet: maps and programs are created by <see cref="Load"/>).</summary>
    public static BpfObject Open(string path)
    {
        long mark = LibbpfLog.Mark();
        nint obj = Libbpf.ObjectOpenFile(path, 0);
        if (obj == 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new BpfException($"{path}: libbpf cannot open it: {KernelProbes.ErrorText(errno)}{LibbpfLog.Since(mark)}", errno);
        }
        return new BpfObject(obj, mark) { Path = path };
    }

    private nint Handle => _obj != 0 ? _obj : throw new ObjectDisposedException(nameof(BpfObject));

    private nint Map(string name)
    {
        for (nint m = Libbpf.ObjectNextMap(Handle, 0); m != 0; m = Libbpf.ObjectNextMap(Handle, m))
        {
            if (Marshal.PtrToStringUTF8(Libbpf.MapName(m)) == name)
                return m;
        }
        throw new BpfException($"{Path}: no map named {name}");
    }

    private nint ReadOnlyDataMap()
    {
        for (nint m = Libbpf.ObjectNextMap(Handle, 0); m != 0; m = Libbpf.ObjectNextMap(Handle, m))
        {
            if (Marshal.PtrToStringUTF8(Libbpf.MapName(m)) is string name && name.EndsWith(".rodata", StringComparison.Ordinal))
                return m;
        }
        throw new BpfException($"{Path}: no .rodata section (the object has no read-only globals)");
    }

    /// <summary>Sets the object's read-only globals (its .rodata) before load. The sizes must match exactly: the C
    /// struct and the managed layout are one contract.</summary>
    public void SetReadOnlyData(ReadOnlySpan<byte> data)
    {
        nint map = ReadOnlyDataMap();
        Libbpf.MapInitialValue(map, out nuint size);
        if ((int)size != data.Length)
            throw new BpfException($"{Path}: its read-only globals are {size} bytes, the agent's layout {data.Length}: the object and the agent are from different builds");
        fixed (byte* p = data)
        {
            int rc = Libbpf.MapSetInitialValue(map, p, (nuint)data.Length);
            if (rc < 0)
                throw new BpfException($"{Path}: setting its read-only globals: {KernelProbes.ErrorText(-rc)}", -rc);
        }
    }

    public void SetMaxEntries(string map, uint entries)
    {
        int rc = Libbpf.MapSetMaxEntries(Map(map), entries);
        if (rc < 0)
            throw new BpfException($"{Path}: map {map}: max_entries {entries}: {KernelProbes.ErrorText(-rc)}", -rc);
    }

    /// <summary>Creates the maps and loads every program (the verifier runs here).</summary>
    public void Load()
    {
        long mark = LibbpfLog.Mark();
        int rc = Libbpf.ObjectLoad(Handle);
        if (rc < 0)
            throw new BpfException($"{Path}: the kernel did not load it: {KernelProbes.ErrorText(-rc)} (errno {-rc}){LibbpfLog.Since(mark)}", -rc);
    }

    public int MapFd(string map)
    {
        int fd = Libbpf.MapFd(Map(map));
        return fd >= 0 ? fd : throw new BpfException($"{Path}: map {map} is not loaded");
    }

    /// <summary>The loaded programs: name and fd (for their run-time statistics).</summary>
    public IReadOnlyList<(string Name, int Fd)> Programs()
    {
        var list = new List<(string, int)>();
        for (nint p = Libbpf.ObjectNextProgram(Handle, 0); p != 0; p = Libbpf.ObjectNextProgram(Handle, p))
            list.Add((Marshal.PtrToStringUTF8(Libbpf.ProgramName(p)) ?? "?", Libbpf.ProgramFd(p)));
        return list;
    }

    private nint Program(string name)
    {
        for (nint p = Libbpf.ObjectNextProgram(Handle, 0); p != 0; p = Libbpf.ObjectNextProgram(Handle, p))
        {
            if (Marshal.PtrToStringUTF8(Libbpf.ProgramName(p)) == name)
                return p;
        }
        throw new BpfException($"{Path}: no program named {name}");
    }

    /// <summary>Attaches a program to a tracepoint (any tracepoint: the program reads fields at the offsets it was
    /// loaded with). <paramref name="cookie"/> is what bpf_get_attach_cookie() returns in it.</summary>
    public BpfLink AttachTracepoint(string program, string system, string eventName, ulong cookie = 0)
    {
        long mark = LibbpfLog.Mark();
        var options = new Libbpf.TracepointOptions { Size = (nuint)sizeof(Libbpf.TracepointOptions), Cookie = cookie };
        nint link = Libbpf.ProgramAttachTracepoint(Program(program), system, eventName, &options);
        if (link == 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new BpfException($"{program} -> {system}:{eventName}: attach failed: {KernelProbes.ErrorText(errno)}{LibbpfLog.Since(mark)}", errno);
        }
        var l = new BpfLink(link, program, $"{system}:{eventName}");
        _links.Add(l);
        return l;
    }

    public IReadOnlyList<BpfLink> Links => _links;

    public void Dispose()
    {
        foreach (BpfLink link in _links)
            link.Dispose();
        _links.Clear();
        if (_obj != 0)
        {
            Libbpf.ObjectClose(_obj);
            _obj = 0;
        }
    }
}

/// <summary>An attachment of a program to a tracepoint; owned by the process through its fd.</summary>
public sealed class BpfLink : IDisposable
{
    private nint _link;

    internal BpfLink(nint link, string program, string tracepoint)
    {
        _link = link;
        Program = program;
        Tracepoint = tracepoint;
    }

    public string Program { get; }
    public string Tracepoint { get; }

    public void Dispose()
    {
        if (_link != 0)
        {
            Libbpf.LinkDestroy(_link);
            _link = 0;
        }
    }
}

/// <summary>What libbpf printed (warnings, the verifier's log): the last lines, for error messages.</summary>
internal static unsafe class LibbpfLog
{
    private const int Keep = 40;
    private static readonly Queue<(long Seq, string Line)> Lines = new();
    private static long _seq;
    private static readonly object Gate = new();

    static LibbpfLog() => Libbpf.SetPrint(&Print);

    /// <summary>Installs the printer (once) and returns the current position.</summary>
    public static long Mark()
    {
        lock (Gate)
            return _seq;
    }

    /// <summary>The lines printed since <paramref name="mark"/>, as a suffix for a message ("" when none).</summary>
    public static string Since(long mark)
    {
        lock (Gate)
        {
            string[] lines = Lines.Where(l => l.Seq > mark).Select(l => l.Line).ToArray();
            return lines.Length == 0 ? "" : "; libbpf said:\n  " + string.Join("\n  ", lines);
        }
    }

    [UnmanagedCallersOnly]
    private static int Print(int level, nint format, nint arguments)
    {
        if (level > 1) // LIBBPF_DEBUG: the whole verifier log of every program, too much to keep
            return 0;
        byte* buffer = stackalloc byte[1024];
        int n = Libbpf.VsnPrintf(buffer, 1024, format, arguments);
        if (n <= 0)
            return 0;
        string text = Encoding.UTF8.GetString(buffer, Math.Min(n, 1023)).TrimEnd();
        lock (Gate)
        {
            foreach (string line in text.Split('\n'))
            {
                Lines.Enqueue((++_seq, line));
                if (Lines.Count > Keep)
                    Lines.Dequeue();
            }
        }
        return 0;
    }
}
