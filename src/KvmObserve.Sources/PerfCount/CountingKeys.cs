using System.Globalization;

namespace KvmObserve.Sources.PerfCount;

/// <summary>
/// The keys a counting source counts one by one. Counters cannot discover keys: ports, MSRs and CPUID leaves outside
/// these lists are counted together under "other" (a record source sees every key). The defaults are the ones guests
/// hit most: legacy devices and PCI config ports, the timer, APIC and syscall MSRs, the leaves guests probe at boot.
/// </summary>
public sealed class CountingKeys
{
    public IReadOnlyList<uint> Ports { get; init; } =
        [0x20, 0x21, 0x40, 0x43, 0x60, 0x64, 0x70, 0x71, 0x80, 0xa0, 0xa1, 0x2f8, 0x3f8, 0x3fd, 0x402, 0x510, 0x511, 0xcf8, 0xcfc, 0xcfe];

    public IReadOnlyList<uint> Msrs { get; init; } =
    [
        0x10,                         // IA32_TSC
        0x1b,                         // IA32_APIC_BASE
        0x48, 0x49,                   // SPEC_CTRL, PRED_CMD
        0x6e0,                        // TSC_DEADLINE
        0x80b, 0x830, 0x832, 0x838, 0x83e, // x2APIC EOI, ICR, LVT timer, initial count, divide
        0xc0000080,                   // EFER
        0xc0000100, 0xc0000101, 0xc0000102, // FS_BASE, GS_BASE, KERNEL_GS_BASE
        0x4b564d00, 0x4b564d01, 0x4b564d02, 0x4b564d03, 0x4b564d04, // KVM wall clock, system time, async pf, steal, PV EOI
    ];

    public IReadOnlyList<uint> CpuidLeaves { get; init; } =
        [0x0, 0x1, 0x4, 0x6, 0x7, 0xb, 0xd, 0x14, 0x1f, 0x40000000, 0x40000001, 0x80000000, 0x80000001, 0x80000007, 0x80000008];

    /// <summary>Exception vectors 0-31: a bounded set, counted whole.</summary>
    public static IReadOnlyList<uint> Vectors { get; } = Enumerable.Range(0, 32).Select(v => (uint)v).ToList();

    /// <summary>Parses "0x3f8,0x80,1016" (hex with 0x, else decimal).</summary>
    public static IReadOnlyList<uint> ParseList(string option, string text)
    {
        var values = new List<uint>();
        foreach (string item in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            bool ok = item.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
                ? uint.TryParse(item.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out uint v)
                : uint.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out v);
            if (!ok)
                throw new FormatException($"{option}: '{item}' is not a number (hex with 0x, or decimal)");
            values.Add(v);
        }
        return values;
    }
}
