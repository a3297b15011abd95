using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Sources.Recording;

/// <summary>
/// Feeds a flight recording through the same decoders and aggregator as a live source, with its threads named as the
/// recording says. At speed 1 records arrive at their recorded pace, their timestamps moved to now; at speed 0 they
/// arrive as fast as they can be decoded. Looping replays the recording again and again, as one continuing stream.
/// </summary>
public sealed class ReplaySource : IEventSource
{
    private readonly Aggregator _aggregator;
    private readonly SchedstatCollector? _schedstat;
    private readonly RecordingHeader _header;
    private readonly List<RecordedRecord> _records;
    private readonly double _speed;
    private readonly bool _loop;
    private readonly Dictionary<int, (VmInfo Vm, int Vcpu)> _threads = new();
    private readonly Dictionary<int, (ulong Run, ulong Wait)> _schedstatSpan;
    private Thread? _thread;
    private volatile bool _stopping;

    public ReplaySource(string path, Aggregator aggregator, SchedstatCollector? schedstat, double speed, bool loop)
        : this(FlightRecording.Read(File.ReadAllBytes(path)), aggregator, schedstat, speed, loop)
    {
    }

    public ReplaySource(RecordingHeader header, List<RecordedRecord> records, Aggregator aggregator, SchedstatCollector? schedstat,
        double speed, bool loop)
        : this((header, records), aggregator, schedstat, speed, loop)
    {
    }

    private ReplaySource((RecordingHeader Header, List<RecordedRecord> Records) recording, Aggregator aggregator,
        SchedstatCollector? schedstat, double speed, bool loop)
    {
        (_header, _records) = recording;
        _aggregator = aggregator;
        _schedstat = schedstat;
        _speed = speed;
        _loop = loop;
        Decoders = new KvmEventDecoders(tp =>
            _header.Formats.TryGetValue(tp.FullName, out string? text) ? EventFormatParser.Parse(tp.System, text) : null);
        Tracepoints = Decoders.Statuses.Select(s => new TracepointState(s, s.Available)).ToList();
        var firstLast = new Dictionary<int, (ulong Run0, ulong Wait0, ulong Run1, ulong Wait1)>();
        foreach (RecordedRecord r in _records.Where(r => r.Kind == FlightRecording.SchedstatKind))
        {
            (int tid, ulong run, ulong wait) = FlightRecording.ParseSchedstat(r.Payload.Span);
            firstLast[tid] = firstLast.TryGetValue(tid, out var fl) ? fl with { Run1 = run, Wait1 = wait } : (run, wait, run, wait);
        }
        _schedstatSpan = firstLast.ToDictionary(kv => kv.Key, kv => (kv.Value.Run1 - kv.Value.Run0, kv.Value.Wait1 - kv.Value.Wait0));
        foreach (RecordedThread t in _header.Threads)
            _threads[t.Tid] = (aggregator.Registry.Seed(t.Tid, t.Pid, t.Vm, t.Vmm, t.Uuid, t.Vcpu), t.Vcpu);
    }

    public string Name => "replay";

    public RecordingHeader Header => _header;

    public IReadOnlyList<TracepointState> Tracepoints { get; }

    public KvmEventDecoders Decoders { get; }

    /// <summary>Times the whole recording has been delivered (schedstat totals continue across passes).</summary>
    private int _passes;

    public void Start()
    {
        _thread = new Thread(Run) { IsBackground = true, Name = "kvmobserve replay" };
        _thread.Start();
    }

    /// <summary>Replays the whole recording once on the calling thread, as fast as it goes.</summary>
    public void RunOnce()
    {
        var sinks = _aggregator.Shards.Select(s => new AggregatingSink(s)).ToArray();
        Deliver(sinks, ThreadStates.MonotonicNow(), paced: false);
    }

    private void Run()
    {
        var sinks = _aggregator.Shards.Select(s => new AggregatingSink(s)).ToArray();
        ulong start = ThreadStates.MonotonicNow();
        do
        {
            ulong passStart = start;
            start = Deliver(sinks, passStart, paced: _speed > 0) + 1_000_000; // the next pass follows a ms later
        }
        while (_loop && !_stopping);
    }

    /// <summary>One pass; returns the rebased timestamp of its last record.</summary>
    private ulong Deliver(AggregatingSink[] sinks, ulong baseNs, bool paced)
    {
        if (_records.Count == 0)
        {
            Thread.Sleep(100);
            return baseNs;
        }
        Shard[] shards = _aggregator.Shards.ToArray();
        ulong first = _records[0].Timestamp;
        ulong last = baseNs;
        ulong previous = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        foreach (RecordedRecord r in _records)
        {
            if (_stopping)
                break;
            // A record earlier than the one before it (the file promises order; a damaged one may not keep it) is
            // delivered at that one's time: unsigned, its offset would wrap and pacing would wait for centuries.
            ulong offset = Math.Max(r.Timestamp > first ? r.Timestamp - first : 0, previous);
            previous = offset;
            if (paced)
            {
                double dueMs = offset / 1e6 / _speed;
                double wait = dueMs - clock.Elapsed.TotalMilliseconds;
                if (wait > 1)
                    Thread.Sleep(TimeSpan.FromMilliseconds(Math.Min(wait, 50)));
                while (!_stopping && clock.Elapsed.TotalMilliseconds < dueMs - 1)
                    Thread.Sleep(TimeSpan.FromMilliseconds(Math.Min(dueMs - clock.Elapsed.TotalMilliseconds, 50)));
            }
            last = baseNs + offset;
            if (r.Kind == FlightRecording.SchedstatKind)
            {
                (int tid, ulong run, ulong wait) = FlightRecording.ParseSchedstat(r.Payload.Span);
                if (_schedstat is not null && _threads.TryGetValue(tid, out (VmInfo Vm, int Vcpu) who))
                {
                    // Totals continue across passes: pass p adds p times what the whole recording added.
                    (ulong runSpan, ulong waitSpan) = _schedstatSpan[tid];
                    _schedstat.Record(who.Vm, tid, who.Vcpu, run + (ulong)_passes * runSpan, wait + (ulong)_passes * waitSpan);
                }
                continue;
            }
            Shard shard = shards[r.Cpu % shards.Length];
            lock (shard.Gate)
                Decoders.Decode(last, shard.Cpu, r.Payload.Span, ref sinks[r.Cpu % shards.Length]);
            for (int i = 0; i < shards.Length; i++)
                shards[i].States.Advance(shards[i].Cpu, last); // in time order: every CPU has given all it had before this
            shards[0].States.CaughtUp(shards[0].Cpu, last);
        }
        if (!_stopping)
            _passes++;
        return last;
    }

    /// <summary>Waits for a replay that does not loop to deliver its last record.</summary>
    public bool WaitForEnd(TimeSpan timeout) => _thread?.Join(timeout) ?? true;

    public void Stop()
    {
        _stopping = true;
        _thread?.Join();
        _thread = null;
    }

    public void Dispose() => Stop();
}
