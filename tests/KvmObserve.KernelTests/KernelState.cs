namespace KvmObserve.KernelTests;

/// <summary>What the agent may leave in the kernel: nothing.</summary>
public static class KernelState
{
    public const string Tracefs = "/sys/kernel/tracing";

    public static IReadOnlyList<string> InstancesOf(int pid) =>
        Directory.Exists(Path.Combine(Tracefs, "instances"))
            ? Directory.GetDirectories(Path.Combine(Tracefs, "instances"), $"kvmobserve-{pid}*").Select(d => Path.GetFileName(d)).ToList()
            : [];

    public static string GlobalEnabledEvents() =>
        File.Exists(Path.Combine(Tracefs, "set_event")) ? File.ReadAllText(Path.Combine(Tracefs, "set_event")).Trim() : "";
}
