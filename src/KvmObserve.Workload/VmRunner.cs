using System.Diagnostics;
using System.Globalization;
using KvmObserve.Native;

namespace KvmObserve.Workload;

/// <summary>Runs one VM in this process: M vCPU threads, named "CPU N/KVM" as QEMU names them, each running every
/// selected mode's program in turn.</summary>
public static class VmRunner
{
    private static readonly LoadMode[] Order =
        [LoadMode.Pio, LoadMode.Mmio, LoadMode.Msr, LoadMode.Cpuid, LoadMode.Hlt, LoadMode.Touch];

    public static VmReport Run(LoadOptions options, string name)
    {
        ulong touchSlice = AlignUp((ulong)options.Count * 4096 + 0x200000, 0x200000);
        ulong memory = GuestLayoutEnd(options, touchSlice);
        using var vm = new MicroVm(memory, irqchip: options.Modes.HasFlag(LoadMode.Hlt));
        var vcpus = new MicroVcpu[options.Vcpus];
        for (int i = 0; i < vcpus.Length; i++)
            vcpus[i] = new MicroVcpu(vm, i);
        using HaltWatchdog? watchdog = options.Modes.HasFlag(LoadMode.Hlt) ? new HaltWatchdog(vm, vcpus.Length, options.TimerPeriodNs) : null;

        var report = new VmReport { Name = name, Pid = Environment.ProcessId, Cgroup = VmCgroup.OfSelf() };
        var threads = new Thread[vcpus.Length];
        var reports = new VcpuReport[vcpus.Length];
        Exception? failure = null;
        using var go = new ManualResetEventSlim(false);
        var stopwatch = new Stopwatch();
        for (int i = 0; i < vcpus.Length; i++)
        {
            int index = i;
            threads[i] = new Thread(() =>
            {
                try
                {
                    Sys.SetCurrentThreadName($"CPU {index}/KVM");
                    if (options.Pin)
                        Sys.PinCurrentThread(index % Environment.ProcessorCount);
                    reports[index] = new VcpuReport { Vcpu = index, Tid = Sys.Gettid() };
                    go.Wait();
                    RunVcpu(vm, vcpus[index], options, touchSlice, reports[index], stopwatch, watchdog);
                }
                catch (Exception e)
                {
                    failure ??= e;
                }
            }) { Name = $"CPU {index}/KVM", IsBackground = true }; // named natively before it runs, as well as by prctl below
            // Background: a vCPU whose guest went astray never returns from KVM_RUN, and must not keep the process.
            threads[i].Start();
        }
        if (options.StartDelay > TimeSpan.Zero)
            Thread.Sleep(options.StartDelay);
        stopwatch.Start();
        go.Set();
        foreach (Thread t in threads)
        {
            while (!t.Join(1000))
            {
                for (int i = 0; i < vcpus.Length; i++)
                {
                    if (vcpus[i].Astray() is TimeSpan took)
                        throw new InvalidOperationException(
                            $"VM {name}: vCPU {i}: its guest went astray: its phase has run {took.TotalSeconds:0} s, where it takes at most {PhaseLimit(options).TotalSeconds:0} s");
                }
            }
        }
        foreach (MicroVcpu v in vcpus)
            v.Dispose();
        if (failure is not null)
            throw new InvalidOperationException($"VM {name}: {failure.Message}", failure);
        report.Vcpus.AddRange(reports);
        return report;
    }

    /// <summary>The longest a phase takes: count operations of at most 0.5 ms each (an exit takes microseconds on a
    /// host, ~100 us in the test VM, where each is emulated), and a timer period more per halt in hlt mode, times how
    /// many of the run's vCPUs share each CPU (12 one-vCPU VMs on the test VM's 2 CPUs took 3.75 ms per exit); a minute
    /// besides. It must fire before a test's own limit (6 minutes in the test VM) for the test to learn why.</summary>
    private static TimeSpan PhaseLimit(LoadOptions options)
    {
        long sharing = Math.Max(1, ((long)options.Vms * options.Vcpus + Environment.ProcessorCount - 1) / Environment.ProcessorCount);
        return TimeSpan.FromSeconds(60)
            + TimeSpan.FromTicks(sharing * options.Count * (TimeSpan.TicksPerMillisecond / 2 + options.TimerPeriodNs / 100));
    }

