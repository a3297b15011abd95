namespace KvmObserve.Decoding.RingBuffer;

/// <summary>Receives what <see cref="RingBufferPageReader"/> finds on a page. Implemented by structs: no delegates.</summary>
public interface IRingBufferRecordHandler
{
    /// <summary>One data record; <paramref name="payload"/> is valid only during the call.</summary>
    void OnRecord(ulong timestamp, ReadOnlySpan<byte> payload);

    /// <summary>The writer overwrote or dropped events before this page. <paramref name="exact"/> is false when the
    /// kernel had no room to store the count, and 1 stands for "at least one".</summary>
    void OnEventsLost(ulong count, bool exact);

    /// <summary>The page is inconsistent from <paramref name="offset"/> (of its data area) on; the rest is skipped.</summary>
    void OnCorruptPage(int offset);
}
