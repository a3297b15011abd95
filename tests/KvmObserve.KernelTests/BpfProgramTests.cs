using System.Diagnostics;
using System.Runtime.InteropServices;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Native;
using KvmObserve.Native.Bpf;
using KvmObserve.Sources.Bpf;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.KernelTests;

/// <summary>
/// kvm_exit and kvm_entry never fire on this kernel (software KVM), so the exit and latency programs are proven on
/// events that do: the same compiled programs, given the offsets of a syscall's fields instead of kvm_exit's, attached
/// to its enter and exit tracepoints. A syscall stands for a VM exit: its argument for the exit reason and ISA, its
/// duration for the exit-handling time. And they load and attach to the real kvm_exit and kvm_entry.
/// </summary>
public sealed partial class BpfProgramTests
{
    private const string Tracefs = KernelState.Tracefs;

    [LibraryImport("libc", EntryPoint = "pwrite", SetLastError = true)]
    private static partial nint Pwrite(int fd, nint buffer, nuint count, long offset);

    private static EventFormat Format(string system, string name) =>
        EventFormatParser.Parse(system, File.ReadAllText(Path.Combine(Tracefs, "events", system, name, "format")));

    /// <summary>A free fd number: pwrite on it fails with EBADF, after its tracepoints fired.</summary>
    private static int UnusedFd()
    {
        int fd = 4000;
        while (File.Exists($"/proc/self/fd/{fd}") || Directory.Exists($"/proc/self/fd/{fd}"))
            fd++;
        return fd;
    }

    /// <summary>The exit program on a syscall's enter tracepoint, reading kvm_exit's reason, ISA and vCPU from that
    /// syscall's fields, and the entry program on its exit tracepoint; only this process counted.</summary>
    private static BpfObject ExitAndEntryOn(string syscall, string reason, string isa, string vcpu)
    {
        BpfObject obj = LoadAs(Format("syscalls", $"sys_enter_{syscall}"), reason, isa, vcpu);
        try
        {
            obj.AttachTracepoint("kvmo_exit", "syscalls", $"sys_enter_{syscall}");
            obj.AttachTracepoint("kvmo_entry", "syscalls", $"sys_exit_{syscall}");
            return obj;
        }
        catch
        {
            obj.Dispose();
            throw;
        }
    }

    private static BpfObject LoadAs(EventFormat enter, string reason, string isa, string vcpu)
    {
        FieldFormat? FieldOf(KvmEventKind kind, string field) => (kind, field) switch
        {
            (KvmEventKind.Exit, "exit_reason") => enter.Find(reason),
            (KvmEventKind.Exit, "isa") => enter.Find(isa),
            (KvmEventKind.Exit, "vcpu_id") => enter.Find(vcpu),
            _ => null,
        };
        return BpfObjectLoader.Load(new BpfOptions { Pids = [Environment.ProcessId] }, FieldOf, impliedIsa: 0);
    }

    /// <summary>This thread's counts, by (family, label1, label2).</summary>
    private static Dictionary<(MetricFamily, uint, ulong), long> CountsOf(BpfObject obj, int tid, out int vcpu)
    {
        var map = new BpfMap(obj.MapFd("kvmo_counts"), BpfLayout.KeySize, 8, 32_768, perCpu: true);
        var counts = new Dictionary<(MetricFamily, uint, ulong), long>();
        vcpu = int.MinValue;
        int n = map.ReadAll();
        for (int i = 0; i < n; i++)
        {
            (_, SeriesKey key) = BpfLayout.ReadKey(map.Key(i));
            if (key.Tid != tid)
                continue;
            if (key.Family == MetricFamily.Exits)
                vcpu = key.Vcpu;
            counts[(key.Family, key.Label1, key.Label2)] = BpfMap.SumPerCpu(map.Value(i));
        }
        return counts;
    }

    /// <summary>The processes the counts map has keys of.</summary>
    private static HashSet<int> TgidsOf(BpfObject obj)
    {
        var map = new BpfMap(obj.MapFd("kvmo_counts"), BpfLayout.KeySize, 8, 32_768, perCpu: true);
        int n = map.ReadAll();
        var tgids = new HashSet<int>();
        for (int i = 0; i < n; i++)
            tgids.Add(BpfLayout.ReadKey(map.Key(i)).Tgid);
        return tgids;
    }

    private static T OnOwnThread<T>(Func<T> work)
    {
        T result = default!;
        var thread = new Thread(() => result = work());
        thread.Start();
        thread.Join();
        return result;
    }

