using KvmObserve.Sources;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Agent.Overhead;

/// <summary>A plain drain of the same tracepoints into nowhere: a private tracefs instance with the same events,
/// buffer size, wake-up watermark and trace clock as the tracefs source, each CPU's trace_pipe_raw read (as `cat` reads it: woken
/// at the watermark, then read until empty) and thrown away. What reading records costs with no decoding at all.</summary>
public sealed class DrainObserver(string tracefsRoot, IReadOnlyList<(string System, string Name)> events, bool splice = false) : IObserver, IDisposable
{
    private TracefsInstance? _instance;
    private readonly List<Thread> _readers = new();
    private volatile bool _stop;
    private long _bytes, _mark;

    public string Name => splice ? "drain (trace_pipe_raw spliced to nowhere)" : "drain (trace_pipe_raw to nowhere)";

    public void Start()
    {
        _instance = TracefsInstance.Create(tracefsRoot, "drain");
        _instance.SetBufferSizeKb(4096);
        _instance.SetBufferPercent(25);
        _instance.SetTraceClock("mono"); // as the tracefs source sets it: the same kernel work per record
        foreach ((string system, string name) in events)
            _instance.Enable(system, name);
        foreach (int cpu in _instance.Cpus())
        {
            var fd = Native.Sys.Open(_instance.PipeRawPath(cpu), nonBlocking: true);
            var thread = new Thread(() => { if (splice) Splice(fd); else Drain(fd); }) { IsBackground = true, Name = $"drain cpu{cpu}" };
            _readers.Add(thread);
            thread.Start();
        }
    }

    private void Drain(Native.SafeFd fd)
    {
        using (fd)
        using (var wake = new Native.SafeFd(Native.Sys.EventFd()))
        {
            var buffer = new byte[128 * 1024];
            while (!_stop)
            {
                if (Native.Sys.PollReadable(fd, wake, 100) != 1)
                    continue;
                ReadToEmpty(fd, buffer);
            }
            ReadToEmpty(fd, buffer); // what is left below the watermark when the run ends: read, as cat would at its end
        }
    }

    private void ReadToEmpty(Native.SafeFd fd, byte[] buffer)
    {
        int n;
        while ((n = Native.Sys.TryRead(fd, buffer)) > 0)
            Interlocked.Add(ref _bytes, n);
    }

    /// <summary>The copy-free drain: whole ring-buffer pages moved into a pipe by splice(2), and from the pipe to
    /// /dev/null, never copied to user space (the kernel splices full pages only: a partial page waits to fill).</summary>
    private void Splice(Native.SafeFd fd)
    {
        (Native.SafeFd pipeRead, Native.SafeFd pipeWrite) = Native.Sys.Pipe();
        using (fd)
        using (pipeRead)
        using (pipeWrite)
        using (var devNull = Native.Sys.Open("/dev/null", write: true))
        using (var wake = new Native.SafeFd(Native.Sys.EventFd()))
        {
            while (!_stop)
            {
                if (Native.Sys.PollReadable(fd, wake, 100) != 1)
                    continue;
                if (SpliceToEmpty(fd, pipeRead, pipeWrite, devNull) < 0)
                    Thread.Sleep(1); // readable, yet no full page to splice: poll says readable until a page is read
            }
            // The run's full pages below the wake-up watermark (all of them in a short run): spliced, as the plain
            // drain reads its rest at the end.
            SpliceToEmpty(fd, pipeRead, pipeWrite, devNull);
        }
    }

    private long SpliceToEmpty(Native.SafeFd fd, Native.SafeFd pipeRead, Native.SafeFd pipeWrite, Native.SafeFd devNull)
    {
        long n;
        while ((n = Native.Sys.TrySplice(fd, pipeWrite, 64 * 1024, nonBlocking: true)) > 0)
        {
            Interlocked.Add(ref _bytes, n);
            for (long left = n; left > 0;)
                left -= Math.Max(0, Native.Sys.TrySplice(pipeRead, devNull, (int)left, nonBlocking: false));
        }
        return n;
    }

    public void Mark() => _mark = Interlocked.Read(ref _bytes);

    /// <summary>Observed: bytes drained (records and page headers), not events.</summary>
    public ObserverRun Finish(long events)
    {
        StopReaders(); // after their last reads: the run's records below the wake-up watermark are counted too
        long read = Interlocked.Read(ref _bytes) - _mark;
        Dispose();
        return new ObserverRun(read, -1);
    }

    private void StopReaders()
    {
        _stop = true;
        foreach (Thread t in _readers)
            t.Join();
        _readers.Clear();
    }

    public void Dispose()
    {
        StopReaders();
        _instance?.Dispose();
        _instance = null;
    }
}
