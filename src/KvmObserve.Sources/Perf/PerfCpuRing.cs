using System.Buffers.Binary;
using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Perf;
using KvmObserve.Native;
using KvmObserve.Native.Perf;

namespace KvmObserve.Sources.Perf;

/// <summary>
/// One CPU of the sampling source: an event per tracepoint (pid -1, this CPU), all writing into one mmap ring
/// (the first event's; the others by PERF_EVENT_IOC_SET_OUTPUT), read in place by a dedicated thread that the kernel
/// wakes at the watermark (or the poll timeout ends). data_head is read with acquire and data_tail written with
/// release, as perf_event.h asks.
/// </summary>
internal sealed unsafe class PerfCpuRing
{
    /// <summary>PERF_SAMPLE_TID | TIME | CPU | RAW: the layout <see cref="PerfRingReader"/> parses.</summary>
    public const ulong SampleType = PerfConstants.SampleTid | PerfConstants.SampleTime | PerfConstants.SampleCpu | PerfConstants.SampleRaw;

    private readonly List<SafeFd> _events = new();
    private readonly MappedRegion _ring;
    private readonly SafeFd _wake;
    private readonly KvmEventDecoders _decoders;
    private readonly Shard _shard;
    private readonly int _pollTimeoutMs;
    private readonly Thread _thread;
    private readonly LostTally _lost = new();
    private readonly byte[] _scratch = new byte[PerfRingReader.MaxRecordSize];
    private readonly byte* _dataBase;
    private readonly int _dataSize;
    private volatile bool _stopping;

    /// <param name="tracepointIds">The ids (events/SYSTEM/NAME/id) to sample.</param>
    /// <param name="dataPages">Data pages of the ring, a power of two.</param>
    /// <param name="wakeupPercent">How full the ring gets before the kernel wakes the reader; 0: at every sample.</param>
    public PerfCpuRing(int cpu, IReadOnlyList<int> tracepointIds, int dataPages, int wakeupPercent, SafeFd wake,
        KvmEventDecoders decoders, Shard shard, int pollTimeoutMs)
    {
        Cpu = cpu;
        _wake = wake;
        _decoders = decoders;
        _shard = shard;
        shard.States.Reads(cpu); // no pair across a time this CPU has not been read up to
        _pollTimeoutMs = pollTimeoutMs;
        int pageSize = Environment.SystemPageSize;
        long dataBytes = (long)dataPages * pageSize;
        try
        {
            foreach (int id in tracepointIds)
            {
                PerfEventAttr attr = SamplingAttr(id, dataBytes, wakeupPercent);
                if (!LostCountsSupported)
                    attr.ReadFormat &= ~PerfConstants.FormatLost;
                SafeFd? fd = PerfEvent.TryOpen(attr, pid: -1, cpu, group: null, out int errno);
                if (fd is null && errno == Errno.EINVAL && LostCountsSupported)
                {
                    // Before Linux 6.0 there is no PERF_FORMAT_LOST: lost samples then come from PERF_RECORD_LOST
                    // alone, which the kernel writes when it next writes to the ring.
                    LostCountsSupported = false;
                    attr.ReadFormat &= ~PerfConstants.FormatLost;
                    fd = PerfEvent.TryOpen(attr, pid: -1, cpu, group: null, out errno);
                }
                _events.Add(fd ?? throw new NativeErrorException($"perf_event_open(tracepoint {id}, cpu{cpu})", errno));
            }
            try
            {
                _ring = MappedRegion.Shared(_events[0], (nuint)(pageSize + dataBytes), writable: true);
            }
            catch (NativeErrorException e) when (e.Errno == Errno.EPERM)
            {
                throw new NativeErrorException($"mapping a {dataBytes / 1024} KiB perf ring for cpu{cpu} (over kernel.perf_event_mlock_kb "
                    + "without CAP_IPC_LOCK? use a smaller --buffer-kb)", e.Errno);
            }
            for (int i = 1; i < _events.Count; i++)
                PerfEvent.SetOutput(_events[i], _events[0]);
        }
        catch
        {
            Release();
            throw;
        }
        long dataOffset = (long)Volatile.Read(ref *(ulong*)(_ring.Pointer + PerfMmapPage.DataOffsetOffset));
        long dataSize = (long)Volatile.Read(ref *(ulong*)(_ring.Pointer + PerfMmapPage.DataSizeOffset));
        if (dataOffset == 0 || dataSize == 0) // kernels before 4.1 leave these 0: the data starts one page in
            (dataOffset, dataSize) = (pageSize, dataBytes);
        _dataBase = _ring.Pointer + dataOffset;
        _dataSize = (int)dataSize;
        _thread = new Thread(Run) { IsBackground = true, Name = $"kvmobserve perf cpu{cpu}" };
    }

