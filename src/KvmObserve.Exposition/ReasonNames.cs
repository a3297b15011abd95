using System.Globalization;
using KvmObserve.Aggregation.Series;

namespace KvmObserve.Exposition;

/// <summary>Short names of the exit reasons the storm detector counts, for its log lines: the same words as the
/// metrics' labels ("exit HLT", "userspace IO", "msr 0x10 read", "cpuid 0x1", "halt poll_fail").</summary>
public static class ReasonNames
{
    public static string Describe(ExpositionContext context, MetricFamily family, uint label1, ulong label2) => family switch
    {
        MetricFamily.Exits => "exit " + (label1 == MetricFamilies.OtherKey ? "other" : context.ExitReasons.Name((uint)label2, label1)),
        MetricFamily.UserspaceExits => "userspace " + label2 switch
        {
            0 => context.UserspaceExitReasons.GetValueOrDefault(label1) ?? label1.ToString(CultureInfo.InvariantCulture),
            1 => "restart",
            _ => "error",
        },
        MetricFamily.Msr => $"msr {LabelValues.Key(label1)} {LabelValues.ReadWrite(label2)}",
        MetricFamily.Cpuid => $"cpuid {LabelValues.Key(label1)}",
        MetricFamily.HaltWakeups => "halt " + LabelValues.HaltOutcome(label1),
        _ => $"{family} {label1}",
    };
}
