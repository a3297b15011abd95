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

    public CpuReader(int cpu, string pipeRawPath, SafeFd wake, PageHeaderFormat layout, KvmEventDecoders decoders,
        Shard shard, int pollTimeoutMs)
    {
        Cpu = cpu;
        _fd = Sys.Open(pipeRawPath, nonBlocking: true);
        _wake = wake;
        _layout = layout;
        _decoders = decoders;
        _shard = shard;
        _pollTimeoutMs = pollTimeoutMs;
        _thread = new Thread(Run) { IsBackground = true, Name = $"kvmobserve cpu{cpu}" };
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
        _fd.Dispose();
    }

    private void Run()
    {
        var pipe = new Pipe(new PipeOptions(
            readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline,
            pauseWriterThreshold: 0, minimumSegmentSize: _layout.PageSize, useSynchronizationContext: false));
        var handler = new RecordHandler(_decoders, _shard);
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
                Drain(pipe, ref handler);
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
            pipe.Writer.Complete();
            pipe.Reader.Complete();
        }
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
                _shard.States.Advance(Cpu, before);
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
