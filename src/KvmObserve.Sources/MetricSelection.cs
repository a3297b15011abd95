using KvmObserve.Decoding.Events;

namespace KvmObserve.Sources;

/// <summary>
/// The metric groups a user can turn on (--metrics), the tracepoints each needs, and which need records: a label whose
/// values cannot be listed in advance (port, MMIO page, MSR, CPUID leaf) is learnt from records; plain counts by a
/// bounded key (exit reason, userspace reason, vector, outcome) can be counted in the kernel.
/// </summary>
public static class MetricSelection
{
    public static IReadOnlyDictionary<string, string[]> Tracepoints { get; } = new Dictionary<string, string[]>
    {
        ["exits"] = ["kvm_exit", "kvm_entry"],
        ["userspace_exits"] = ["kvm_userspace_exit"],
        ["pio"] = ["kvm_pio"],
        ["mmio"] = ["kvm_mmio"],
        ["msr"] = ["kvm_msr"],
        ["cpuid"] = ["kvm_cpuid"],
        ["emulated_instructions"] = ["kvm_emulate_insn"],
        ["injected_exceptions"] = ["kvm_inj_exception"],
        ["halt"] = ["kvm_vcpu_wakeup", "kvm_halt_poll_ns"],
        ["mmu_page_faults"] = ["kvm_page_fault", "fast_page_fault"],
        ["mmu_events"] = TracepointCatalog.All.Where(t => t.Kind >= KvmEventKind.MmuSpteRequested).Select(t => t.Name).ToArray(),
    };

    /// <summary>Groups whose key labels come from the guest and cannot be counted one counter per value.</summary>
    public static IReadOnlySet<string> NeedRecords { get; } = new HashSet<string> { "pio", "mmio", "msr", "cpuid" };

    public static IReadOnlyList<string> All { get; } = Tracepoints.Keys.ToList();

    /// <summary>Parses "exits,halt" ("all" for every group); the error names the option and the allowed values.</summary>
    public static IReadOnlyList<string> Parse(string text)
    {
        var groups = new List<string>();
        foreach (string item in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (item == "all")
                groups.AddRange(All);
            else if (Tracepoints.ContainsKey(item))
                groups.Add(item);
            else
                throw new FormatException($"'{item}' is not one of all, {string.Join(", ", All)}");
        }
        return groups.Count == 0 ? throw new FormatException("name at least one group") : groups.Distinct().ToList();
    }

    public static IReadOnlyCollection<string> TracepointsFor(IEnumerable<string> groups) =>
        groups.SelectMany(g => Tracepoints[g]).ToHashSet();

    public static IReadOnlyList<string> RecordGroups(IEnumerable<string> groups) => groups.Where(NeedRecords.Contains).ToList();
}
