using KvmObserve.Decoding.Events;

namespace KvmObserve.Sources.PerfCount;

/// <summary>The attach window: the system-wide counters that run while threads are still to be attached, and the
/// unattributed estimate they give.</summary>
public sealed partial class PerfCountingSource
{
    /// <summary>Starts the system-wide counters, after reading what the threads have counted so far.</summary>
    private void OpenWindow()
    {
        if (_windowOpen)
            return;
        Array.Copy(CollectThreads(), _attributedAtOpen, Kinds);
        Array.Copy(_systemTotals, _systemAtOpen, Kinds); // they kept their counts while off
        foreach (CounterGroup g in _systemGroups)
            g.Enable();
        _windowOpen = true;
        _openedAt = DateTime.UtcNow; // not the poll's time: a window can open and close within one poll's scan
        _windows++;
    }

    /// <summary>Stops the system-wide counters, then takes the window's last estimate from the threads and them. A
    /// stopped counter keeps its count, so the threads are read first: a running vCPU's events between the stop and
    /// the threads' read are counted by its thread and not by the system-wide totals, and are taken off the estimate
    /// (a lower bound); the read of the totals no longer widens that gap.</summary>
    private void CloseWindow()
    {
        foreach (CounterGroup g in _systemGroups)
            g.Disable();
        long[] attributed = CollectThreads();
        ReadSystemTotals();
        UpdateWindow(attributed);
        for (int k = 0; k < Kinds; k++)
        {
            _closedUnattributed[k] += _windowUnattributed[k];
            _windowUnattributed[k] = 0;
        }
        _windowOpen = false;
        _windowTime += DateTime.UtcNow - _openedAt;
        ReportEvents(attributed);
    }

    /// <summary>This window's unattributed events: system-wide less attributed since it opened. It only grows, and
    /// each reading is at or below the truth (system totals read first), so its maximum is kept; true when it grew.</summary>
    private bool UpdateWindow(long[] attributed)
    {
        bool grew = false;
        for (int k = 0; k < Kinds; k++)
        {
            long estimate = (_systemTotals[k] - _systemAtOpen[k]) - (attributed[k] - _attributedAtOpen[k]);
            if (estimate > _windowUnattributed[k])
            {
                _windowUnattributed[k] = estimate;
                grew = true;
            }
        }
        return grew;
    }

    /// <summary>kvmobserve_events_total: what the threads counted plus what no thread did.</summary>
    private void ReportEvents(long[] attributed)
    {
        for (int k = 0; k < Kinds; k++)
        {
            long total = attributed[k] + _closedUnattributed[k] + _windowUnattributed[k];
            long delta = total - _reportedEvents[k];
            if (delta > 0)
            {
                _shard!.AddEvents((KvmEventKind)k, delta);
                _reportedEvents[k] = total;
            }
        }
    }

    /// <summary>Collects every attached thread; returns the events per kind attributed so far (retired included).</summary>
    private long[] CollectThreads()
    {
        long[] attributed = _attributed; // one buffer, read by the caller before the next collect
        Array.Copy(_retiredTotals, attributed, Kinds);
        foreach (ThreadCounters t in _threads.Values)
        {
            t.Collect(_shard!.Series);
            for (int k = 0; k < attributed.Length; k++)
                attributed[k] += t.Totals[k];
        }
        return attributed;
    }

    private void ReadSystemTotals()
    {
        Span<long> values = stackalloc long[_totalsPlan!.Counters.Count];
        Span<long> totals = stackalloc long[Kinds];
        foreach (CounterGroup g in _systemGroups)
        {
            if (!g.TryRead(values))
                return; // keep the last reading: a partial sum would look like fewer events
            foreach ((KvmEventKind kind, int counter) in _totalsPlan.Totals)
                totals[(int)kind] += values[counter];
        }
        for (int k = 0; k < Kinds; k++)
            _systemTotals[k] = Math.Max(_systemTotals[k], totals[k]);
    }
}
