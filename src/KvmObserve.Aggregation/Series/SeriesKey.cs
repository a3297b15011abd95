using System.Runtime.InteropServices;

namespace KvmObserve.Aggregation.Series;

/// <summary>
/// What one hot-path counter is kept per: the thread that hit the tracepoint (resolved to a VM and vCPU only when
/// read), the vCPU when the record names it (-1 otherwise), the family and two family-specific labels.
/// 24 bytes, compared as a whole.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public readonly record struct SeriesKey(int Tid, int Vcpu, MetricFamily Family, uint Label1, ulong Label2)
{
    public int Hash()
    {
        ulong h = (uint)Tid * 0x9E3779B97F4A7C15UL;
        h ^= ((ulong)(uint)Vcpu << 32 | (byte)Family) * 0xC2B2AE3D27D4EB4FUL;
        h ^= Label1 * 0x165667B19E3779F9UL;
        h ^= Label2 * 0xD6E8FEB86659FD93UL;
        h ^= h >> 29;
        return (int)h;
    }
}
