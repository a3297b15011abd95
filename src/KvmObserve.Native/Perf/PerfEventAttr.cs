using System.Runtime.InteropServices;

namespace KvmObserve.Native.Perf;

/// <summary>
/// struct perf_event_attr of include/uapi/linux/perf_event.h, up to PERF_ATTR_SIZE_VER7 (128 bytes, sig_data): newer
/// kernels accept a smaller size and zero the rest; older ones reject fields they lack only when those are non-zero.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct PerfEventAttr
{
    public const int Size = 128; // PERF_ATTR_SIZE_VER7

    [FieldOffset(0)] public uint Type;
    [FieldOffset(4)] public uint AttrSize;
    [FieldOffset(8)] public ulong Config;
    /// <summary>sample_period (or sample_freq with the freq flag).</summary>
    [FieldOffset(16)] public ulong SamplePeriod;
    [FieldOffset(24)] public ulong SampleType;
    [FieldOffset(32)] public ulong ReadFormat;
    /// <summary>The bit field that starts with disabled:1 (see <see cref="PerfAttrFlags"/>).</summary>
    [FieldOffset(40)] public ulong Flags;
    /// <summary>wakeup_events, or wakeup_watermark (bytes) with the watermark flag.</summary>
    [FieldOffset(48)] public uint WakeupWatermark;
    [FieldOffset(52)] public uint BpType;
    [FieldOffset(56)] public ulong Config1;
    [FieldOffset(64)] public ulong Config2;
    [FieldOffset(72)] public ulong BranchSampleType;
    [FieldOffset(80)] public ulong SampleRegsUser;
    [FieldOffset(88)] public uint SampleStackUser;
    [FieldOffset(92)] public int ClockId;
    [FieldOffset(96)] public ulong SampleRegsIntr;
    [FieldOffset(104)] public uint AuxWatermark;
    [FieldOffset(108)] public ushort SampleMaxStack;
    [FieldOffset(112)] public uint AuxSampleSize;
    [FieldOffset(120)] public ulong SigData;
}

/// <summary>Bits of perf_event_attr's flag word, in the order the header declares them.</summary>
[Flags]
public enum PerfAttrFlags : ulong
{
    None = 0,
    Disabled = 1UL << 0,
    Inherit = 1UL << 1,
    Pinned = 1UL << 2,
    Exclusive = 1UL << 3,
    ExcludeUser = 1UL << 4,
    ExcludeKernel = 1UL << 5,
    ExcludeHv = 1UL << 6,
    ExcludeIdle = 1UL << 7,
    Mmap = 1UL << 8,
    Comm = 1UL << 9,
    Freq = 1UL << 10,
    InheritStat = 1UL << 11,
    EnableOnExec = 1UL << 12,
    Task = 1UL << 13,
    Watermark = 1UL << 14,
    // precise_ip:2 takes bits 15 and 16
    MmapData = 1UL << 17,
    SampleIdAll = 1UL << 18,
    ExcludeHost = 1UL << 19,
    ExcludeGuest = 1UL << 20,
    ExcludeCallchainKernel = 1UL << 21,
    ExcludeCallchainUser = 1UL << 22,
    Mmap2 = 1UL << 23,
    CommExec = 1UL << 24,
    /// <summary>Sample times come from <see cref="PerfEventAttr.ClockId"/> instead of the perf clock.</summary>
    UseClockid = 1UL << 25,
}

/// <summary>The enum values of perf_event.h the sources use.</summary>
public static class PerfConstants
{
    public const uint TypeTracepoint = 2;        // PERF_TYPE_TRACEPOINT

    public const ulong SampleTid = 1UL << 1;     // PERF_SAMPLE_TID
    public const ulong SampleTime = 1UL << 2;    // PERF_SAMPLE_TIME
    public const ulong SampleCpu = 1UL << 7;     // PERF_SAMPLE_CPU
    public const ulong SampleRaw = 1UL << 10;    // PERF_SAMPLE_RAW

    public const ulong FormatId = 1UL << 2;      // PERF_FORMAT_ID
    public const ulong FormatGroup = 1UL << 3;   // PERF_FORMAT_GROUP
    public const ulong FormatLost = 1UL << 4;    // PERF_FORMAT_LOST (Linux 6.0)

    public const uint RecordLost = 2;            // PERF_RECORD_LOST
    public const uint RecordSample = 9;          // PERF_RECORD_SAMPLE
    public const uint RecordLostSamples = 13;    // PERF_RECORD_LOST_SAMPLES

    public const ulong FlagFdCloexec = 1UL << 3; // PERF_FLAG_FD_CLOEXEC

    /// <summary>PERF_EVENT_IOC_*: _IO('$', n) and _IOW('$', 6, char *).</summary>
    public static readonly ulong IocEnable = IoctlNumber.Io('$', 0);
    public static readonly ulong IocDisable = IoctlNumber.Io('$', 1);
    public static readonly ulong IocReset = IoctlNumber.Io('$', 3);
    public static readonly ulong IocSetOutput = IoctlNumber.Io('$', 5);
    public static readonly ulong IocSetFilter = IoctlNumber.Iow('$', 6, sizeof(ulong));
}

/// <summary>Offsets into struct perf_event_mmap_page, the first page of a perf ring mapping.</summary>
public static class PerfMmapPage
{
    public const int Size = 1088;               // sizeof(struct perf_event_mmap_page) incl. the aux fields
    public const int DataHeadOffset = 1024;     // __u64 data_head: written by the kernel, read with acquire
    public const int DataTailOffset = 1032;     // __u64 data_tail: written by us with release
    public const int DataOffsetOffset = 1040;   // __u64 data_offset (Linux 4.1)
    public const int DataSizeOffset = 1048;     // __u64 data_size
}
