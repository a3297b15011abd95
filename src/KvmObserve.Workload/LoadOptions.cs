namespace KvmObserve.Workload;

public sealed class LoadOptions
{
    public LoadMode Modes { get; set; } = LoadMode.Pio;
    public int Vms { get; set; } = 1;
    public int Vcpus { get; set; } = 1;

    /// <summary>Operations per mode per vCPU, or per round with <see cref="Duration"/>.</summary>
    public uint Count { get; set; } = 10_000;

    /// <summary>Repeat rounds of every mode until this much time has passed (null: one round).</summary>
    public TimeSpan? Duration { get; set; }

    public string Name { get; set; } = "load";

    /// <summary>APIC timer period of hlt mode: how long each halt lasts at most.</summary>
    public uint TimerPeriodNs { get; set; } = 200_000;

    /// <summary>How long the vCPU threads, created and named, wait before the guest runs: time for an observer that
    /// attaches per thread (perf-count, kvm_stat -p) to find them.</summary>
    public TimeSpan StartDelay { get; set; }

    /// <summary>Pin vCPU v to CPU v % nproc (spreads 2 vCPUs over both cores).</summary>
    public bool Pin { get; set; }

    /// <summary>Start and stop the VMs this many times in a row (VM start/stop churn); cycle c names its VMs NAME-cC.</summary>
    public int Cycles { get; set; } = 1;

    /// <summary>A cgroup v2 directory: each VM's process runs in a cgroup of its own below it, as libvirt puts each VM
    /// in a scope of machine.slice (null: the VMs stay in load's cgroup). In a VM's own process: the cgroup to enter.</summary>
    public string? Cgroup { get; set; }

    public static LoadMode ParseModes(IEnumerable<string> names)
    {
        LoadMode modes = LoadMode.None;
        foreach (string raw in names)
        {
            foreach (string name in raw.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (name == "all")
                {
                    modes |= LoadMode.Pio | LoadMode.Mmio | LoadMode.Msr | LoadMode.Cpuid | LoadMode.Hlt | LoadMode.Touch;
                    continue;
                }
                if (!Enum.TryParse(name, ignoreCase: true, out LoadMode m) || m == LoadMode.None || !Enum.IsDefined(m))
                    throw new ArgumentException($"--mode: '{name}' is not one of pio, mmio, msr, cpuid, hlt, touch, all");
                modes |= m;
            }
        }
        return modes == LoadMode.None ? LoadMode.Pio : modes;
    }
}
