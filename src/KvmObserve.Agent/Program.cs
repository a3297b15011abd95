using System.CommandLine;
using KvmObserve.Agent.Commands;

var root = new RootCommand("kvmobserve: KVM observability agent (Prometheus /metrics from kvm tracepoints)");
root.Subcommands.Add(RunCommand.Create());
root.Subcommands.Add(LoadCommand.Create());
root.Subcommands.Add(DoctorCommand.Create());
root.Subcommands.Add(ReplayCommand.Create());
root.Subcommands.Add(OverheadCommand.Create());
RunCommand.AddTo(root); // `kvmobserve` alone runs the agent
return await root.Parse(args).InvokeAsync();