    [KernelFact(Kvm = false)]
    public void The_exit_program_counts_reasons_and_failed_entries_and_the_entry_program_pairs_every_exit()
    {
        using BpfObject obj = ExitAndEntryOn("pwrite64", reason: "count", isa: "pos", vcpu: "fd");
        int fd = UnusedFd();
        const uint Vmx = 1, Svm = 2, VmxFailedEntry = 0x8000_0000 | 30;
        int tid = OnOwnThread(() =>
        {
            for (int i = 0; i < 300; i++)
                Assert.Equal(-1, Pwrite(fd, 0, 48, Vmx));         // VMX reason 48 (EPT violation)
            for (int i = 0; i < 200; i++)
                Assert.Equal(-1, Pwrite(fd, 0, 0x7b, Svm));       // SVM reason 0x7b (IOIO)
            for (int i = 0; i < 7; i++)
                Assert.Equal(-1, Pwrite(fd, 0, VmxFailedEntry, Vmx)); // VMX: bit 31, the entry failed; basic reason 30
            return Sys.Gettid();
        });

        // Another process making the same calls is not counted: the pid filter map holds only this process.
        var other = Process.Start(new ProcessStartInfo("/usr/bin/python3",
            ["-c", $"import os\nfor i in range(100):\n  try: os.pwrite({fd}, b'x', 48)\n  except OSError: pass"]))!;
        other.WaitForExit();
        Assert.Equal(0, other.ExitCode);
        Assert.DoesNotContain(TgidsOf(obj), t => t != Environment.ProcessId);

        Dictionary<(MetricFamily, uint, ulong), long> c = CountsOf(obj, tid, out int vcpu);
        Assert.Equal(fd, vcpu);
        Assert.Equal(300, c.GetValueOrDefault((MetricFamily.Exits, 48u, (ulong)Vmx)));
        Assert.Equal(200, c.GetValueOrDefault((MetricFamily.Exits, 0x7bu, (ulong)Svm)));
        Assert.Equal(7, c.GetValueOrDefault((MetricFamily.Exits, 30u, (ulong)Vmx)));
        Assert.Equal(7, c.GetValueOrDefault((MetricFamily.FailedVmEntries, 30u, 0UL)));
        // Each exit paired with its entry: a latency observation per exit, by reason and ISA, buckets summing up.
        long Observed(uint reason, uint isa) => c.Where(e => e.Key.Item1 == MetricFamily.ExitLatency && e.Key.Item2 == reason
            && e.Key.Item3 >> 8 == isa && (e.Key.Item3 & 0xff) != LatencyBuckets.SumSlot).Sum(e => e.Value);
        Assert.Equal(300, Observed(48, Vmx));
        Assert.Equal(200, Observed(0x7b, Svm));
        Assert.Equal(7, Observed(30, Vmx));
        Assert.Equal(0, c.Keys.Count(k => k.Item1 is not (MetricFamily.Exits or MetricFamily.FailedVmEntries or MetricFamily.ExitLatency)));
    }

    [KernelFact(Kvm = false)]
    public void Exit_handling_latency_is_the_time_between_exit_and_entry_in_the_agents_buckets()
    {
        using BpfObject obj = ExitAndEntryOn("clock_nanosleep", reason: "which_clock", isa: "flags", vcpu: "which_clock");
        const int Sleeps = 20;
        TimeSpan sleep = TimeSpan.FromMilliseconds(2);
        (int tid, long wallNs) = OnOwnThread(() =>
        {
            long started = Stopwatch.GetTimestamp();
            for (int i = 0; i < Sleeps; i++)
                Assert.Equal(0, ClockNanosleep(1 /* CLOCK_MONOTONIC */, 0, sleep));
            return (Sys.Gettid(), (long)Stopwatch.GetElapsedTime(started).TotalNanoseconds);
        });

        Dictionary<(MetricFamily, uint, ulong), long> c = CountsOf(obj, tid, out _);
        var latency = c.Where(e => e.Key.Item1 == MetricFamily.ExitLatency && e.Key.Item2 == 1).ToList();
        long sumNs = latency.Where(e => (e.Key.Item3 & 0xff) == LatencyBuckets.SumSlot).Sum(e => e.Value);
        var buckets = latency.Where(e => (e.Key.Item3 & 0xff) != LatencyBuckets.SumSlot).ToList();
        Assert.Equal(Sleeps, buckets.Sum(e => e.Value));
        Assert.InRange(sumNs, Sleeps * (long)sleep.TotalNanoseconds, wallNs);
        // Every observation in a bucket whose bound holds 2 ms or more, the same bucket the agent's user space picks.
        foreach (var b in buckets)
            Assert.True((int)(b.Key.Item3 & 0xff) >= LatencyBuckets.Index((ulong)sleep.TotalNanoseconds), $"bucket {b.Key.Item3 & 0xff}");
    }

    [LibraryImport("libc", EntryPoint = "clock_nanosleep")]
    private static partial int ClockNanosleep(int clock, int flags, in Timespec request, nint remain);

    private static int ClockNanosleep(int clock, int flags, TimeSpan t) =>
        ClockNanosleep(clock, flags, new Timespec { Seconds = 0, Nanoseconds = (long)t.TotalNanoseconds }, 0);

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    /// <summary>Every program of the object loads with this kernel's real kvm formats and attaches to its own
    /// tracepoint, kvm_exit and kvm_entry included.</summary>
    [KernelFact(Kvm = false)]
    public void Every_program_attaches_to_its_real_kvm_tracepoint()
    {
        var formats = new TracefsFormats(Tracefs);
        KvmEventDecoders decoders = formats.Decoders();
        using BpfObject obj = BpfObjectLoader.Load(new BpfOptions(), BpfObjectLoader.FieldsOf(formats), decoders.ExitReasons.ImpliedIsa);
        var attached = new List<string>();
        foreach (TracepointStatus s in decoders.Statuses.Where(s => s.Available))
        {
            string program = BpfLayout.ProgramOf(s.Tracepoint.Kind);
            obj.AttachTracepoint(program, s.Tracepoint.System, s.Tracepoint.Name, program == "kvmo_mmu" ? (ulong)s.Tracepoint.Kind : 0);
            attached.Add(s.Tracepoint.Name);
        }
        Assert.Contains("kvm_exit", attached);
        Assert.Contains("kvm_entry", attached);
        Assert.Equal(obj.Programs().Select(p => p.Name).Order(),
            decoders.Statuses.Where(s => s.Available).Select(s => BpfLayout.ProgramOf(s.Tracepoint.Kind)).Distinct().Order());
        Assert.Equal(attached.Count, obj.Links.Count);
    }
}
