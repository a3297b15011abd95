using System.Buffers;
using System.IO.Pipelines;
using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Native;

namespace KvmObserve.Sources.Tracefs;

/// <summary>
/// One CPU's reader: a dedicated thread that waits on per_cpu/cpuN/trace_pipe_raw (poll wakes at the instance's
/// buffer_percent, or after the poll timeout), reads whole pages into a Pipe and parses them. Writer and parser run on
/// the same thread with inline schedulers, so the pipe only lends its pooled buffers and the split-page handling.
/// </summary>
internal sealed class CpuReader
{
    private readonly SafeFd _fd;
    private readonly SafeFd _wake;
    private readonly PageHeaderFormat _layout;
    private readonly KvmEventDecoders _decoders;
    private readonly Shard _shard;
    private readonly int _pollTimeoutMs;
    private readonly Thread _thread;
    private volatile bool _stopping;

    private readonly bool _mapped;
    private readonly ThreadCreations? _creations;

    public CpuReader(int cpu, string pipeRawPath, SafeFd wake, PageHeaderFormat layout, KvmEventDecoders decoders,
        Shard shard, int pollTimeoutMs, bool mapped = false, ThreadCreations? creations = null)
    {
        _mapped = mapped;
        _creations = creations;
        Cpu = cpu;
        _fd = Sys.Open(pipeRawPath, nonBlocking: true);
        _statsPath = Path.Combine(Path.GetDirectoryName(pipeRawPath)!, "stats");
        _wake = wake;
        _layout = layout;
        _decoders = decoders;
        _shard = shard;
        shard.States.Reads(cpu); // no pair across a time this CPU has not been read up to
        _pollTimeoutMs = pollTimeoutMs;
        _thread = new Thread(Run) { IsBackground = true, Name = $"kvmobserve cpu{cpu}" };
        if (mapped)
            Map();
    }

    public int Cpu { get; }

    public Exception? Failure { get; private set; }

    /// <summary>Read wake-ups so far (poll returns), for the agent's own metrics.</summary>
    internal long Wakeups;

    public void Start() => _thread.Start();

    /// <summary>Asks the thread to drain what is buffered and stop; the caller signals the wake fd.</summary>
    public void RequestStop() => _stopping = true;

    public void Join()
    {
        _thread.Join();
        _data?.Dispose(); // unmapped before the fd goes: the ring buffer can be resized and removed again
        _meta?.Dispose();
        _fd.Dispose();
    }

    /// <summary>TRACE_MMAP_IOCTL_GET_READER, include/uapi/linux/trace_mmap.h: _IO('R', 0x20).</summary>
    private static readonly ulong GetReader = IoctlNumber.Io('R', 0x20);

    /// <summary>Waits for the kernel (poll wakes at the instance's buffer_percent, or at the timeout) and drains what
    /// it has, through the memory map where there is one, else through read() copies; on stop, drains once more.</summary>
    private void Run()
    {
        var handler = new RecordHandler(_decoders, _shard, _creations, deferLosses: true);
        Pipe? pipe = _data is null ? new Pipe(new PipeOptions(
            readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline,
            pauseWriterThreshold: 0, minimumSegmentSize: _layout.PageSize, useSynchronizationContext: false)) : null;
        try
        {
            while (true)
            {
                bool stopping = _stopping;
                if (!stopping)
                {
                    Sys.PollReadable(_fd, _wake, _pollTimeoutMs);
                    Interlocked.Increment(ref Wakeups);
                }
                if (pipe is null)
                    DrainMapped(ref handler);
                else
                    Drain(pipe, ref handler);
                if (handler.PendingLost > 0 || stopping)
                    SettleLosses(ref handler);
                if (stopping)
                    break;
            }
        }
        catch (Exception e)
        {
            Failure = e;
        }
        finally
        {
            pipe?.Writer.Complete();
            pipe?.Reader.Complete();
        }
    }

