using KvmObserve.Decoding.Format;

namespace KvmObserve.Sources.PerfCount;

/// <summary>Which exit-reason table applies on this host: SVM on AMD and Hygon, VMX elsewhere (x86).</summary>
public static class HostIsa
{
    public static uint Detect() =>
        File.Exists("/proc/cpuinfo") ? FromCpuinfo(File.ReadAllText("/proc/cpuinfo")) : KvmIsa.Vmx;

    public static uint FromCpuinfo(string cpuinfo)
    {
        foreach (string line in cpuinfo.Split('\n'))
        {
            if (!line.StartsWith("vendor_id", StringComparison.Ordinal))
                continue;
            string vendor = line[(line.IndexOf(':') + 1)..].Trim();
            return vendor is "AuthenticAMD" or "HygonGenuine" ? KvmIsa.Svm : KvmIsa.Vmx;
        }
        return KvmIsa.Vmx;
    }
}
