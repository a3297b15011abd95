using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using KvmObserve.KernelTests.VmHost;

namespace KvmObserve.KernelTests;

/// <summary>
/// Real VM exits of a hardware KVM (kvm_amd in the test VM; kvm_intel or kvm_amd on a host that has one), counted by
/// each source against two references that owe nothing to the agent: KVM's own per-vCPU statistics (exits, io_exits,
/// halt_exits, ...) and perf stat's system-wide counts of the same tracepoints over load's run.
/// </summary>
public class RealExitTests
{
    /// <summary>Exit reasons by what drives them, as the guest kernel's kvm_exit format file names them.</summary>
    private sealed record Reasons(string Io, string Hlt, string Interrupt, string IrqWindow, string Cpuid, string[] Msr, string PageFault)
    {
        public static Reasons For(string isa, KvmPaging paging) => isa switch
        {
            "svm" => new("io", "hlt", "interrupt", "vintr", "cpuid", ["msr"], paging == KvmPaging.Nested ? "npf" : "PF excp"),
            "vmx" => new("IO_INSTRUCTION", "HLT", "EXTERNAL_INTERRUPT", "INTERRUPT_WINDOW", "CPUID", ["MSR_READ", "MSR_WRITE"],
                paging == KvmPaging.Nested ? "EPT_VIOLATION" : "EXCEPTION_NMI"),
            _ => throw new InvalidOperationException($"isa '{isa}' is neither svm nor vmx"),
        };
    }

    [KernelTheory(Paging = KvmPaging.Nested)]
    [InlineData("bpf")]
    [InlineData("tracefs")]
    [InlineData("perf")]
    [InlineData("perf-count")]
    public void With_nested_paging_each_exit_reason_equals_what_kvm_counted_and_each_exit_is_paired(string source) =>
        CountedEqualsKvm(source, KvmPaging.Nested);

    [KernelTheory(Paging = KvmPaging.Shadow)]
    [InlineData("bpf")]
    [InlineData("tracefs")]
    [InlineData("perf")]
    [InlineData("perf-count")]
    public void With_shadow_paging_each_exit_reason_equals_what_kvm_counted_and_each_exit_is_paired(string source) =>
        CountedEqualsKvm(source, KvmPaging.Shadow);

    /// <summary>Every vm/vcpu pair's kvm_exits_total, to tell on a failure where a vCPU's exits went.</summary>
    private static string ByVcpu(Metrics m) => string.Join(", ", m.Samples.Where(s => s.Name == "kvm_exits_total")
        .GroupBy(s => $"{s.Labels["vm"]}/{s.Labels["vcpu"]}").OrderBy(g => g.Key, StringComparer.Ordinal)
        .Select(g => $"{g.Key} {g.Sum(s => s.Value)}"));

