using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace KvmObserve.KernelTests;

/// <summary>`kvmobserve overhead` on the real kernel: every arm runs, and every observer was live (saw every exit).
/// The figures themselves are measurements, printed for people (README "What observing costs"), not asserted.</summary>
public class OverheadTests
{
    private static (int Code, string Stdout, string Stderr) Overhead(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"));
        psi.ArgumentList.Add("overhead");
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync(), stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TestTime.Ms(300_000)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"overhead did not finish in {TestTime.Seconds(300).TotalSeconds:0} s");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [KernelFact]
    public void Every_arm_runs_interleaved_and_every_observer_sees_every_exit()
    {
        bool bpftrace = File.Exists("/usr/bin/bpftrace");
        Assert.True(bpftrace || Environment.GetEnvironmentVariable("CI") != "true", "bpftrace is missing (apt-get install bpftrace)");
        string[] against = bpftrace ? ["bpftrace", "drain", "drain-splice"] : ["drain", "drain-splice"];
        int n = Math.Max(1000, TestTime.Count(3000)); // overhead's least
        (int code, string stdout, string stderr) = Overhead("--source", "bpf,tracefs", "--against", string.Join(',', against),
            "--rounds", "2", "--count", n.ToString(CultureInfo.InvariantCulture), "--json");
        Assert.True(code == 0, stderr);
        JsonElement report = JsonDocument.Parse(stdout).RootElement;
        Assert.Equal("pio", report.GetProperty("mode").GetString());
        JsonElement[] arms = report.GetProperty("arms").EnumerateArray().ToArray();
        Assert.Equal(["none", "agent --source bpf", "agent --source tracefs", .. against.Select(a => a switch
        {
            "drain" => "drain (trace_pipe_raw to nowhere)",
            "drain-splice" => "drain (trace_pipe_raw spliced to nowhere)",
            _ => "bpftrace @event = count()",
        })],
            arms.Select(a => a.GetProperty("observer").GetString()));
        foreach (JsonElement arm in arms)
        {
            Assert.Equal(2, arm.GetProperty("rounds_ns_per_exit").GetArrayLength());
            Assert.All(arm.GetProperty("rounds_ns_per_exit").EnumerateArray(), v => Assert.True(v.GetDouble() > 100, $"{v} ns per exit"));
            string name = arm.GetProperty("observer").GetString()!;
            long[] observed = arm.GetProperty("observed").EnumerateArray().Select(v => v.GetInt64()).ToArray();
            if (name.StartsWith("agent", StringComparison.Ordinal) || name.StartsWith("bpftrace", StringComparison.Ordinal))
                Assert.All(observed, o => Assert.Equal(n + 1000, o)); // the measured run and its warm-up VM: every PIO exit
            if (name.StartsWith("agent", StringComparison.Ordinal))
            {
                // Each round also says what the agent's own metrics counted while the measured VM ran.
                JsonElement[] self = arm.GetProperty("rounds_self").EnumerateArray().ToArray();
                Assert.Equal(2, self.Length);
                Assert.All(self, s =>
                {
                    Assert.Equal(0, s.GetProperty("kvmobserve_events_lost_total").GetDouble());
                    Assert.Equal(0, s.GetProperty("kvmobserve_decode_errors_total").GetDouble());
                    if (name.EndsWith("tracefs", StringComparison.Ordinal)) // woken at least once to read the exits' records
                        Assert.True(s.GetProperty("kvmobserve_reader_wakeups_total").GetDouble() >= 1, s.ToString());
                });
            }
            else if (name.StartsWith("drain", StringComparison.Ordinal))
                Assert.All(observed, o => Assert.True(o > n * 16, $"{o} bytes drained")); // 5+ records per exit
        }
        // What an arm adds is, per round, its time less the mean of the runs with no probes right before and after
        // it (the same for the arm without probes: its noise floor); the median over rounds.
        foreach (JsonElement arm in arms)
        {
            double[] measured = arm.GetProperty("rounds_ns_per_exit").EnumerateArray().Select(v => v.GetDouble()).ToArray();
            double[] baseline = arm.GetProperty("rounds_baseline_ns_per_exit").EnumerateArray().Select(v => v.GetDouble()).ToArray();
            Assert.Equal(2, baseline.Length);
            Assert.All(baseline, v => Assert.True(v > 100, $"{v} ns per exit with no probes"));
            double median = (measured[0] - baseline[0] + measured[1] - baseline[1]) / 2; // two rounds
            Assert.Equal(median, arm.GetProperty("added_ns_per_exit").GetDouble(), 0.25);
        }
    }

    /// <summary>In another mode every observer counts that mode's tracepoint, and an MSR operation is two exits
    /// (rdmsr, wrmsr): the agent and perf stat each see every kvm_msr of the warm-up VM and the measured one.</summary>
    [KernelFact]
    public void In_msr_mode_observers_count_kvm_msr_two_per_operation()
    {
        int n = Math.Max(1000, TestTime.Count(4000)); // overhead's least
        (int code, string stdout, string stderr) = Overhead("--mode", "msr", "--source", "tracefs", "--against", "perf-stat",
            "--rounds", "1", "--count", n.ToString(CultureInfo.InvariantCulture), "--json");
        Assert.True(code == 0, stderr);
        JsonElement report = JsonDocument.Parse(stdout).RootElement;
        Assert.Equal("msr", report.GetProperty("mode").GetString());
        JsonElement[] arms = report.GetProperty("arms").EnumerateArray().ToArray();
        Assert.Equal(["none", "tracefs", "perf-stat"], arms.Select(a => a.GetProperty("arm").GetString()));
        // n exits measured (n / 2 operations) and a warm-up VM of 1,000 operations (2,000 exits)
        foreach (JsonElement arm in arms.Skip(1))
            Assert.Equal([n + 2000], arm.GetProperty("observed").EnumerateArray().Select(v => v.GetInt64()));
        JsonElement agent = arms[1].GetProperty("rounds_self")[0];
        Assert.Equal(n, agent.GetProperty("kvmobserve_events_total").GetDouble()); // the measured VM's, of kvm_msr
    }

    [KernelFact(Kvm = false)]
    public void A_bad_option_is_one_line_and_exit_code_2()
    {
        (int code, _, string stderr) = Overhead("--against", "strace");
        Assert.Equal(2, code);
        Assert.Equal("kvmobserve overhead: --against: 'strace' is not one of drain, drain-splice, perf-record, perf-stat, bpftrace, none", stderr.Trim());
    }
}
