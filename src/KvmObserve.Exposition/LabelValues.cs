using System.Globalization;
using KvmObserve.Aggregation.Series;

namespace KvmObserve.Exposition;

/// <summary>How label values are spelled; one place, since dashboards and alerts match on them.</summary>
public static class LabelValues
{
    public static string Hex(ulong value) => "0x" + value.ToString("x", CultureInfo.InvariantCulture);

    /// <summary>A key label: hex, or "other" for what a counting source does not count one by one.</summary>
    public static string Key(uint value) => value == MetricFamilies.OtherKey ? "other" : Hex(value);

    public static string Page(ulong pageNumber) => pageNumber == MetricFamilies.OtherPage ? "other" : Hex(pageNumber << 12);

    /// <summary>PIO's direction: "other" where a counting source does not tell them apart.</summary>
    public static string InOut(ulong write) => write == MetricFamilies.OtherDirection ? "other" : write != 0 ? "out" : "in";

    public static string ReadWrite(ulong write) => write == MetricFamilies.OtherDirection ? "other" : write != 0 ? "write" : "read";

    public static string MmioDirection(uint type) => type switch
    {
        0 => "unsatisfied_read",
        1 => "read",
        2 => "write",
        MetricFamilies.OtherDirection => "other",
        _ => type.ToString(CultureInfo.InvariantCulture),
    };

    public static string HaltOutcome(uint outcome) => (HaltOutcome)outcome switch
    {
        Aggregation.Series.HaltOutcome.PollSuccess => "poll_success",
        Aggregation.Series.HaltOutcome.PollFail => "poll_fail",
        Aggregation.Series.HaltOutcome.Waited => "waited",
        Aggregation.Series.HaltOutcome.Immediate => "immediate",
        _ => "unknown",
    };

    public static string PageFaultKind(uint kind) => (PageFaultKind)kind switch
    {
        Aggregation.Series.PageFaultKind.NotPresentRead => "not_present_read",
        Aggregation.Series.PageFaultKind.NotPresentWrite => "not_present_write",
        Aggregation.Series.PageFaultKind.NotPresentExec => "not_present_exec",
        Aggregation.Series.PageFaultKind.ProtectionRead => "protection_read",
        Aggregation.Series.PageFaultKind.ProtectionWrite => "protection_write",
        Aggregation.Series.PageFaultKind.ProtectionExec => "protection_exec",
        Aggregation.Series.PageFaultKind.ReservedBits => "reserved_bits",
        Aggregation.Series.PageFaultKind.FastFixed => "fast_fixed",
        Aggregation.Series.PageFaultKind.FastSpurious => "fast_spurious",
        _ => "fast_not_fixed",
    };

    /// <summary>x86 exception mnemonics by vector (Intel SDM vol. 3A, table 6-1).</summary>
    public static string Vector(uint vector) => vector switch
    {
        0 => "DE", 1 => "DB", 2 => "NMI", 3 => "BP", 4 => "OF", 5 => "BR", 6 => "UD", 7 => "NM", 8 => "DF",
        10 => "TS", 11 => "NP", 12 => "SS", 13 => "GP", 14 => "PF", 16 => "MF", 17 => "AC", 18 => "MC",
        19 => "XM", 20 => "VE", 21 => "CP", 28 => "HV", 29 => "VC", 30 => "SX",
        _ => vector.ToString(CultureInfo.InvariantCulture),
    };
}
