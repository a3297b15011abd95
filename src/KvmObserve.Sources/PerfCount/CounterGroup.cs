using System.Buffers.Binary;
using KvmObserve.Native;
using KvmObserve.Native.Perf;

namespace KvmObserve.Sources.PerfCount;

/// <summary>
/// The counters of one <see cref="CounterPlan"/> on one thread (or one CPU), as a perf group: the leader is the
/// first counter, and one read() of it with PERF_FORMAT_GROUP returns every member's count at the same instant:
/// <code>| u64 nr | u64 value[nr] |</code>
/// Opened disabled, filters set, then enabled through the leader. Every fd is a SafeFd.
/// </summary>
internal sealed class CounterGroup : IDisposable
{
    private readonly SafeFd[] _fds;
    private readonly byte[] _buffer;

    private CounterGroup(SafeFd[] fds)
    {
        _fds = fds;
        _buffer = new byte[8 + 8 * fds.Length];
    }

    public int Size => _fds.Length;

    /// <summary>Opens the plan's counters for thread <paramref name="pid"/> (any CPU) or CPU <paramref name="cpu"/>
    /// (every thread). Returns null with errno when the kernel refuses; a refused filter throws, naming it.</summary>
    public static CounterGroup? TryOpen(CounterPlan plan, int pid, int cpu, out int errno)
    {
        var fds = new List<SafeFd>(plan.Counters.Count);
        try
        {
            foreach (CounterSpec spec in plan.Counters)
            {
                var attr = new PerfEventAttr
                {
                    Type = PerfConstants.TypeTracepoint,
                    Config = (ulong)spec.Id,
                    ReadFormat = PerfConstants.FormatGroup,
                    Flags = fds.Count == 0 ? (ulong)PerfAttrFlags.Disabled : 0, // members follow their leader
                };
                SafeFd? fd = PerfEvent.TryOpen(attr, pid, cpu, fds.Count == 0 ? null : fds[0], out errno);
                if (fd is null)
                {
                    Dispose(fds);
                    return null;
                }
                fds.Add(fd);
                if (spec.Filter is not null && PerfEvent.TrySetFilter(fd, spec.Filter) is int r and < 0)
                    throw new NativeErrorException($"PERF_EVENT_IOC_SET_FILTER({spec.Tracepoint.FullName}: \"{spec.Filter}\")", -r);
            }
            PerfEvent.Enable(fds[0]);
        }
        catch
        {
            Dispose(fds);
            throw;
        }
        errno = 0;
        return new CounterGroup(fds.ToArray());
    }

    /// <summary>Reads every member's count into <paramref name="values"/>; false when the read failed.</summary>
    public bool TryRead(Span<long> values)
    {
        int n = PerfEvent.TryRead(_fds[0], _buffer);
        if (n < 8)
            return false;
        int nr = (int)BinaryPrimitives.ReadUInt64LittleEndian(_buffer);
        if (nr != _fds.Length || n < 8 + 8 * nr)
            return false;
        for (int i = 0; i < nr; i++)
            values[i] = (long)BinaryPrimitives.ReadUInt64LittleEndian(_buffer.AsSpan(8 + 8 * i));
        return true;
    }

    /// <summary>Starts the group counting again (the leader carries its members); the counts go on from where they stopped.</summary>
    public void Enable() => PerfEvent.Enable(_fds[0]);

    /// <summary>Stops the group counting; the counts keep their values and can still be read.</summary>
    public void Disable() => PerfEvent.Disable(_fds[0]);

    public void Dispose() => Dispose(_fds);

    private static void Dispose(IEnumerable<SafeFd> fds)
    {
        foreach (SafeFd fd in fds)
            fd.Dispose();
    }
}
