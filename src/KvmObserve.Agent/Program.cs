using System.CommandLine;
using KvmObserve.Agent.Commands;

var root = new RootCommand("kvmobserve: KVM observability agent (Prometheus /metrics from kvm tracepoints)");
root.Subcommands.Add(RunCommand.Create());
root.Subcommands.Add(LoadCommand.Create());
root.Subcommands.Add(DoctorCommand.Create());
root.Subcommands.Add(ReplayCommand.Create());
root.Subcommands.Add(OverheadCommand.Create());
RunCommand.AddTo(root); // `kvmobserve` alone runs the agent
// On SIGTERM/SIGINT System.CommandLine cancels the action and, by default, exits with 143 after 2 s. The agent's
// orderly stop (the host's 5 s: its probes released, a last OTLP export) must fit in it; systemd waits 15 s.
ParseResult parsed = root.Parse(args);
if (parsed.Errors.Count > 0)
{
    // One line and exit 2, as for a bad setting: the full help hid the error and exited 1, like a failed run.
    Console.Error.WriteLine($"kvmobserve: {parsed.Errors[0].Message} (kvmobserve --help lists the commands and options)");
    return 2;
}
return await parsed.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = TimeSpan.FromSeconds(10) });
