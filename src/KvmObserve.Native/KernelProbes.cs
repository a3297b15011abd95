using System.Runtime.InteropServices;
using KvmObserve.Native.Interop;

namespace KvmObserve.Native;

/// <summary>Minimal calls that tell whether perf_event_open and BPF work here (for `doctor`).</summary>
public static unsafe class KernelProbes
{
    private const uint PerfTypeTracepoint = 2;     // include/uapi/linux/perf_event.h: PERF_TYPE_TRACEPOINT
    private const int PerfAttrSizeVer0 = 64;        // PERF_ATTR_SIZE_VER0
    private const int BpfMapCreate = 0;             // include/uapi/linux/bpf.h: BPF_MAP_CREATE
    private const uint BpfMapTypeArray = 2;         // BPF_MAP_TYPE_ARRAY

    /// <summary>Opens (and closes) a counting perf event on a tracepoint id, all threads of CPU 0; returns errno or 0.</summary>
    public static int TryPerfTracepoint(int tracepointId)
    {
        byte* attr = stackalloc byte[PerfAttrSizeVer0];
        new Span<byte>(attr, PerfAttrSizeVer0).Clear();
        *(uint*)attr = PerfTypeTracepoint;          // type
        *(uint*)(attr + 4) = PerfAttrSizeVer0;      // size
        *(ulong*)(attr + 8) = (ulong)tracepointId;  // config
        long fd = Libc.Syscall(Libc.SYS_perf_event_open, (nint)attr, -1, 0, -1, 0);
        if (fd < 0)
            return Marshal.GetLastPInvokeError();
        Libc.Close((int)fd);
        return 0;
    }

    /// <summary>Creates (and closes) a one-entry BPF array map; returns errno or 0.</summary>
    public static int TryBpfMap()
    {
        byte* attr = stackalloc byte[16];
        *(uint*)attr = BpfMapTypeArray;  // map_type
        *(uint*)(attr + 4) = 4;          // key_size
        *(uint*)(attr + 8) = 8;          // value_size
        *(uint*)(attr + 12) = 1;         // max_entries
        long fd = Libc.Syscall(Libc.SYS_bpf, BpfMapCreate, (nint)attr, 16, 0, 0);
        if (fd < 0)
            return Marshal.GetLastPInvokeError();
        Libc.Close((int)fd);
        return 0;
    }

    public static string ErrorText(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
