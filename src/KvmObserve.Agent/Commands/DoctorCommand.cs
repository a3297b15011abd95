using System.CommandLine;
using KvmObserve.Agent.Doctor;

namespace KvmObserve.Agent.Commands;

/// <summary>`kvmobserve doctor`: what this host supports, one line per check.</summary>
internal static class DoctorCommand
{
    public static Command Create()
    {
        var noProbe = new Option<bool>("--no-probe") { Description = "skip the short micro-VM probe that shows which tracepoints fire" };
        var command = new Command("doctor", "Check tracefs, each tracepoint, perf_event_open, BPF, /dev/kvm and lockdown") { noProbe };
        command.SetAction(parse =>
        {
            int failures = 0;
            foreach (Finding f in HostChecks.Run(probe: !parse.GetValue(noProbe)))
            {
                Console.Out.WriteLine(f.ToString());
                if (f.Verdict == Verdict.Fail)
                    failures++;
            }
            return failures == 0 ? 0 : 1;
        });
        return command;
    }
}
