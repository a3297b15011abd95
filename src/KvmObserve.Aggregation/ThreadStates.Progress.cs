using System.Runtime.CompilerServices;
using KvmObserve.Aggregation.Series;

namespace KvmObserve.Aggregation;

/// <summary>How far each CPU's records have been read (trace time), which is what lets a pair wait for records a
/// slower CPU may still hold, and where a reader lost records, across which nothing is paired.</summary>
public sealed partial class ThreadStates
{
    /// <summary>Per CPU, 16 longs apart so readers do not share lines: [0] the newest trace time its reader has
    /// handled, [1] 1 once it is read.</summary>
    private readonly long[] _watermarks;
    private const int WatermarkStride = 16;

    /// <summary>The reader of <paramref name="cpu"/> has handled every record of its CPU up to <paramref name="ts"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Advance(int cpu, ulong ts)
    {
        int i = cpu * WatermarkStride;
        if ((uint)i < (uint)_watermarks.Length)
        {
            Volatile.Write(ref _watermarks[i], (long)ts);
            if (_watermarks[i + 1] == 0)
                Reads(cpu);
        }
    }

    /// <summary>The reader of <paramref name="cpu"/> has drained its ring (everything before <paramref name="ts"/>):
    /// besides <see cref="Advance"/>, how far every CPU has been read is worked out again for the hot path.</summary>
    public void CaughtUp(int cpu, ulong ts)
    {
        Advance(cpu, ts);
        ulong all = ReadEverywhere();
        if (all > (ulong)Volatile.Read(ref _readTo))
            Volatile.Write(ref _readTo, (long)all);
    }

    private long _readTo;

    /// <summary>How far every CPU had been read when a reader last caught up (see <see cref="CaughtUp"/>).</summary>
    internal ulong ReadTo => (ulong)Volatile.Read(ref _readTo);

    /// <summary>A reader of <paramref name="cpu"/> exists: until it has read up to a time, no pair across that time is
    /// closed for want of what this CPU may still hold. (A CPU that has advanced is counted in anyway.)</summary>
    public void Reads(int cpu)
    {
        int i = cpu * WatermarkStride;
        if ((uint)i >= (uint)_watermarks.Length || Interlocked.Exchange(ref _watermarks[i + 1], 1) == 1)
            return;
        lock (_readCpus)
            _readCpus.Add(cpu);
        _readCpusArray = [.. _readCpus];
    }

    private readonly List<int> _readCpus = new();
    private volatile int[] _readCpusArray = [];

    /// <summary>How far every CPU that is read has been read (trace time): no record older than this is still to come.
    /// ulong.MaxValue where no CPU is read.</summary>
    internal ulong ReadEverywhere()
    {
        ulong min = ulong.MaxValue;
        foreach (int cpu in _readCpusArray)
            min = Math.Min(min, (ulong)Volatile.Read(ref _watermarks[cpu * WatermarkStride]));
        return min;
    }

    /// <summary>CLOCK_MONOTONIC in ns (Stopwatch's clock on Linux): the trace clock the sources ask the kernel for.</summary>
    public static ulong MonotonicNow()
    {
        long t = System.Diagnostics.Stopwatch.GetTimestamp();
        long f = System.Diagnostics.Stopwatch.Frequency;
        return f == 1_000_000_000 ? (ulong)t : (ulong)((UInt128)(ulong)t * 1_000_000_000 / (ulong)f);
    }

    /// <summary>How far the reader of <paramref name="cpu"/> has read (trace time).</summary>
    internal ulong Watermark(int cpu)
    {
        int i = cpu * WatermarkStride;
        return (uint)i < (uint)_watermarks.Length ? (ulong)Volatile.Read(ref _watermarks[i]) : ulong.MaxValue;
    }

    /// <summary>A reader learnt that records of <paramref name="cpu"/> were lost: pairs open across the gap are dropped.</summary>
    public void NoteLoss(int cpu)
    {
        if ((uint)cpu < (uint)_lossGenerationByCpu.Length)
            Interlocked.Increment(ref _lossGenerationByCpu[cpu]);
        Interlocked.Increment(ref _lossGeneration);
    }

    internal long LossGeneration(int cpu) =>
        (uint)cpu < (uint)_lossGenerationByCpu.Length ? Volatile.Read(ref _lossGenerationByCpu[cpu]) : Volatile.Read(ref _lossGeneration);

    internal long GlobalLossGeneration => Volatile.Read(ref _lossGeneration);
}
