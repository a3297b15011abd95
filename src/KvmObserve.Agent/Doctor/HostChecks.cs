using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Events;
using KvmObserve.Native;
using KvmObserve.Native.Kvm;
using KvmObserve.Sources;
using KvmObserve.Sources.Bpf;
using KvmObserve.Sources.Tracefs;
using KvmObserve.Workload;

namespace KvmObserve.Agent.Doctor;

/// <summary>What this host supports, checked for real: each check touches the kernel feature it reports on.</summary>
internal static class HostChecks
{
    public static IEnumerable<Finding> Run(bool probe)
    {
        string? root = TracefsLocator.Find(mountIfNeeded: true, out string? problem);
        yield return root is null
            ? new Finding(Verdict.Fail, "tracefs", problem!, "the tracefs source cannot run (needs root or CAP_SYS_ADMIN to mount)")
            : new Finding(Verdict.Ok, "tracefs", $"mounted at {root}", "");

        foreach (Finding f in Kvm())
            yield return f;
        yield return Lockdown();

        if (root is null)
            yield break;
        foreach (Finding f in Tracepoints(root, probe))
            yield return f;

        var formats = new TracefsFormats(root);
        int pioId = formats.Event(TracepointCatalog.All.First(t => t.Kind == KvmEventKind.Pio))?.Id ?? -1;
        int perf = pioId < 0 ? Errno.ENOENT : KernelProbes.TryPerfTracepoint(pioId);
        yield return perf == 0
            ? new Finding(Verdict.Ok, "perf_event_open", "a kvm tracepoint counter opened", "perf sources can run")
            : new Finding(Verdict.Warn, "perf_event_open", KernelProbes.ErrorText(perf), "perf sources cannot run (needs CAP_PERFMON or perf_event_paranoid <= -1)");
        foreach (Finding f in Sources())
            yield return f;
        foreach (Finding f in Bpf(root))
            yield return f;
    }

    /// <summary>The bpf source: a BPF map at all, then its own programs loaded by the kernel's verifier (and released),
    /// and whether the kernel accounts their run time.</summary>
    private static IEnumerable<Finding> Bpf(string root)
    {
        int map = KernelProbes.TryBpfMap();
        if (map != 0)
        {
            yield return new Finding(Verdict.Warn, "bpf", KernelProbes.ErrorText(map), "no in-kernel aggregation (needs CAP_BPF and CAP_PERFMON)");
            yield break;
        }
        string? problem = BpfObjectLoader.Probe(root);
        yield return problem is null
            ? new Finding(Verdict.Ok, "bpf", $"{Path.GetFileName(BpfOptions.DefaultObjectPath)}: every program loaded and verified", "the bpf source can run (auto picks it)")
            : new Finding(Verdict.Warn, "bpf", problem, "auto falls back to perf-count or tracefs");
        if (problem is null)
        {
            bool stats = KvmObserve.Native.Bpf.BpfProgramStats.SysctlEnabled();
            yield return new Finding(stats ? Verdict.Ok : Verdict.Info, "bpf run-time stats", stats ? "kernel.bpf_stats_enabled = 1" : "off",
                stats ? "kvmobserve_bpf_program_run_seconds_total is counted" : "sysctl kernel.bpf_stats_enabled=1, or run with --bpf-stats true, to see what the programs cost");
        }
    }

    /// <summary>What `run --source auto` would pick, with every metric group and with plain counts only, and the fd
    /// budget of the counting source.</summary>
    private static IEnumerable<Finding> Sources()
    {
        HostCapabilities host = Hosting.SourceService.Probe(mountIfNeeded: false);
        IReadOnlyList<string> plain = MetricSelection.All.Where(g => !MetricSelection.NeedRecords.Contains(g)).ToList();
        foreach ((string what, IReadOnlyList<string> groups) in new[] { ("all metrics", MetricSelection.All), ("plain counts", plain) })
        {
            Finding finding;
            try
            {
                (string source, string reason) = SourceSelection.Choose("auto", groups, host);
                finding = new Finding(Verdict.Ok, $"source auto ({what})", source, reason);
            }
            catch (InvalidOperationException e)
            {
                finding = new Finding(Verdict.Fail, $"source auto ({what})", "none", e.Message);
            }
            yield return finding;
        }
        if (host.TracefsRoot is null || host.PerfProblem is not null)
            yield break;
        int perThread = KvmObserve.Sources.PerfCount.CounterPlan.ForVcpuThreads(new TracefsFormats(host.TracefsRoot).Decoders(), _ => true,
            KvmObserve.Sources.PerfCount.HostIsa.Detect(), new KvmObserve.Sources.PerfCount.CountingKeys()).Counters.Count;
        (ulong soft, ulong hard) = FdLimit.Get();
        yield return new Finding(soft >= (ulong)perThread * 64 ? Verdict.Ok : Verdict.Warn, "perf-count fds",
            $"{perThread} counters per vCPU thread; RLIMIT_NOFILE {soft} (hard {hard})",
            "the agent raises the soft limit as VMs appear; past the hard limit, threads are left unattached (their events show as unattributed)");
    }

