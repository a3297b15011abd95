using KvmObserve.Sources;

namespace KvmObserve.Tests;

public class SourceSelectionTests
{
    private const string NoBpfObject = "probes/kvmobserve.bpf.o is missing";
    private static readonly HostCapabilities Everything = new("/sys/kernel/tracing", null, null, null);
    private static readonly HostCapabilities NoBpf = new("/sys/kernel/tracing", null, null, NoBpfObject);
    private static readonly HostCapabilities NoPerf = new("/sys/kernel/tracing", null, "Permission denied (errno 13)", NoBpfObject);

    [Fact]
    public void Auto_prefers_the_bpf_programs_for_every_metric_where_they_load()
    {
        (string source, string reason) = SourceSelection.Choose("auto", MetricSelection.All, Everything);
        Assert.Equal("bpf", source);
        Assert.Contains("in the kernel", reason);
    }

    [Fact]
    public void Bpf_requested_where_it_cannot_load_is_an_error_naming_why()
    {
        var e = Assert.Throws<InvalidOperationException>(() => SourceSelection.Choose("bpf", MetricSelection.All, NoBpf));
        Assert.Equal($"--source bpf: {NoBpfObject}", e.Message);
    }

    [Fact]
    public void Auto_counts_in_the_kernel_when_every_metric_is_a_plain_count()
    {
        (string source, string reason) = SourceSelection.Choose("auto", ["exits", "userspace_exits", "halt"], NoBpf);
        Assert.Equal("perf-count", source);
        Assert.Contains("plain count", reason);
        Assert.StartsWith($"BPF cannot run here ({NoBpfObject})", reason);
    }

    [Fact]
    public void Auto_streams_records_when_a_metric_learns_keys_from_them()
    {
        (string source, string reason) = SourceSelection.Choose("auto", MetricSelection.All, NoBpf);
        Assert.Equal("tracefs", source);
        Assert.Contains("; pio,mmio,msr,cpuid need records", reason);
    }

    [Fact]
    public void Auto_falls_back_to_tracefs_without_perf_and_says_why()
    {
        (string source, string reason) = SourceSelection.Choose("auto", ["exits"], NoPerf);
        Assert.Equal("tracefs", source);
        Assert.Contains("Permission denied", reason);
    }

    [Fact]
    public void A_requested_source_that_cannot_run_is_an_error_naming_why()
    {
        var e = Assert.Throws<InvalidOperationException>(() => SourceSelection.Choose("perf", MetricSelection.All, NoPerf));
        Assert.Equal("--source perf: perf_event_open does not work here: Permission denied (errno 13)", e.Message);
        Assert.Equal(("perf-count", "requested"), SourceSelection.Choose("perf-count", MetricSelection.All, Everything));
    }

    [Fact]
    public void Metric_groups_parse_and_map_to_their_tracepoints()
    {
        Assert.Equal(MetricSelection.All, MetricSelection.Parse("all"));
        Assert.Equal(["kvm_vcpu_wakeup", "kvm_halt_poll_ns", "kvm_pio"], MetricSelection.TracepointsFor(MetricSelection.Parse("halt,pio")));
        var e = Assert.Throws<FormatException>(() => MetricSelection.Parse("exits,ports"));
        Assert.StartsWith("'ports' is not one of all, exits, userspace_exits", e.Message);
    }

    [Theory]
    [InlineData("0-1\n", new[] { 0, 1 })]
    [InlineData("0-3,8-9", new[] { 0, 1, 2, 3, 8, 9 })]
    [InlineData("5", new[] { 5 })]
    public void Cpu_lists_parse_like_the_kernel_prints_them(string text, int[] cpus) =>
        Assert.Equal(cpus, CpuTopology.ParseList(text));
}
