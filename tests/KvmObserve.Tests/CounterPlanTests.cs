using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Sources.PerfCount;

namespace KvmObserve.Tests;

public class CounterPlanTests
{
    private static readonly Dictionary<string, EventFormat> Formats = new()
    {
        ["kvm:kvm_exit"] = Fixture.Format("kvm_exit.format"),
        ["kvm:kvm_pio"] = Fixture.Format("kvm_pio.format"),
        ["kvm:kvm_userspace_exit"] = Fixture.Format("kvm_userspace_exit.format"),
        ["kvm:kvm_vcpu_wakeup"] = Fixture.Format("kvm_vcpu_wakeup.format"),
        ["kvm:kvm_mmio"] = Fixture.Format("kvm_mmio.format"),
        ["kvmmmu:fast_page_fault"] = Fixture.Format("fast_page_fault.format", "kvmmmu"),
    };

    private static readonly KvmEventDecoders Decoders = new(tp => Formats.GetValueOrDefault(tp.FullName));

    private static CounterPlan Plan(uint isa, CountingKeys? keys = null) =>
        CounterPlan.ForVcpuThreads(Decoders, _ => true, isa, keys ?? new CountingKeys());

    [Fact]
    public void Exits_get_one_filtered_counter_per_reason_of_the_host_table_and_other()
    {
        CounterPlan svm = Plan(KvmIsa.Svm);
        var exitFilters = svm.Counters.Where(c => c.Tracepoint.Name == "kvm_exit").Select(c => c.Filter).ToList();
        Assert.Null(exitFilters[0]); // the total
        Assert.Equal(Decoders.ExitReasons.Reasons(KvmIsa.Svm).Count + 1, exitFilters.Count);
        Assert.Contains("exit_reason == 124", exitFilters);   // SVM 0x7c MSR
        Assert.Contains("exit_reason == 4294967295", exitFilters); // SVM_EXIT_ERR, -1 as exit_reason holds it
        Assert.Contains(svm.Outputs, o => o.Family == MetricFamily.Exits && o.Label1 == CounterPlan.Other && o.Label2 == KvmIsa.Svm);

        CounterPlan vmx = Plan(KvmIsa.Vmx);
        Assert.Contains(vmx.Counters, c => c.Filter == "exit_reason == 30"); // IO_INSTRUCTION
        Assert.Contains(vmx.Counters, c => c.Filter == "exit_reason & 2147483648");
        Assert.Contains(vmx.Outputs, o => o.Family == MetricFamily.FailedVmEntries);
    }

    [Fact]
    public void Other_is_the_total_less_every_listed_key()
    {
        CounterPlan plan = Plan(KvmIsa.Svm, new CountingKeys { Keyed = KeyedFamilies.Ports | KeyedFamilies.Directions, Ports = [0x3f8, 0x80] });
        var pio = plan.Counters.Select((c, i) => (c, i)).Where(x => x.c.Tracepoint.Name == "kvm_pio").ToDictionary(x => x.c.Filter ?? "total", x => x.i);
        // One counter tells the directions apart: the reads are what the total leaves.
        Assert.Equal(["total", "rw == 1", "port == 1016 && rw == 0", "port == 128 && rw == 0", "port == 1016 && rw == 1", "port == 128 && rw == 1"], pio.Keys);

        // One group read: 10 out to 0x3f8, 4 out to 0x80, 3 out and 2 in elsewhere.
        var values = new long[plan.Counters.Count];
        values[pio["total"]] = 19;
        values[pio["rw == 1"]] = 17;
        values[pio["port == 1016 && rw == 1"]] = 10;
        values[pio["port == 128 && rw == 1"]] = 4;
        var series = plan.Outputs.Where(o => o.Family == MetricFamily.Pio)
            .ToDictionary(o => (o.Label1, o.Label2), o => CounterPlan.Evaluate(o, values));
        Assert.Equal(10, series[(0x3f8, 1)]);
        Assert.Equal(4, series[(0x80, 1)]);
        Assert.Equal(3, series[(CounterPlan.Other, 1)]);
        Assert.Equal(2, series[(CounterPlan.Other, 0)]);
        Assert.Equal(0, series[(0x3f8, 0)]);
    }

