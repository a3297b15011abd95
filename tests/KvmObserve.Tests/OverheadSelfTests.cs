using KvmObserve.Agent.Overhead;

namespace KvmObserve.Tests;

/// <summary>What `overhead` reads of the agent's own metrics for each round.</summary>
public class OverheadSelfTests
{
    private const string Exposition = """
        # HELP kvmobserve_events_total Records decoded, by source and tracepoint.
        # TYPE kvmobserve_events_total counter
        kvmobserve_events_total{source="perf-count",event="kvm_pio"} 55000
        kvmobserve_events_total{source="perf-count",event="kvm_userspace_exit"} 55002
        kvmobserve_events_unattributed_total{source="perf-count",event="kvm_pio"} 2101
        kvmobserve_events_unattributed_total{source="perf-count",event="kvm_userspace_exit"} 2102
        kvmobserve_events_lost_total{source="perf-count",cpu="0"} 3
        kvmobserve_events_lost_total{source="perf-count",cpu="1"} 4
        kvmobserve_decode_errors_total{source="perf-count",event="none"} 0
        kvmobserve_decode_errors_total{source="perf-count",event="kvm_exit"} 2
        kvmobserve_attach_window_seconds_total{source="perf-count"} 0.0125
        kvm_pio_total{vm="a",port="other",direction="other"} 52899
        """;

    [Fact]
    public void Events_are_the_driven_tracepoints_and_the_rest_sum_over_their_series()
    {
        Dictionary<string, double> self = AgentObserver.SelfFamilies(Exposition, "kvm_pio");
        Assert.Equal(55000, self["kvmobserve_events_total"]);
        Assert.Equal(2101, self["kvmobserve_events_unattributed_total"]);
        Assert.Equal(7, self["kvmobserve_events_lost_total"]);
        Assert.Equal(2, self["kvmobserve_decode_errors_total"]); // malformed records of any tracepoint
        Assert.Equal(0.0125, self["kvmobserve_attach_window_seconds_total"]);
        Assert.False(self.ContainsKey("kvmobserve_reader_wakeups_total")); // not reported by this source: not made up
        Assert.False(self.ContainsKey("kvm_pio_total"));
    }

    [Fact]
    public void A_source_that_counted_nothing_yet_reports_zero_events_lost_and_malformed()
    {
        Dictionary<string, double> self = AgentObserver.SelfFamilies("kvmobserve_events_total{source=\"bpf\",event=\"kvm_msr\"} 9\n", "kvm_pio");
        Assert.Equal(0, self["kvmobserve_events_total"]);
        Assert.Equal(0, self["kvmobserve_events_lost_total"]);
        Assert.Equal(0, self["kvmobserve_decode_errors_total"]);
    }
}
