using System.Globalization;

namespace KvmObserve.Sources.PerfCount;

/// <summary>Families whose values a counting source counts one by one, each with a filtered counter per value.</summary>
[Flags]
public enum KeyedFamilies
{
    None = 0,
    Exits = 1,
    UserspaceExits = 2,
    Ports = 4,
    Msrs = 8,
    CpuidLeaves = 16,
    Vectors = 32,

    /// <summary>Not a key list: PIO and MSR accesses per direction and MMIO per type, one filtered counter each that
    /// matches about half the events (a matching counter costs the kernel as much as the tracepoint's own total).</summary>
    Directions = 64,
    All = Exits | UserspaceExits | Ports | Msrs | CpuidLeaves | Vectors | Directions,
}

/// <summary>
/// The keys a counting source counts one by one. Counters cannot discover keys: ports, MSRs and CPUID leaves outside
/// these lists are counted together under "other" (a record source sees every key). The defaults are the ones guests
/// hit most: legacy devices and PCI config ports, the timer, APIC and syscall MSRs, the leaves guests probe at boot.
/// </summary>
/// <remarks>Each key is a counter with a filter, and the kernel runs every filter of a tracepoint on every one of its
/// events on the thread: measured here about 20 ns per key that does not match, and about 180 ns for one that does,
/// as much as the tracepoint's own counter. So only the families in <see cref="Keyed"/> are keyed (by default exit
/// reasons, where one key in sixty matches); the others are counted once per tracepoint, under "other" (PIO, MSR and
/// MMIO directions too: a direction counter matches every other event). The bpf source keys everything at a fixed
/// cost.</remarks>
public sealed class CountingKeys
{
    /// <summary>The setting's names of the families, in <see cref="KeyedFamilies"/> order.</summary>
    public static readonly IReadOnlyList<(string Name, KeyedFamilies Family)> FamilyNames =
    [
        ("exits", KeyedFamilies.Exits), ("userspace-exits", KeyedFamilies.UserspaceExits), ("ports", KeyedFamilies.Ports),
        ("msrs", KeyedFamilies.Msrs), ("cpuid-leaves", KeyedFamilies.CpuidLeaves), ("vectors", KeyedFamilies.Vectors),
        ("directions", KeyedFamilies.Directions),
    ];

    /// <summary>Which families get a counter per key; the rest are counted whole.</summary>
    public KeyedFamilies Keyed { get; init; } = KeyedFamilies.Exits;

    /// <summary>Parses "all", "none" or a comma-separated list of <see cref="FamilyNames"/>.</summary>
    public static KeyedFamilies ParseFamilies(string text)
    {
        string t = text.Trim();
        if (t == "all")
            return KeyedFamilies.All;
        if (t == "none")
            return KeyedFamilies.None;
        KeyedFamilies result = KeyedFamilies.None;
        foreach (string item in t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int i = FamilyNames.Select(f => f.Name).ToList().IndexOf(item);
            if (i < 0)
                throw new FormatException($"'{item}' is not one of all, none, {string.Join(", ", FamilyNames.Select(f => f.Name))}");
            result |= FamilyNames[i].Family;
        }
        return result;
    }

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
