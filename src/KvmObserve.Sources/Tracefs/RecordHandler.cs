using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.RingBuffer;

namespace KvmObserve.Sources.Tracefs;

/// <summary>Connects the page reader to the decoders and one CPU's aggregating sink. A struct: calls stay direct.</summary>
public struct RecordHandler(KvmEventDecoders decoders, Shard shard) : IRingBufferRecordHandler
{
    private AggregatingSink _sink = new(shard);

    public void OnRecord(ulong timestamp, ReadOnlySpan<byte> payload)
    {
        shard.Log?.Append(timestamp, payload);
        decoders.Decode(timestamp, shard.Cpu, payload, ref _sink);
    }

    public void OnEventsLost(ulong count, bool exact) => shard.CountLost(count, exact);

    public void OnCorruptPage(int offset) => shard.CountCorruptPage();
}
