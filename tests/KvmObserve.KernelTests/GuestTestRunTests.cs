using KvmObserve.KernelTests.VmHost;

namespace KvmObserve.KernelTests;

/// <summary>What a batch in the test VM that never wrote its TRX file (the guest hung or panicked) still tells: the
/// results vstest's console logger printed, as in CI's log.</summary>
public class GuestTestRunTests
{
    [Fact]
    public void The_console_results_of_a_batch_that_never_ended_are_kept()
    {
        const string output = """
            [xUnit.net 00:00:00.29]   Starting:    KvmObserve.KernelTests
              Passed KvmObserve.KernelTests.NiceTests.A_counting_agent_runs_at_nice_19 [50 s]
              Failed KvmObserve.KernelTests.AgentOnLoadTests.Scraped(source: "bpf") [2 m 7 s]
              Error Message:
               Assert.Equal() Failure: Values differ
            Expected: 1000
            Actual:   57
              Stack Trace:
                 at KvmObserve.KernelTests.AgentOnLoadTests.Scraped(String source)
              Skipped KvmObserve.KernelTests.AgentOnLoadTests.Mapped [1 ms]
              Error Message:
               needs the tracefs ring-buffer memory map
            """;
        var results = GuestTestRun.ParseConsole(output, "6.1.0-57-amd64 npt=Y").ToDictionary(r => r.Test, r => r.Result);

        Assert.Equal(3, results.Count);
        Assert.Null(results["KvmObserve.KernelTests.NiceTests.A_counting_agent_runs_at_nice_19"].Failure);
        GuestResult failed = results["KvmObserve.KernelTests.AgentOnLoadTests.Scraped(source: \"bpf\")"];
        Assert.Equal("in the test VM (6.1.0-57-amd64 npt=Y): Assert.Equal() Failure: Values differ\nExpected: 1000\nActual:   57", failed.Failure);
        Assert.Equal("in the test VM (6.1.0-57-amd64 npt=Y): needs the tracefs ring-buffer memory map",
            results["KvmObserve.KernelTests.AgentOnLoadTests.Mapped"].SkipReason);
    }

    /// <summary>load's words for a nested guest that left its program (MicroVcpu, VmRunner) earn a retry; a count that
    /// is wrong, or load failing for any other reason, does not.</summary>
    [Theory]
    [InlineData("load failed (1): kvmobserve load: VM churn168-1-c4: vCPU 0: the guest shut down (triple fault); after it (kvm_amd resets the vCPU): rip 0xfff0 (program at 0x100000), rsp 0x0", true)]
    [InlineData("kvmobserve overhead: VM overhead-b1: vCPU 1: guest exception #UD (vector 6) at rip 0x100013 (program at 0x110000), rsp 0x11fff0, error code 0x0, cr2 0x0", true)]
    [InlineData("kvmobserve load: VM load-0: vCPU 0: its guest went astray: its phase has run 67 s, where it takes at most 66 s", true)]
    [InlineData("kvmobserve load: VM load-1: vCPU 1: its guest went astray: more exits than its program makes, at rip 0x110011 (program at 0x110000), rsp 0x11fff0", true)]
    [InlineData("kvmobserve load: VM load-0: vCPU 0: unexpected exit 9 at rip 0x100000 (program at 0x100000), rsp 0x10fff0", false)]
    [InlineData("Assert.Equal() Failure: Values differ\nExpected: 1000\nActual:   57", false)]
    public void Only_a_workload_guest_that_left_its_program_earns_a_retry(string failure, bool retried)
    {
        Assert.Equal(retried, GuestTestRun.WorkloadGuestFailed().IsMatch(failure));
    }
}
