using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;

namespace KvmObserve.Sources.PerfCount;

/// <summary>One attached thread: its counter group, and what of it has been added to the series already (the series
/// grow by deltas, so a thread's counts stay in them after it exits and its group is closed).</summary>
internal sealed class ThreadCounters(int tid, CounterPlan plan, CounterGroup group) : IDisposable
{
    private readonly long[] _values = new long[plan.Counters.Count];
    private readonly long[] _reported = new long[plan.Outputs.Count];

    public int Tid { get; } = tid;
    public CounterPlan Plan { get; } = plan;
    public int Fds => group.Size;

    /// <summary>This thread's events per kind at the last read (for what is attributed).</summary>
    public long[] Totals { get; } = new long[Enum.GetValues<KvmEventKind>().Length];

    /// <summary>Reads the group and adds what is new to <paramref name="series"/>; false when the read failed.</summary>
    public bool Collect(SeriesTable series)
    {
        if (!group.TryRead(_values))
            return false;
        IReadOnlyList<OutputSpec> outputs = Plan.Outputs;
        for (int i = 0; i < outputs.Count; i++)
        {
            OutputSpec o = outputs[i];
            long value = CounterPlan.Evaluate(o, _values);
            long delta = value - _reported[i];
            if (delta <= 0)
                continue; // a zero series is not created; counts never go back
            series.Counter(new SeriesKey(Tid, -1, o.Family, o.Label1, o.Label2)) += delta;
            _reported[i] = value;
        }
        foreach ((KvmEventKind kind, int counter) in Plan.Totals)
            Totals[(int)kind] = _values[counter];
        return true;
    }

    public void Dispose() => group.Dispose();
}
