namespace KvmObserve.Decoding.Perf;

/// <summary>Receives what <see cref="PerfRingReader"/> finds in a perf ring. Implemented by structs: no delegates.</summary>
public interface IPerfRecordHandler
{
    /// <summary>A PERF_RECORD_SAMPLE of thread <paramref name="tid"/> of process <paramref name="pid"/>;
    /// <paramref name="raw"/> (the tracepoint record) is valid only during the call.</summary>
    void OnSample(ulong time, int pid, int tid, int cpu, ReadOnlySpan<byte> raw);

    /// <summary>PERF_RECORD_LOST or PERF_RECORD_LOST_SAMPLES: the kernel dropped this many samples.</summary>
    void OnLost(ulong count);

    /// <summary>A record whose header is sound but whose body does not fit the sample layout; it is skipped.</summary>
    void OnMalformedRecord(uint type);

    /// <summary>A header that cannot be right (size 0, unaligned, past the head): everything up to the head is
    /// skipped, since the next record boundary is unknown.</summary>
    void OnCorruptRing(ulong position);
}
