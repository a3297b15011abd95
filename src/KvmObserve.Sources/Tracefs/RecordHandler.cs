using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.RingBuffer;

namespace KvmObserve.Sources.Tracefs;

/// <summary>Connects the page reader to the decoders and one CPU's aggregating sink. A struct: calls stay direct.
/// <paramref name="creations"/>, where the instance records thread creations, takes those records first. With
/// <paramref name="deferLosses"/>, a loss breaks pairs at once but how many were lost is left in
/// <see cref="PendingLost"/> for the reader to settle against the kernel's own count.</summary>
public struct RecordHandler(KvmEventDecoders decoders, Shard shard, ThreadCreations? creations = null, bool deferLosses = false)
    : IRingBufferRecordHandler
{
    /// <summary>Lost events the pages told of since the reader last settled them, and whether any count was unknown.</summary>
    internal ulong PendingLost;
    internal bool PendingInexact;

    private AggregatingSink _sink = new(shard);

    public void OnRecord(ulong timestamp, ReadOnlySpan<byte> payload)
    {
        if (creations is not null && creations.TryHandle(payload, shard))
            return;
        shard.Log?.Append(timestamp, payload);
        decoders.Decode(timestamp, shard.Cpu, payload, ref _sink);
    }

    public void OnEventsLost(ulong count, bool exact)
    {
        if (!deferLosses)
        {
            shard.CountLost(count, exact);
            return;
        }
        shard.States.NoteLoss(shard.Cpu);
        PendingLost += count;
        PendingInexact |= !exact;
    }

    public void OnCorruptPage(int offset) => shard.CountCorruptPage();
}
