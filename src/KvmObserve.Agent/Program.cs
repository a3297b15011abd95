using System.CommandLine;
using System.Runtime.InteropServices;
using KvmObserve.Agent.Commands;

var root = new RootCommand("kvmobserve: KVM observability agent (Prometheus /metrics from kvm tracepoints)");
root.Subcommands.Add(RunCommand.Create());
root.Subcommands.Add(LoadCommand.Create());
root.Subcommands.Add(DoctorCommand.Create());
root.Subcommands.Add(ReplayCommand.Create());
root.Subcommands.Add(OverheadCommand.Create());
RunCommand.AddTo(root); // `kvmobserve` alone runs the agent
ParseResult parsed = root.Parse(args);
if (parsed.Errors.Count > 0)
{
    // One line and exit 2, as for a bad setting: the full help hid the error and exited 1, like a failed run.
    Console.Error.WriteLine($"kvmobserve: {parsed.Errors[0].Message} (kvmobserve --help lists the commands and options)");
    return 2;
}
// SIGTERM, SIGINT and SIGHUP cancel the command, which then stops in order (probes released, a last OTLP export).
// Ours, not System.CommandLine's: its handler exits 143 at once, state left behind, when the signal comes before the
// action's first await has returned a task, and the agent creates its kernel state before that.
using var stop = new CancellationTokenSource();
PosixSignalRegistration[] registrations = [.. new[] { PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGHUP }.Select(signal =>
    PosixSignalRegistration.Create(signal, context =>
    {
        context.Cancel = true;
        stop.Cancel();
    }))];
// `overhead` starts its agents with this set to its PID: they stop as on SIGTERM when it ends, even by SIGKILL, where
// they would otherwise run on, unread, with their probes on. A pidfd follows the process, not the thread that forked.
if (int.TryParse(Environment.GetEnvironmentVariable(KvmObserve.Agent.Overhead.Child.StopWithParent), out int parent))
{
    KvmObserve.Native.SafeFd? parentFd = KvmObserve.Native.Sys.PidfdOpen(parent);
    if (parentFd is null || KvmObserve.Native.Sys.Getppid() != parent) // gone already (and its PID maybe reused)
        stop.Cancel();
    else
        new Thread(() =>
        {
            KvmObserve.Native.Sys.WaitReadable(parentFd);
            stop.Cancel();
        }) { IsBackground = true, Name = "kvmobserve parent" }.Start();
}
try
{
    return await parsed.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null }, stop.Token);
}
finally
{
    foreach (PosixSignalRegistration r in registrations)
        r.Dispose();
}
