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
return await root.Parse(args).InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = TimeSpan.FromSeconds(10) });
