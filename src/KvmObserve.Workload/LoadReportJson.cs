using System.Text.Json;

namespace KvmObserve.Workload;

/// <summary>
/// The JSON `load` prints: exactly what was driven, per VM and vCPU.
/// <code>
/// {"vms":[{"name":"load-0","pid":123,"cgroup":"/kvmobserve-load-load-0","vcpus":[{"vcpu":0,"tid":124,"pio":{"0x3f8/out":1000},"mmio":{...},
///   "msr":{"0x1a0/read":1000},"cpuid":{"0x0":1000},"userspace_exits":{"IO":1000,"MMIO":1},"halts":0,
///   "interrupts":0,"halt_kicks":0,"pages_touched":0,"guest_steal_ns":0,
///   "kernel_stats":{"halt_wakeup":0,...}}]}]} (kernel_stats: KVM's own counters; a histogram as its total count)
/// </code>
/// </summary>
public static class LoadReportJson
{
    public static void WriteVm(Utf8JsonWriter w, VmReport vm)
    {
        w.WriteStartObject();
        w.WriteString("name", vm.Name);
        w.WriteNumber("pid", vm.Pid);
        w.WriteString("cgroup", vm.Cgroup);
        w.WriteStartArray("vcpus");
        foreach (VcpuReport v in vm.Vcpus)
        {
            w.WriteStartObject();
            w.WriteNumber("vcpu", v.Vcpu);
            w.WriteNumber("tid", v.Tid);
            WriteMap(w, "pio", v.Pio);
            WriteMap(w, "mmio", v.Mmio);
            WriteMap(w, "msr", v.Msr);
            WriteMap(w, "cpuid", v.Cpuid);
            WriteMap(w, "userspace_exits", v.UserspaceExits);
            w.WriteNumber("halts", v.Halts);
            WriteMap(w, "phase_ns", v.PhaseNs);
            w.WriteNumber("interrupts", v.Interrupts);
            w.WriteNumber("halt_kicks", v.HaltKicks);
            w.WriteNumber("pages_touched", v.PagesTouched);
            w.WriteNumber("guest_steal_ns", v.GuestStealNs);
            WriteMap(w, "kernel_stats", v.KernelStats);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static void WriteMap(Utf8JsonWriter w, string name, SortedDictionary<string, long> map)
    {
        w.WriteStartObject(name);
        foreach ((string k, long v) in map)
            w.WriteNumber(k, v);
        w.WriteEndObject();
    }

    public static string Serialize(IEnumerable<JsonElement> vms)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartArray("vms");
            foreach (JsonElement vm in vms)
                vm.WriteTo(w);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    public static string Serialize(VmReport vm)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
            WriteVm(w, vm);
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }
}