    private static void RunVcpu(MicroVm vm, MicroVcpu vcpu, LoadOptions options, ulong touchSlice, VcpuReport report,
        Stopwatch stopwatch, HaltWatchdog? watchdog)
    {
        ulong touchBase = GuestLayout.TouchBase + (ulong)vcpu.Index * touchSlice;
        bool touchedOnce = false;
        do
        {
            foreach (LoadMode mode in Order)
            {
                if (!options.Modes.HasFlag(mode))
                    continue;
                if (mode == LoadMode.Touch && touchedOnce)
                    continue; // pages are fresh only once
                byte[] program = GuestPrograms.Build(mode, options.Count, touchBase, options.TimerPeriodNs);
                long started = Stopwatch.GetTimestamp();
                watchdog?.Halting(vcpu.Index, mode == LoadMode.Hlt);
                vcpu.RunPhase(program, user: mode == LoadMode.Touch, report, PhaseLimit(options),
                    exits: mode is LoadMode.Pio or LoadMode.Mmio ? options.Count : 0);
                watchdog?.Halting(vcpu.Index, false);
                VcpuReport.Add(report.PhaseNs, mode.ToString().ToLowerInvariant(), (long)Stopwatch.GetElapsedTime(started).TotalNanoseconds);
                Account(mode, options.Count, report);
                touchedOnce |= mode == LoadMode.Touch;
            }
        }
        while (options.Duration is TimeSpan d && stopwatch.Elapsed < d);
        if (vcpu.StealTimeEnabled)
            report.GuestStealNs = (long)vcpu.GuestStealNs;
        foreach ((string name, ulong value) in vcpu.KernelStats())
            report.KernelStats[name] = (long)value;
        report.HaltKicks = watchdog?.Kicks(vcpu.Index) ?? 0;
        long interrupts = (long)vm.ReadGuestU64(GuestLayout.InterruptCounter(vcpu.Index));
        report.Interrupts = interrupts;
        if (interrupts > 0)
            VcpuReport.Add(report.Msr, Key(GuestPrograms.X2ApicEoi, "write"), interrupts);
    }

    /// <summary>What a mode's program did inside the kernel, where the VMM cannot see it: known by construction.</summary>
    private static void Account(LoadMode mode, uint count, VcpuReport report)
    {
        switch (mode)
        {
            case LoadMode.Msr:
                VcpuReport.Add(report.Msr, Key(GuestPrograms.MsrReadWrite, "read"), count);
                VcpuReport.Add(report.Msr, Key(GuestPrograms.MsrReadWrite, "write"), count);
                break;
            case LoadMode.Cpuid:
                VcpuReport.Add(report.Cpuid, "0x" + GuestPrograms.CpuidLeaf.ToString("x", CultureInfo.InvariantCulture), count);
                break;
            case LoadMode.Hlt:
                report.Halts += count;
                foreach ((uint msr, long writes) in GuestPrograms.HltMsrWrites(count))
                    VcpuReport.Add(report.Msr, Key(msr, "write"), writes);
                break;
            case LoadMode.Touch:
                report.PagesTouched += count + 1; // and the program's page, fetched at CPL3 too
                break;
        }
    }

    private static string Key(uint msr, string direction) => $"0x{msr.ToString("x", CultureInfo.InvariantCulture)}/{direction}";

    private static ulong GuestLayoutEnd(LoadOptions options, ulong touchSlice) =>
        options.Modes.HasFlag(LoadMode.Touch)
            ? GuestLayout.TouchBase + touchSlice * (ulong)options.Vcpus
            : GuestLayout.TouchBase;

    private static ulong AlignUp(ulong v, ulong a) => (v + a - 1) & ~(a - 1);
}
