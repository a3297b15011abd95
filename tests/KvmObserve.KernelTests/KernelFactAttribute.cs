namespace KvmObserve.KernelTests;

/// <summary>
/// A test that needs the real kernel: root, /dev/kvm and tracefs. It skips, saying why, only on machines without
/// them, and never under CI=true: there a missing requirement fails the test instead of hiding it.
/// </summary>
public sealed class KernelFactAttribute : FactAttribute
{
    public KernelFactAttribute()
    {
        string? missing = Requirements.Missing();
        if (missing is not null && Environment.GetEnvironmentVariable("CI") != "true")
            Skip = $"needs {missing}";
    }
}

public static class Requirements
{
    public static string? Missing()
    {
        if (Environment.UserName != "root")
            return "root (tracefs instances and KVM)";
        if (!File.Exists("/dev/kvm"))
            return "/dev/kvm";
        if (!Directory.Exists("/sys/kernel/tracing") && !Directory.Exists("/sys/kernel/debug/tracing"))
            return "tracefs";
        return null;
    }
}

/// <summary>A <see cref="KernelFactAttribute"/> with data rows.</summary>
public sealed class KernelTheoryAttribute : TheoryAttribute
{
    public KernelTheoryAttribute()
    {
        string? missing = Requirements.Missing();
        if (missing is not null && Environment.GetEnvironmentVariable("CI") != "true")
            Skip = $"needs {missing}";
    }
}