    private static void CountedEqualsKvm(string source, KvmPaging paging)
    {
        string[] agentArgs = source switch
        {
            "perf-count" => ["--source", source, "--discovery-interval-ms", "200", "--metrics", "all"],
            "bpf" => ["--source", source, "--metrics", "all"],
            _ => ["--source", source, "--metrics", "all", "--buffer-kb", "16384"],
        };
        using Agent agent = Agent.Start(agentArgs);
        string name = $"real-{source}-{Environment.ProcessId}";
        string[] mmuEvents = Directory.Exists("/sys/kernel/tracing/events/kvmmmu")
            ? Directory.GetDirectories("/sys/kernel/tracing/events/kvmmmu").Select(d => Path.GetFileName(d))
                .Where(e => e != "fast_page_fault" && Decoding.Events.TracepointCatalog.All.Any(t => t.Name == e)).ToArray()
            : [];
        string[] kvmEvents = ["kvm_exit", "kvm_entry", "kvm_page_fault", "kvm_msr"];
        var wall = Stopwatch.StartNew();
        (JsonElement report, Dictionary<string, long> perfStat) = Agent.LoadCounted(
            kvmEvents.Select(e => $"kvm:{e}").Concat(mmuEvents.Select(e => $"kvmmmu:{e}")),
            // The counting source attaches to threads its procfs scan finds: load holds its vCPU threads back for it.
            [.. source == "perf-count" ? ["--start-delay-ms", TestTime.Ms(1500).ToString(CultureInfo.InvariantCulture)] : Array.Empty<string>(),
             "--mode", "all", "--vms", "2", "--vcpus", "2", "--count", TestTime.Count(1000).ToString(CultureInfo.InvariantCulture), "--name", name]);
        double wallSeconds = wall.Elapsed.TotalSeconds;

        var vcpus = report.GetProperty("vms").EnumerateArray()
            .SelectMany(vm => vm.GetProperty("vcpus").EnumerateArray().Select(v => (Vm: vm.GetProperty("name").GetString()!, Vcpu: v.GetProperty("vcpu").GetInt32().ToString(CultureInfo.InvariantCulture), Report: v)))
            .ToList();
        long Stat(JsonElement v, string stat) => v.GetProperty("kernel_stats").GetProperty(stat).GetInt64();
        long allExits = vcpus.Sum(v => Stat(v.Report, "exits"));
        Metrics m = agent.ScrapeUntil(x => x.Sum("kvm_exits_total") >= allExits);
        string isa = m.Samples.FirstOrDefault(s => s.Name == "kvm_exits_total").Labels?.GetValueOrDefault("isa") ?? "none";
        Reasons r = Reasons.For(isa, paging);
        Console.WriteLine($"{source}, {paging} paging, isa {isa}, {vcpus.Count} vCPUs, load ran {wallSeconds:0.0} s");
        Console.WriteLine("vm/vcpu | exits (KVM) | io | hlt | interrupt | irq window | cpuid | msr | page fault");

        // Every exit KVM counted fired kvm_exit, and nothing else did. Under the bpf source this also says its programs
        // let the kernel go on to the tracepoint's perf events (a program that returns 0 hides them from perf stat).
        Assert.Equal(allExits, perfStat["kvm:kvm_exit"]);
        Assert.DoesNotContain(m.Samples, s => s.Name == "kvm_exits_total" && s.Labels["reason"].All(char.IsAsciiDigit));
        Assert.Equal(0, m.Sum("kvmobserve_events_lost_total"));
        Assert.Equal(0, m.Sum("kvmobserve_decode_errors_total"));

        foreach ((string vm, string vcpu, JsonElement v) in vcpus) // the whole table first, then what it must show
        {
            double Exits(params string[] reasons) => reasons.Sum(reason => m.Sum("kvm_exits_total", ("vm", vm), ("vcpu", vcpu), ("reason", reason)));
            Console.WriteLine($"{vm}/{vcpu} | {m.Sum("kvm_exits_total", ("vm", vm), ("vcpu", vcpu))}/{Stat(v, "exits")} | {Exits(r.Io)}/{Stat(v, "io_exits")} | "
                + $"{Exits(r.Hlt)}/{Stat(v, "halt_exits")} | {Exits(r.Interrupt)}/{Stat(v, "irq_exits")} | {Exits(r.IrqWindow)}/{Stat(v, "irq_window_exits")} | "
                + $"{Exits(r.Cpuid)}/{v.GetProperty("cpuid").EnumerateObject().Sum(p => p.Value.GetInt64())} | {Exits(r.Msr)} | {Exits(r.PageFault)}");
        }
        foreach ((string vm, string vcpu, JsonElement v) in vcpus)
        {
            double Exits(params string[] reasons) => reasons.Sum(reason => m.Sum("kvm_exits_total", ("vm", vm), ("vcpu", vcpu), ("reason", reason)));
            double cpuid = v.GetProperty("cpuid").EnumerateObject().Sum(p => p.Value.GetInt64());
            double Exits_All() => m.Sum("kvm_exits_total", ("vm", vm), ("vcpu", vcpu));

            Assert.True(Stat(v, "exits") == Exits_All(), $"{vm}/{vcpu}: {Exits_All()} exits counted, KVM counted {Stat(v, "exits")}; by vm/vcpu: {ByVcpu(m)}");
            Assert.Equal(Stat(v, "io_exits"), Exits(r.Io));
            Assert.Equal(Stat(v, "halt_exits"), Exits(r.Hlt));
            Assert.Equal(Stat(v, "irq_exits"), Exits(r.Interrupt));
            Assert.Equal(Stat(v, "irq_window_exits"), Exits(r.IrqWindow));
            Assert.Equal(cpuid, Exits(r.Cpuid));
            Assert.True(Exits(r.PageFault) > 0, $"{vm}/{vcpu}: no {r.PageFault} exits from touch and mmio");
            if (isa == "svm") // VMX's EPT misconfigurations (MMIO) fire no kvm_page_fault; SVM's reserved-bit NPFs do
            {
                double faults = new[] { "not_present_read", "not_present_write", "not_present_exec", "protection_read", "protection_write", "protection_exec", "reserved_bits" }
                    .Sum(kind => m.Sum("kvm_mmu_page_faults_total", ("vm", vm), ("vcpu", vcpu), ("kind", kind)));
                Assert.Equal(Exits(r.PageFault), faults);
            }
        }
        foreach (string vm in vcpus.Select(v => v.Vm).Distinct())
        {
            // kvm_msr fires once per MSR exit: load's own MSR and the x2APIC registers the guest's interrupts use.
            double msrExits = r.Msr.Sum(reason => m.Sum("kvm_exits_total", ("vm", vm), ("reason", reason)));
            Assert.Equal(m.Sum("kvm_msr_total", ("vm", vm)), msrExits);
            Assert.True(msrExits >= vcpus.Where(v => v.Vm == vm).Sum(v => v.Report.GetProperty("msr").EnumerateObject().Sum(p => p.Value.GetInt64())));
        }

        Assert.Equal(allExits, m.Sum("kvm_exits_total"));
        Assert.Equal(perfStat["kvm:kvm_msr"], m.Sum("kvm_msr_total"));
        foreach (string e in mmuEvents)
        {
            Console.WriteLine($"kvmmmu:{e} {m.Sum("kvm_mmu_events_total", ("event", e))}/{perfStat[$"kvmmmu:{e}"]}");
            Assert.Equal(perfStat[$"kvmmmu:{e}"], m.Sum("kvm_mmu_events_total", ("event", e)));
        }

        if (source == "perf-count")
        {
            Assert.Equal(0, agent.Stop()); // counters give counts, never the time between two events
            return;
        }
        // Each exit is paired with the thread's next kvm_entry, but for each vCPU's last: load's done doorbell, an MMIO
        // write (an npf exit, or a PF excp one with shadow paging) after which the VMM stops running the vCPU. Each
        // vCPU's first kvm_entry has no exit before it.
        foreach (string vm in vcpus.Select(v => v.Vm).Distinct())
        {
            int vmVcpus = vcpus.Count(v => v.Vm == vm);
            var reasons = m.Samples.Where(s => s.Name == "kvm_exits_total" && s.Labels["vm"] == vm).Select(s => s.Labels["reason"]).Distinct();
            foreach (string reason in reasons)
            {
                double exits = m.Sum("kvm_exits_total", ("vm", vm), ("reason", reason));
                double paired = m.Sum("kvm_exit_handling_seconds_count", ("vm", vm), ("reason", reason));
                Assert.True(exits - (reason == r.PageFault ? vmVcpus : 0) == paired, $"{vm} {reason}: {exits} exits, {paired} paired");
            }
            double seconds = m.Sum("kvm_exit_handling_seconds_sum", ("vm", vm));
            Assert.InRange(seconds, 1e-9, wallSeconds * vmVcpus);
        }
        Console.WriteLine($"paired {m.Sum("kvm_exit_handling_seconds_count")}/{allExits} exits; not paired: "
            + $"gap {m.Sum("kvmobserve_latency_pairs_dropped_total", ("histogram", "kvm_exit_handling_seconds"), ("reason", "gap"))}, "
            + $"unmatched {m.Sum("kvmobserve_latency_pairs_dropped_total", ("histogram", "kvm_exit_handling_seconds"), ("reason", "unmatched"))}");
        Assert.Equal(0, m.Sum("kvmobserve_latency_pairs_dropped_total", ("histogram", "kvm_exit_handling_seconds"), ("reason", "gap")));
        // The unmatched ones are the vCPUs' first entries (source bpf pairs in the kernel and counts none of those).
        Assert.InRange(m.Sum("kvmobserve_latency_pairs_dropped_total", ("histogram", "kvm_exit_handling_seconds"), ("reason", "unmatched")), 0, vcpus.Count);
        Assert.Equal(0, agent.Stop());
    }
}
