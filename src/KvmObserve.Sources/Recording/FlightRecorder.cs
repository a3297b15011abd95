using System.Buffers.Binary;
using System.Globalization;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Aggregation.Recording;

namespace KvmObserve.Sources.Recording;

/// <summary>
/// Keeps the last seconds of every CPU's raw records in memory (a <see cref="RecordLog"/> per shard) and, when a storm
/// is detected, writes the records from <see cref="Before"/> ahead of the detection until the recording's length has
/// passed, to one file (<see cref="FlightRecording"/>). One recording at a time; a storm that starts while one is being
/// kept is in it. Works with the record sources (tracefs, perf); a counting source has no records.
/// </summary>
public sealed class FlightRecorder : IDisposable
{
    /// <summary>How far before the detection a recording starts: the detector needs about a second to be sure.</summary>
    public static readonly TimeSpan Before = TimeSpan.FromSeconds(2);

    /// <summary>How long after a recording's end it is written: records reach the agent up to a poll timeout late.</summary>
    private static readonly TimeSpan ReaderLag = TimeSpan.FromMilliseconds(300);

    private readonly Aggregator _aggregator;
    private readonly string _directory;
    private readonly TimeSpan _length;
    private readonly string _source;
    private readonly IReadOnlyDictionary<string, string> _formats;
    private readonly object _gate = new();
    private readonly Queue<(ulong Ns, int Tid, ulong Run, ulong Wait)> _schedstat = new();
    private (string Vm, ulong From, ulong To)? _pending;

    /// <param name="bytesPerCpu">Memory per CPU for records: at 50-byte records and 100,000 a second, 8 MiB keeps the
    /// last 1.6 s; records older than that when the storm is detected are not in the file, and its header says so.</param>
    public FlightRecorder(Aggregator aggregator, string directory, TimeSpan length, string source,
        IReadOnlyDictionary<string, string> formats, int bytesPerCpu)
    {
        _aggregator = aggregator;
        _directory = directory;
        _length = length;
        _source = source;
        _formats = formats;
        Directory.CreateDirectory(directory);
        foreach (Shard shard in aggregator.Shards)
        {
            lock (shard.Gate)
                shard.Log = new RecordLog(bytesPerCpu);
        }
    }

    /// <summary>Memory per CPU by default: 64 MiB over all CPUs, at least 2 MiB each.</summary>
    public static int DefaultBytesPerCpu(int cpus) => Math.Max(2 << 20, (64 << 20) / Math.Max(1, cpus));

    /// <summary>Keeps a schedstat reading of a VM thread (SchedstatCollector.Sampled), so replays have steal too.</summary>
    public void OnSchedstat(int tid, ulong runNs, ulong waitNs)
    {
        lock (_gate)
        {
            ulong now = ThreadStates.MonotonicNow();
            _schedstat.Enqueue((now, tid, runNs, waitNs));
            ulong keep = (ulong)((_length + Before + Before).TotalMilliseconds * 1e6);
            while (_schedstat.Count > 0 && _schedstat.Peek().Ns + keep < now)
                _schedstat.Dequeue();
        }
    }

    /// <summary>Starts a recording for a storm detected at <paramref name="detectedNs"/> (CLOCK_MONOTONIC); false
    /// when one is already being kept.</summary>
    public bool Trigger(string vm, ulong detectedNs)
    {
        lock (_gate)
        {
            if (_pending is not null)
                return false;
            ulong from = detectedNs - (ulong)Before.Ticks * 100;
            _pending = (vm, from, from + (ulong)_length.Ticks * 100);
            return true;
        }
    }

    /// <summary>Writes the pending recording once its time has passed; returns its VM and path, or null.</summary>
    public (string Vm, string Path)? Poll(ulong nowNs)
    {
        (string Vm, ulong From, ulong To) p;
        lock (_gate)
        {
            if (_pending is not { } pending || nowNs < pending.To + (ulong)ReaderLag.Ticks * 100)
                return null;
            p = pending;
            _pending = null;
        }
        return (p.Vm, Write(p.Vm, p.From, p.To));
    }

    private string Write(string vm, ulong from, ulong to)
    {
        var records = new List<RecordedRecord>();
        bool complete = true;
        foreach (Shard shard in _aggregator.Shards)
        {
            lock (shard.Gate)
            {
                if (shard.Log is not RecordLog log)
                    continue;
                ulong oldest = ulong.MaxValue;
                log.CopyOut(0, to, (ts, payload) =>
                {
                    oldest = Math.Min(oldest, ts);
                    if (ts >= from)
                        records.Add(new RecordedRecord(ts, (ushort)shard.Cpu, FlightRecording.TracepointKind, payload.ToArray()));
                });
                if (log.Reused > 0 && oldest > from)
                    complete = false; // the ring had already dropped part of the range
            }
        }
        var tids = new HashSet<int>();
        foreach (RecordedRecord r in records)
        {
            if (r.Payload.Length >= 8)
                tids.Add(BinaryPrimitives.ReadInt32LittleEndian(r.Payload.Span[4..])); // common_pid
        }
        lock (_gate)
        {
            foreach ((ulong ns, int tid, ulong run, ulong wait) in _schedstat)
            {
                if (ns >= from && ns <= to)
                {
                    records.Add(new RecordedRecord(ns, 0, FlightRecording.SchedstatKind, FlightRecording.SchedstatPayload(tid, run, wait)));
                    tids.Add(tid);
                }
            }
        }
        records.Sort(static (a, b) => a.Timestamp.CompareTo(b.Timestamp));

        var header = new RecordingHeader
        {
            Created = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
            Host = Environment.MachineName,
            Kernel = Environment.OSVersion.VersionString,
            Source = _source,
            Reason = "exit storm",
            Vm = vm,
            FromNs = from,
            ToNs = to,
            Records = records.Count,
            Complete = complete,
            Formats = new Dictionary<string, string>(_formats),
        };
        foreach (int tid in tids.Order())
        {
            ThreadIdentity who = _aggregator.Registry.Resolve(tid);
            header.Threads.Add(new RecordedThread(tid, who.Vm.Pid, who.Vm.Name, who.Vm.Vmm, who.Vm.Uuid, who.Vcpu));
        }

        string name = $"storm-{Sanitize(vm)}-{DateTime.UtcNow:yyyyMMdd'T'HHmmss'Z'}.kvmrec";
        string path = Path.Combine(_directory, name);
        string temp = path + ".tmp";
        using (FileStream file = File.Create(temp))
            FlightRecording.Write(file, header, records);
        File.Move(temp, path, overwrite: true);
        return path;
    }

    private static string Sanitize(string vm) =>
        new(vm.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_').Take(64).ToArray());

    public void Dispose()
    {
        foreach (Shard shard in _aggregator.Shards)
        {
            lock (shard.Gate)
                shard.Log = null;
        }
    }
}
