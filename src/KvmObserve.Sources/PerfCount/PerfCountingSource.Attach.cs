using KvmObserve.Aggregation.Discovery;

namespace KvmObserve.Sources.PerfCount;

/// <summary>Which threads of which VMs have counters: attaching new ones, retiring those gone.</summary>
public sealed partial class PerfCountingSource
{
    /// <summary>Attaches to the threads of every running VM that have no counters yet, and retires the counters of
    /// threads gone. Complete: every VM has vCPU fds, and a thread with counters for each (its named vCPU threads; every
    /// thread of a VMM that does not name them). By name: complete, and every VM's vCPU fds matched to the threads
    /// named for them (in a VMM that does not name them, the thread that will run a vCPU may not exist yet, so one
    /// scan more confirms it). Changed: a thread was attached. While a window is open (<paramref name="deciding"/>: it
    /// closes on what this finds), each VM's fds are walked afresh, not taken from the registry's cache.</summary>
    private (bool Complete, bool ByName, bool Changed) AttachAndRetire(bool deciding)
    {
        var alive = new HashSet<int>();
        DateTime now = DateTime.UtcNow;
        bool complete = true, byName = true, changed = false;
        foreach (VmInfo vm in _aggregator.Registry.Vms())
        {
            if (vm.ExitedAt is not null)
                continue;
            IReadOnlyList<(int Tid, int Vcpu)> threads = _aggregator.Registry.ThreadsOf(vm);
            if (threads.Count == 0)
                continue; // exited since the scan
            // VMMs that name their vCPU threads (QEMU, load) get the exit counters on those only; others on every thread.
            // Once named, always: a VMM between two VMs has no vCPU thread, and is no less one that names them.
            if (threads.Any(t => t.Vcpu >= 0))
                _namingVmms.Add(vm);
            bool named = _namingVmms.Contains(vm);
            IReadOnlyList<int> vcpuFds = _aggregator.Registry.VcpuFds(vm, fresh: deciding); // HoldsVmFd reads this walk
            foreach ((int tid, int vcpu) in threads)
            {
                alive.Add(tid);
                // With no vCPU fd, no thread of it can run a vCPU. A VMM that creates its vCPU fds before their threads
                // (as `load` and Firecracker do) looks, until those threads are named, like one that does not name
                // them: every thread gets the vCPU plan then, and goes back to the kvmmmu counters once the VMM is
                // seen to name them. (They kept it: `overhead`'s VMM ran with 145 counters on each of its ~20
                // threads, every fold read them all, and the agent held 1,400 fds where 300 do.)
                CounterPlan plan = vcpu >= 0 || (!named && vcpuFds.Count > 0) ? _vcpuPlan! : _otherPlan!;
                if (_threads.TryGetValue(tid, out ThreadCounters? have))
                {
                    if (have.Plan == plan)
                        continue;
                    Retire(have); // its counts so far stay in its series; the new group counts on from there
                }
                if (Attach(tid, plan, out bool exited))
                {
                    changed = true;
                }
                else if (exited)
                {
                    alive.Remove(tid);
                }
            }
            bool counted = vcpuFds.Count > 0
                ? (named
                    ? vcpuFds.All(i => threads.Any(t => t.Vcpu == i && _threads.TryGetValue(t.Tid, out ThreadCounters? c) && c.Plan == _vcpuPlan))
                    // A thread that exited since the scan needs no counters: it opened a window until the next scan
                    : threads.All(t => _threads.ContainsKey(t.Tid) || !alive.Contains(t.Tid)))
                : !SettingUp(vm, now);
            if (vcpuFds.Count > 0)
                _settingUp.Remove(vm);
            if (counted)
                _countedVcpuFds[vm] = vcpuFds;
            else
                _countedVcpuFds.Remove(vm);
            complete &= counted;
            byName &= named;
        }
        ForgetExited(_countedVcpuFds);
        ForgetExited(_settingUp);
        _namingVmms.RemoveWhere(v => v.ExitedAt is not null);
        foreach (ThreadCounters t in _threads.Values.Where(t => !alive.Contains(t.Tid)).ToList())
            Retire(t);
        return (complete, complete && byName, changed);
    }

    private static void ForgetExited<T>(Dictionary<VmInfo, T> byVm)
    {
        foreach (VmInfo gone in byVm.Keys.Where(v => v.ExitedAt is not null).ToList())
            byVm.Remove(gone);
    }

    /// <summary>Whether a VMM without vCPU fds is setting a VM up: it holds a VM fd, for less than
    /// <see cref="SetupGrace"/> so far.</summary>
    private bool SettingUp(VmInfo vm, DateTime now)
    {
        if (!_aggregator.Registry.HoldsVmFd(vm))
        {
            _settingUp.Remove(vm);
            return false;
        }
        if (!_settingUp.TryGetValue(vm, out DateTime since))
            _settingUp[vm] = since = now;
        return now - since < SetupGrace;
    }

    /// <summary>Opens a thread's group; <paramref name="exited"/> when the thread has exited since the scan (ESRCH).</summary>
    private bool Attach(int tid, CounterPlan plan, out bool exited)
    {
        exited = false;
        if (plan.Counters.Count == 0 || !EnsureFds(plan.Counters.Count))
            return false;
        CounterGroup? group = CounterGroup.TryOpen(plan, tid, cpu: -1, out int errno);
        if (group is null)
        {
            exited = errno == 3; // ESRCH
            if (!exited)
                Warn?.Invoke($"perf-count: cannot attach to thread {tid}: {KernelErrorText(errno)}");
            return false;
        }
        var counters = new ThreadCounters(tid, plan, group);
        _threads[tid] = counters;
        _openFds += group.Size;
        counters.Collect(_shard!.Series);
        return true;
    }

    /// <summary>Takes a thread's last counts (a counter outlives its exited task) and closes its group.</summary>
    private void Retire(ThreadCounters t)
    {
        t.Collect(_shard!.Series);
        for (int k = 0; k < _retiredTotals.Length; k++)
            _retiredTotals[k] += t.Totals[k];
        _threads.Remove(t.Tid);
        _openFds -= t.Fds;
        t.Dispose();
    }

    /// <summary>Whether a VM has a vCPU fd it had not when all of them had counters (two stat(2) calls per VM; its
    /// fds are walked again only when its threads or fds changed in number).</summary>
    private bool VcpuFdsChanged()
    {
        foreach ((VmInfo vm, IReadOnlyList<int> counted) in _countedVcpuFds)
        {
            IReadOnlyList<int> now = _aggregator.Registry.VcpuFds(vm);
            if (vm.ExitedAt is null && !ReferenceEquals(now, counted) && now.Except(counted).Any())
                return true; // a vCPU index that had no counters (fewer is no reason: a VM going away)
        }
        return false;
    }
}