    public int Cpu { get; }

    /// <summary>Whether this kernel counts lost samples per event (PERF_FORMAT_LOST, Linux 6.0).</summary>
    public static bool LostCountsSupported { get; private set; } = true;

    public Exception? Failure { get; private set; }

    internal long Wakeups;

    private const int ClockMonotonic = 1;

    internal static PerfEventAttr SamplingAttr(int tracepointId, long ringBytes, int wakeupPercent)
    {
        var attr = new PerfEventAttr
        {
            Type = PerfConstants.TypeTracepoint,
            Config = (ulong)tracepointId,
            SamplePeriod = 1,
            SampleType = SampleType,
            ReadFormat = PerfConstants.FormatLost,
            // CLOCK_MONOTONIC, as the tracefs source's trace_clock "mono": one time base across CPUs for pairing
            Flags = (ulong)(PerfAttrFlags.Disabled | PerfAttrFlags.UseClockid),
            ClockId = ClockMonotonic,
        };
        if (wakeupPercent <= 0)
        {
            attr.WakeupWatermark = 1; // wakeup_events: every sample
        }
        else
        {
            attr.Flags |= (ulong)PerfAttrFlags.Watermark;
            attr.WakeupWatermark = (uint)Math.Max(8, ringBytes * Math.Min(wakeupPercent, 100) / 100);
        }
        return attr;
    }

    public void Start()
    {
        foreach (SafeFd e in _events)
            PerfEvent.Enable(e);
        _thread.Start();
    }

    public void RequestStop()
    {
        foreach (SafeFd e in _events)
            PerfEvent.Disable(e);
        _stopping = true;
    }

    public void Join()
    {
        if (_thread.ThreadState != ThreadState.Unstarted)
            _thread.Join();
        Release();
    }

    private void Release()
    {
        _ring?.Dispose();
        foreach (SafeFd e in _events)
            e.Dispose();
        _events.Clear();
    }

    private void Run()
    {
        var handler = new SampleHandler(_decoders, _shard, _lost);
        try
        {
            while (true)
            {
                bool stopping = _stopping;
                if (!stopping)
                {
                    Sys.PollReadable(_events[0], _wake, _pollTimeoutMs);
                    Interlocked.Increment(ref Wakeups);
                }
                Drain(ref handler);
                if (stopping)
                    break;
            }
        }
        catch (Exception e)
        {
            Failure = e;
        }
    }

    /// <summary>Reads everything between data_tail and data_head in place, then the events' lost counts.</summary>
    private void Drain(ref SampleHandler handler)
    {
        ref ulong head = ref *(ulong*)(_ring.Pointer + PerfMmapPage.DataHeadOffset);
        ref ulong tailRef = ref *(ulong*)(_ring.Pointer + PerfMmapPage.DataTailOffset);
        ulong tail = tailRef; // only this thread writes it
        while (true)
        {
            ulong before = ThreadStates.MonotonicNow(); // CLOCK_MONOTONIC ns, the samples' clock
            ulong h = Volatile.Read(ref head); // acquire: the records below head are complete
            if (h == tail)
            {
                _shard.States.CaughtUp(Cpu, before); // caught up: pairs waiting on this CPU can close
                break;
            }
            ulong next;
            lock (_shard.Gate) // uncontended unless the aggregator is compacting this shard
                next = PerfRingReader.Read(new ReadOnlySpan<byte>(_dataBase, _dataSize), tail, h, _scratch, ref handler);
            _shard.CountBytes((int)(next - tail));
            tail = next;
            Volatile.Write(ref tailRef, tail); // release: the kernel may reuse the space
        }
        _lost.FromEvents = ReadLostSamples();
        long lost = _lost.TakeNew();
        if (lost > 0)
            lock (_shard.Gate)
                _shard.CountLost((ulong)lost, exact: true);
    }

    /// <summary>Sum of PERF_FORMAT_LOST over this CPU's events: read() gives { u64 value; u64 lost; }.</summary>
    private long ReadLostSamples()
    {
        Span<byte> block = stackalloc byte[16];
        long sum = 0;
        if (!LostCountsSupported)
            return 0;
        foreach (SafeFd e in _events)
        {
            if (PerfEvent.TryRead(e, block) == 16)
                sum += (long)BinaryPrimitives.ReadUInt64LittleEndian(block.Slice(8));
        }
        return sum;
    }
}