    private static IEnumerable<Finding> Kvm()
    {
        if (KvmDevice.Problem() is string missing)
        {
            yield return new Finding(Verdict.Fail, "/dev/kvm", "absent", $"{missing}; `load` and `overhead` cannot run, and the kvm tracepoints see nothing");
            yield break;
        }
        string api;
        try
        {
            using SafeFd kvm = Sys.Open(KvmDevice.Node, write: true);
            api = $"API version {Sys.Ioctl(kvm, KvmIoctl.GetApiVersion, 0, "KVM_GET_API_VERSION")}";
        }
        catch (NativeErrorException e)
        {
            api = e.Message;
        }
        string cpuinfo = File.Exists("/proc/cpuinfo") ? File.ReadAllText("/proc/cpuinfo") : "";
        bool vmx = cpuinfo.Contains(" vmx", StringComparison.Ordinal), svm = cpuinfo.Contains(" svm", StringComparison.Ordinal);
        string modules = File.Exists("/proc/modules") ? File.ReadAllText("/proc/modules") : "";
        string backend = vmx ? "vmx (Intel VT-x)" : svm ? "svm (AMD-V)" : "neither vmx nor svm";
        string module = string.Join(",", new[] { "kvm_intel", "kvm_amd", "kvm_pvm" }.Where(m => modules.Contains(m + " ", StringComparison.Ordinal)));
        yield return new Finding(Verdict.Ok, "/dev/kvm", $"{api}; backend {backend}{(module.Length > 0 ? $" (module {module})" : "")}",
            vmx || svm ? "" : "software KVM: kvm_exit and kvm_entry never fire here, exit counts come from the events that do");
    }

    private static Finding Lockdown()
    {
        const string path = "/sys/kernel/security/lockdown";
        if (!File.Exists(path))
            return new Finding(Verdict.Info, "lockdown", "not reported", "");
        string mode = File.ReadAllText(path).Trim();
        bool on = !mode.Contains("[none]", StringComparison.Ordinal);
        return new Finding(on ? Verdict.Info : Verdict.Ok, "lockdown", mode,
            on ? "debugfs KVM stats and kprobes are unavailable; tracepoints, perf and BPF tracepoint programs still work" : "");
    }

    private static IEnumerable<Finding> Tracepoints(string root, bool probe)
    {
        var aggregator = new Aggregator(64, new VmRegistry());
        var source = new TracefsSource(new SourceOptions { PollTimeoutMs = 20, MountIfNeeded = false }, aggregator, root);
        bool vmProbe = probe && KvmDevice.Problem() is null;
        Exception? failure = null;
        try
        {
            source.Start();
            if (vmProbe)
            {
                VmRunner.Run(new LoadOptions
                {
                    Modes = LoadMode.Pio | LoadMode.Mmio | LoadMode.Msr | LoadMode.Cpuid | LoadMode.Hlt | LoadMode.Touch,
                    Vcpus = 1, Count = 200, Name = "doctor-probe",
                }, "doctor-probe");
            }
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or NotSupportedException or UnauthorizedAccessException)
        {
            failure = e;
        }
        finally
        {
            source.Stop();
        }
        if (failure is not null)
        {
            yield return new Finding(Verdict.Fail, "tracefs instance", failure.Message, "the tracefs source cannot run");
            yield break;
        }
        yield return new Finding(Verdict.Ok, "tracefs instance", "a private instance was created, enabled and removed", "");
        foreach (TracepointState t in source.Tracepoints)
        {
            long seen = aggregator.Shards.Sum(s => s.EventsOf(t.Status.Tracepoint.Kind));
            string name = t.Status.Tracepoint.FullName;
            if (!t.Status.Available)
                yield return new Finding(Verdict.Info, name, t.Status.Problem ?? "unavailable", "its metrics stay empty");
            // Not seen firing is no [ok ]: that it exists and could be enabled is all that is known.
            else if (!probe)
                yield return new Finding(Verdict.Info, name, $"exists (id {t.Status.Id}), {(t.Enabled ? "enabled" : "could not be enabled")}", "not probed (--no-probe)");
            else if (!vmProbe)
                yield return new Finding(Verdict.Info, name, $"exists (id {t.Status.Id}), {(t.Enabled ? "enabled" : "could not be enabled")}", "not probed: no VM can run here (/dev/kvm)");
            else if (seen > 0)
                yield return new Finding(Verdict.Ok, name, $"exists, enabled, seen firing ({seen} in the probe)", "");
            else
                yield return new Finding(Verdict.Info, name, "exists, enabled, did not fire in the probe",
                    t.Status.Tracepoint.Kind is KvmEventKind.Exit or KvmEventKind.Entry or KvmEventKind.PageFault
                        ? "expected where KVM runs without vmx/svm" : "the probe's micro-VM does not drive it");
        }
    }
}