    private MappedRegion? _meta, _data;

    /// <summary>Maps the CPU's ring buffer: its meta page, then every sub-buffer after it. A kernel before 6.10 (no
    /// mmap of trace_pipe_raw) refuses, and the reader reads copies instead, saying why.</summary>
    private void Map()
    {
        try
        {
            _meta = MappedRegion.Shared(_fd, 4096, writable: false);
            uint metaSize, subbufSize, subbufs;
            unsafe
            {
                metaSize = *(uint*)_meta.Pointer;
                subbufSize = *(uint*)(_meta.Pointer + 8);
                subbufs = *(uint*)(_meta.Pointer + 12);
            }
            if (subbufSize != _layout.PageSize)
                throw new NativeErrorException($"sub-buffers of {subbufSize} bytes, pages of {_layout.PageSize}", Errno.EINVAL);
            _data = MappedRegion.Shared(_fd, (nuint)subbufSize * subbufs, writable: false, offset: metaSize);
        }
        catch (NativeErrorException e)
        {
            _data?.Dispose();
            _meta?.Dispose();
            _meta = _data = null;
            MapFailure = $"trace_pipe_raw cpu{Cpu} cannot be memory-mapped ({e.Message}): reading copies";
        }
    }

    /// <summary>Why the memory map could not be used (null when it was, or was not asked for).</summary>
    public string? MapFailure { get; private set; }

    // The mapped reader page: which sub-buffer it was, how far it was parsed, and the running time there.
    private int _readerId = -1, _position;
    private ulong _timestamp;

    /// <summary>The mapped ring buffer (Documentation/trace/ring-buffer-map.rst): after each GET_READER ioctl the meta
    /// page names the reader sub-buffer and how far the kernel counts it read; what it gained since the last call is
    /// parsed in place, until the kernel has nothing new. No copies: the pages are the kernel's.
    /// <para>A pass stops after the second read of one sub-buffer: that is the page the CPU is writing into, and going
    /// on would chase its writer, one ioctl per few records, each taking the buffer's reader lock and the cache lines
    /// the writer is using (measured: about 800 ioctls per wake-up while a vCPU made PIO exits, where a wake-up finds
    /// about 250 full pages). What the writer adds to it waits for the next wake-up.</para></summary>
    private unsafe void DrainMapped(ref RecordHandler handler)
    {
        byte* meta = _meta!.Pointer;
        int subbufSize = _layout.PageSize;
        int lastRead = -1; // the sub-buffer this pass last parsed
        while (true)
        {
            ulong before = ThreadStates.MonotonicNow(); // CLOCK_MONOTONIC ns, the instance's trace clock
            int rc = Sys.TryIoctl(_fd, GetReader, 0);
            if (rc < 0)
                throw new NativeErrorException($"ioctl(trace_pipe_raw cpu{Cpu}, TRACE_MMAP_IOCTL_GET_READER)", -rc);
            int id = (int)Volatile.Read(ref *(uint*)(meta + 24));   // reader.id
            int end = (int)Volatile.Read(ref *(uint*)(meta + 28));  // reader.read: bytes the kernel counts read
            if (id != _readerId)
            {
                _readerId = id;
                _position = 0;
                // What the writer overwrote before this page. Since "ring-buffer: Have mmapped ring buffer keep track
                // of missed events" (6.15, and stable kernels from 6.12) the kernel flags the page itself, as read()
                // copies are, and leaves the meta page's count at 0; kernels before it fill only the meta page.
                (ulong lost, bool exact) = Decoding.RingBuffer.RingBufferPageReader.MissedBefore(
                    new ReadOnlySpan<byte>(_data!.Pointer + (long)id * subbufSize, subbufSize), _layout);
                if (lost == 0)
                    (lost, exact) = (*(ulong*)(meta + 16), true);   // reader.lost_events, at this swap
                if (lost > 0)
                {
                    lock (_shard.Gate)
                        handler.OnEventsLost(lost, exact);
                }
            }
            if (end <= _position)
            {
                // Caught up: every record this CPU wrote before the ioctl is handled, so pairs waiting on it can close.
                _shard.States.CaughtUp(Cpu, before);
                return;
            }
            bool writersPage = id == lastRead;
            lastRead = id;
            var page = new ReadOnlySpan<byte>(_data!.Pointer + (long)id * subbufSize, subbufSize);
            int from = _position;
            lock (_shard.Gate)
                Decoding.RingBuffer.RingBufferPageReader.ReadAppended(page, _layout, end, ref _position, ref _timestamp, ref handler);
            _shard.CountBytes(_position - from);
            if (writersPage)
            {
                // Parsed up to what the ioctl counted read (the kernel swaps the page out once it is full, and would
                // not show this part again); every record up to the last one parsed is handled.
                _shard.States.CaughtUp(Cpu, _timestamp);
                return;
            }
        }
    }

