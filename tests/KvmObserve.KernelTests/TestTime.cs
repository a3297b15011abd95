using System.Globalization;

namespace KvmObserve.KernelTests;

/// <summary>How long tests wait for things that take time: stretched in the test VM, where QEMU emulates every
/// instruction (a .NET process starts in about 5 s there, against 0.3 s on the host).</summary>
public static class TestTime
{
    public const string ScaleVariable = "KVMOBSERVE_TEST_TIME_SCALE";

    /// <summary>The stretch the test VM gets.</summary>
    public const double GuestScale = 6;

    public static double Scale { get; } =
        double.TryParse(Environment.GetEnvironmentVariable(ScaleVariable), NumberStyles.Float, CultureInfo.InvariantCulture, out double s) && s >= 1 ? s : 1;

    public static TimeSpan Seconds(double seconds) => TimeSpan.FromSeconds(seconds * Scale);

    public static int Ms(int ms) => (int)Math.Min(int.MaxValue, ms * Scale);

    /// <summary>How many operations a workload drives: fewer in the test VM, where each exit costs ~50 us of emulated
    /// hypervisor. The checks are exact at any count; a count only has to be large enough to matter.</summary>
    public static int Count(int n) => Scale > 1 ? Math.Max(10, (int)(n / Scale)) : n;
}
