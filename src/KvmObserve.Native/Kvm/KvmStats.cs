using System.Buffers.Binary;
using System.Text;

namespace KvmObserve.Native.Kvm;

/// <summary>
/// KVM's binary statistics of a VM or vCPU (KVM_GET_STATS_FD, Documentation/virt/kvm/api.rst "KVM_GET_STATS_FD"):
/// the kernel's own counters, such as a vCPU's halt_wakeup. Only the process owning the VM can open them.
/// </summary>
public static class KvmStats
{
    /// <summary>KVM_GET_STATS_FD: _IO(KVMIO, 0xce), on a VM or vCPU fd.</summary>
    public static readonly ulong GetStatsFd = IoctlNumber.Io(0xAE, 0xce);

    private const int HeaderSize = 24;  // struct kvm_stats_header: flags, name_size, num_desc, id/desc/data offsets
    private const int DescFixedSize = 16; // struct kvm_stats_desc before name[]: flags, exponent, size, offset, bucket_size

    /// <summary>Every statistic by name: a counter's value, or a histogram's total count (the sum of its buckets:
    /// halt_wait_hist counts the halts that waited).</summary>
    public static Dictionary<string, ulong> Read(SafeFd vmOrVcpu)
    {
        using var fd = new SafeFd(Sys.Ioctl(vmOrVcpu, GetStatsFd, 0, "KVM_GET_STATS_FD"));
        Span<byte> header = stackalloc byte[HeaderSize];
        Sys.PreadExactly(fd, header, 0, "KVM stats fd");
        int nameSize = (int)BinaryPrimitives.ReadUInt32LittleEndian(header[4..]);
        int count = (int)BinaryPrimitives.ReadUInt32LittleEndian(header[8..]);
        long descOffset = BinaryPrimitives.ReadUInt32LittleEndian(header[16..]);
        long dataOffset = BinaryPrimitives.ReadUInt32LittleEndian(header[20..]);
        int descSize = DescFixedSize + nameSize;
        var descs = new byte[descSize * count];
        Sys.PreadExactly(fd, descs, descOffset, "KVM stats fd");
        var stats = new Dictionary<string, ulong>(count);
        var values = new byte[8];
        for (int i = 0; i < count; i++)
        {
            ReadOnlySpan<byte> d = descs.AsSpan(i * descSize, descSize);
            int size = BinaryPrimitives.ReadUInt16LittleEndian(d[6..]); // in u64s: 1, or a histogram's buckets
            uint offset = BinaryPrimitives.ReadUInt32LittleEndian(d[8..]);
            ReadOnlySpan<byte> name = d[DescFixedSize..];
            int end = name.IndexOf((byte)0);
            if (values.Length < size * 8)
                values = new byte[size * 8];
            Span<byte> value = values.AsSpan(0, Math.Max(size, 1) * 8);
            Sys.PreadExactly(fd, value, dataOffset + offset, "KVM stats fd");
            ulong total = 0;
            for (int b = 0; b < value.Length; b += 8)
                total += BinaryPrimitives.ReadUInt64LittleEndian(value[b..]);
            stats[Encoding.ASCII.GetString(end < 0 ? name : name[..end])] = total;
        }
        return stats;
    }
}