    private readonly string _statsPath;
    private ulong _kernelLost;

    /// <summary>Counts what the pages said was lost as the kernel counts it in per_cpu/cpuN/stats (overrun, commit
    /// overrun, dropped events): a page with no room left for the count says only that some were (one test flood:
    /// 7,353 counted of 7,422), and a commit overrun is in no page. What the kernel has lost since the last settling
    /// is counted once, whichever page tells of it; where stats cannot be read, the pages' own counts are.</summary>
    private void SettleLosses(ref RecordHandler handler)
    {
        ulong count = handler.PendingLost;
        bool exact = !handler.PendingInexact;
        handler.PendingLost = 0;
        handler.PendingInexact = false;
        if (KernelLost() is ulong kernel)
        {
            count = kernel > _kernelLost ? kernel - _kernelLost : 0;
            _kernelLost = Math.Max(kernel, _kernelLost);
            exact = true;
        }
        if (count > 0)
        {
            lock (_shard.Gate)
                _shard.CountLost(count, exact, gap: false);
        }
    }

    private ulong? KernelLost()
    {
        try
        {
            ulong lost = 0;
            foreach (string line in File.ReadLines(_statsPath))
            {
                int colon = line.IndexOf(':');
                if (colon > 0 && line[..colon] is "overrun" or "commit overrun" or "dropped events"
                    && ulong.TryParse(line.AsSpan(colon + 1).Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out ulong n))
                    lost += n;
            }
            return lost;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>Reads pages until the kernel has none (EAGAIN), parsing as they arrive.</summary>
    private void Drain(Pipe pipe, ref RecordHandler handler)
    {
        int pageSize = _layout.PageSize;
        while (true)
        {
            Memory<byte> memory = pipe.Writer.GetMemory(pageSize);
            ulong before = ThreadStates.MonotonicNow(); // CLOCK_MONOTONIC ns, the instance's trace clock
            int n = Sys.TryRead(_fd, memory.Span[..pageSize]);
            if (n == -Errno.EAGAIN || n == 0)
            {
                // Caught up: every record this CPU wrote before the read is handled, so pairs waiting on it can close.
                _shard.States.CaughtUp(Cpu, before);
                return;
            }
            if (n < 0)
                throw new NativeErrorException($"read(trace_pipe_raw cpu{Cpu})", -n);
            pipe.Writer.Advance(n);
            _shard.CountBytes(n);
            pipe.Writer.FlushAsync().GetAwaiter().GetResult(); // inline scheduler, no back-pressure: completes here

            if (!pipe.Reader.TryRead(out ReadResult result))
                continue;
            ReadOnlySequence<byte> buffer = result.Buffer;
            try
            {
                lock (_shard.Gate) // uncontended unless the aggregator is compacting this shard
                    PageStreamParser.ParsePages(ref buffer, _layout, ref handler);
            }
            finally
            {
                pipe.Reader.AdvanceTo(buffer.Start, buffer.End);
            }
        }
    }
}