    [Fact]
    public void Ports_keyed_without_directions_count_both_directions_together()
    {
        CounterPlan plan = Plan(KvmIsa.Svm, new CountingKeys { Keyed = KeyedFamilies.Ports, Ports = [0x3f8, 0x80] });
        var pio = plan.Counters.Select((c, i) => (c, i)).Where(x => x.c.Tracepoint.Name == "kvm_pio").ToDictionary(x => x.c.Filter ?? "total", x => x.i);
        Assert.Equal(["total", "port == 1016", "port == 128"], pio.Keys);

        // 10 to 0x3f8, 4 to 0x80, 5 elsewhere, whichever way
        var values = new long[plan.Counters.Count];
        values[pio["total"]] = 19;
        values[pio["port == 1016"]] = 10;
        values[pio["port == 128"]] = 4;
        var series = plan.Outputs.Where(o => o.Family == MetricFamily.Pio)
            .ToDictionary(o => (o.Label1, o.Label2), o => CounterPlan.Evaluate(o, values));
        Assert.Equal(3, series.Count);
        Assert.Equal(10, series[(0x3f8, CounterPlan.OtherDirection)]);
        Assert.Equal(4, series[(0x80, CounterPlan.OtherDirection)]);
        Assert.Equal(5, series[(CounterPlan.Other, CounterPlan.OtherDirection)]);
    }

    [Fact]
    public void Userspace_exits_split_restarts_and_errors_from_reasons()
    {
        CounterPlan plan = Plan(KvmIsa.Svm, new CountingKeys { Keyed = KeyedFamilies.All });
        var filters = plan.Counters.Where(c => c.Tracepoint.Name == "kvm_userspace_exit").Select(c => c.Filter).ToList();
        Assert.Contains("errno == 0 && reason == 2", filters); // KVM_EXIT_IO
        Assert.Contains("errno == -4", filters);
        Assert.Contains("errno < 0 && errno != -4", filters);
    }

    [Fact]
    public void Halt_wakeups_are_polled_or_waited_and_mmio_by_type_only()
    {
        CounterPlan plan = Plan(KvmIsa.Svm, new CountingKeys { Keyed = KeyedFamilies.Exits | KeyedFamilies.Directions });
        var wake = plan.Outputs.Where(o => o.Family == MetricFamily.HaltWakeups).ToList();
        Assert.Equal([(uint)HaltOutcome.PollSuccess, (uint)HaltOutcome.Waited], wake.Select(o => o.Label1));
        var values = new long[plan.Counters.Count];
        values[wake[1].Plus[0]] = 100; // total
        values[wake[0].Plus[0]] = 30;  // waited == 0
        Assert.Equal(70, CounterPlan.Evaluate(wake[1], values));
        var mmio = plan.Outputs.Where(o => o.Family == MetricFamily.Mmio).ToList();
        Assert.All(mmio, o => Assert.Equal(CounterPlan.OtherPage, o.Label2));
        Assert.Equal(2, plan.Counters.Count(c => c.Tracepoint.Name == "kvm_mmio" && c.Filter is not null)); // writes = the rest
        Array.Clear(values);
        values[mmio[2].Plus[0]] = 10;  // total
        values[mmio[0].Plus[0]] = 1;   // unsatisfied reads
        values[mmio[1].Plus[0]] = 3;   // reads
        Assert.Equal([1L, 3L, 6L], mmio.Select(o => CounterPlan.Evaluate(o, values)));
    }

