using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Perf;

namespace KvmObserve.Sources.Perf;

/// <summary>Connects the perf ring reader to the same decoders the tracefs source uses (a sample's raw data is the
/// trace record, common_type first) and to one CPU's aggregating sink.</summary>
internal struct SampleHandler(KvmEventDecoders decoders, Shard shard, LostTally lost) : IPerfRecordHandler
{
    private AggregatingSink _sink = new(shard);

    public void OnSample(ulong time, int pid, int tid, int cpu, ReadOnlySpan<byte> raw)
    {
        shard.NoteProcess(tid, pid);
        shard.Log?.Append(time, raw);
        decoders.Decode(time, shard.Cpu, raw, ref _sink);
    }

    public void OnLost(ulong count)
    {
        lost.FromRecords += (long)count;
        shard.States.NoteLoss(shard.Cpu); // here, in stream order: pairs open across this gap are dropped
    }

    public void OnMalformedRecord(uint type) => shard.CountDecodeError(KvmEventKind.None);

    public void OnCorruptRing(ulong position) => shard.CountCorruptPage();
}

/// <summary>Samples one ring lost, as PERF_RECORD_LOST said and as the events' own PERF_FORMAT_LOST counts say. The
/// kernel writes a LOST record only when it next writes to the ring, so after a flood that ends the records lag; the
/// per-event counts never do.</summary>
internal sealed class LostTally
{
    public long FromRecords;
    public long FromEvents;
    public long Reported;

    /// <summary>What to add to the shard's lost count now.</summary>
    public long TakeNew()
    {
        long total = Math.Max(FromRecords, FromEvents);
        long delta = total - Reported;
        if (delta <= 0)
            return 0;
        Reported = total;
        return delta;
    }
}
