using System.Globalization;

namespace KvmObserve.Aggregation.Discovery;

/// <summary>
/// Run and steal time of each VM's threads from /proc/PID/task/TID/schedstat: a vCPU thread's run_delay (runnable,
/// not running) is the CPU time its guest was denied. Sampled by the housekeeping loop and at each scrape; a thread's
/// last reading is kept after it exits, so totals never go back. schedstat is in nanoseconds; totals are in seconds.
/// </summary>
public sealed class SchedstatCollector(VmRegistry registry, string procRoot = "/proc")
{
    private readonly object _gate = new();
    private readonly Dictionary<(VmInfo Vm, int Tid), Reading> _threads = new();

    private readonly record struct Reading(int Vcpu, ulong RunNs, ulong WaitNs);

    /// <summary>Per VM name and vCPU (-1: the VMM's other threads together): run and steal seconds.</summary>
    public readonly record struct Totals(string Vm, int Vcpu, double RunSeconds, double StealSeconds);

    /// <summary>Reads schedstat of every thread of every running VM.</summary>
    public void Sample()
    {
        Span<byte> text = stackalloc byte[128]; // "run_ns wait_ns timeslices\n"
        foreach (VmInfo vm in registry.Vms())
        {
            if (vm.ExitedAt is not null)
                continue;
            foreach ((int tid, int vcpu) in registry.ThreadsOf(vm))
            {
                string path = Path.Combine(procRoot, vm.Pid.ToString(CultureInfo.InvariantCulture), "task",
                    tid.ToString(CultureInfo.InvariantCulture), "schedstat");
                int n = KvmObserve.Native.Sys.TryReadSmallFile(path, text); // no FileStream: a read of every VM thread, twice a second
                if (n <= 0 || ProcfsParsers.ParseSchedstat(text[..n]) is not (ulong run, ulong wait))
                    continue;
                lock (_gate)
                    _threads[(vm, tid)] = new Reading(vcpu, run, wait);
                Sampled?.Invoke(tid, run, wait);
            }
        }
    }

    /// <summary>Called with each reading (tid, run ns, run_delay ns): the flight recorder keeps them.</summary>
    public Action<int, ulong, ulong>? Sampled { get; set; }

    /// <summary>A reading that did not come from procfs (a replayed recording's).</summary>
    public void Record(VmInfo vm, int tid, int vcpu, ulong runNs, ulong waitNs)
    {
        lock (_gate)
            _threads[(vm, tid)] = new Reading(vcpu, runNs, waitNs);
    }

    /// <summary>Drops the readings of a VM name whose series have expired.</summary>
    public void Forget(string vmName)
    {
        lock (_gate)
        {
            foreach ((VmInfo Vm, int Tid) key in _threads.Keys.Where(k => k.Vm.Name == vmName).ToList())
                _threads.Remove(key);
        }
    }

    /// <summary>Samples, then sums per VM name and vCPU (a VM restarted under its name continues its totals).</summary>
    public IReadOnlyList<Totals> Collect()
    {
        Sample();
        var sums = new Dictionary<(string, int), (ulong Run, ulong Wait)>();
        lock (_gate)
        {
            foreach (((VmInfo vm, _), Reading r) in _threads)
            {
                (ulong run, ulong wait) = sums.GetValueOrDefault((vm.Name, r.Vcpu));
                sums[(vm.Name, r.Vcpu)] = (run + r.RunNs, wait + r.WaitNs);
            }
        }
        return sums.Select(kv => new Totals(kv.Key.Item1, kv.Key.Item2, kv.Value.Run / 1e9, kv.Value.Wait / 1e9))
            .OrderBy(t => t.Vm, StringComparer.Ordinal).ThenBy(t => t.Vcpu).ToList();
    }
}
