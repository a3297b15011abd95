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
}