    [Fact]
    public void By_default_only_exit_reasons_are_keyed_and_the_rest_is_counted_whole_under_other()
    {
        CounterPlan plan = Plan(KvmIsa.Vmx);
        // The events of an exit to user space get their totals alone, as `perf stat -e` counts them: a direction
        // filter would match every other event, and a matching counter costs the kernel as much as the total.
        string[] exitPath = ["kvm_pio", "kvm_mmio", "kvm_userspace_exit"];
        Assert.Equal([null, null, null], plan.Counters.Where(c => exitPath.Contains(c.Tracepoint.Name)).Select(c => c.Filter));
        Assert.All(plan.Outputs.Where(o => o.Family is MetricFamily.Pio or MetricFamily.UserspaceExits), o => Assert.Equal(CounterPlan.Other, o.Label1));
        Assert.Equal([((ulong)CounterPlan.OtherDirection, (uint)CounterPlan.Other)],
            plan.Outputs.Where(o => o.Family == MetricFamily.Pio).Select(o => (o.Label2, o.Label1)));
        Assert.Equal([(CounterPlan.OtherDirection, CounterPlan.OtherPage)],
            plan.Outputs.Where(o => o.Family == MetricFamily.Mmio).Select(o => (o.Label1, o.Label2)));
        Assert.Equal(Decoders.ExitReasons.Reasons(KvmIsa.Vmx).Count + 2, plan.Counters.Count(c => c.Tracepoint.Name == "kvm_exit"));

        CounterPlan none = Plan(KvmIsa.Vmx, new CountingKeys { Keyed = KeyedFamilies.None });
        Assert.Equal([null], none.Counters.Where(c => c.Tracepoint.Name == "kvm_exit").Select(c => c.Filter));
        Assert.Equal([(CounterPlan.Other, (ulong)KvmIsa.Vmx)], none.Outputs.Where(o => o.Family == MetricFamily.Exits).Select(o => (o.Label1, o.Label2)));
        Assert.True(Plan(KvmIsa.Vmx, new CountingKeys { Keyed = KeyedFamilies.All }).Counters.Count > plan.Counters.Count + 60);
    }

    [Theory]
    [InlineData("all", KeyedFamilies.All)]
    [InlineData("none", KeyedFamilies.None)]
    [InlineData("exits", KeyedFamilies.Exits)]
    [InlineData(" ports, msrs ,cpuid-leaves", KeyedFamilies.Ports | KeyedFamilies.Msrs | KeyedFamilies.CpuidLeaves)]
    [InlineData("userspace-exits,vectors", KeyedFamilies.UserspaceExits | KeyedFamilies.Vectors)]
    [InlineData("directions", KeyedFamilies.Directions)]
    public void Keyed_families_parse_from_the_setting(string text, KeyedFamilies expected) =>
        Assert.Equal(expected, CountingKeys.ParseFamilies(text));

    [Fact]
    public void An_unknown_keyed_family_names_itself_and_the_choices()
    {
        var e = Assert.Throws<FormatException>(() => CountingKeys.ParseFamilies("exits,port"));
        Assert.Equal("'port' is not one of all, none, exits, userspace-exits, ports, msrs, cpuid-leaves, vectors, directions", e.Message);
    }

    [Fact]
    public void Other_threads_count_only_the_kvmmmu_totals_and_unwanted_tracepoints_are_left_out()
    {
        Assert.Empty(CounterPlan.ForOtherThreads(Decoders, _ => true).Counters); // no count-only kvmmmu event in the fixtures
        CounterPlan pioOnly = CounterPlan.ForVcpuThreads(Decoders, t => t.Name == "kvm_pio", KvmIsa.Svm, new CountingKeys());
        Assert.All(pioOnly.Counters, c => Assert.Equal("kvm_pio", c.Tracepoint.Name));
        Assert.Equal([KvmEventKind.Pio], pioOnly.Totals.Select(t => t.Kind));
    }

    [Theory]
    [InlineData("vendor_id\t: AuthenticAMD\n", KvmIsa.Svm)]
    [InlineData("processor\t: 0\nvendor_id\t: GenuineIntel\n", KvmIsa.Vmx)]
    [InlineData("vendor_id\t: HygonGenuine\n", KvmIsa.Svm)]
    [InlineData("", KvmIsa.Vmx)]
    public void The_host_table_follows_the_cpu_vendor(string cpuinfo, uint isa) => Assert.Equal(isa, HostIsa.FromCpuinfo(cpuinfo));

    [Fact]
    public void Key_lists_parse_hex_and_decimal_and_name_the_option_on_error()
    {
        Assert.Equal([0x3f8u, 128u], CountingKeys.ParseList("--count-ports", "0x3f8, 128"));
        var e = Assert.Throws<FormatException>(() => CountingKeys.ParseList("--count-ports", "0x3f8,com1"));
        Assert.Equal("--count-ports: 'com1' is not a number (hex with 0x, or decimal)", e.Message);
    }
}
