namespace KvmObserve.Native.Bpf;

/// <summary>
/// Reads a whole BPF hash or array map into buffers it keeps, by batch lookups where the kernel has them (5.6+) and
/// key by key otherwise. For a per-CPU map each entry's value is one slot per possible CPU, each rounded up to 8 bytes.
/// </summary>
public sealed unsafe class BpfMap
{
    private const int ENOENT = 2;
    private readonly int _fd;
    private byte[] _keys;
    private byte[] _values;
    private bool _noBatch;

    public BpfMap(int fd, int keySize, int valueSize, int maxEntries, bool perCpu)
    {
        _fd = fd;
        KeySize = keySize;
        ValueStride = perCpu ? (valueSize + 7) / 8 * 8 * PossibleCpus : valueSize;
        _keys = new byte[Math.Max(1, maxEntries) * keySize];
        _values = new byte[Math.Max(1, maxEntries) * ValueStride];
    }

    public static int PossibleCpus { get; } = Math.Max(1, Libbpf.NumPossibleCpus());

    public int Fd => _fd;
    public int KeySize { get; }

    /// <summary>Bytes of one entry's value as read (all CPUs' slots for a per-CPU map).</summary>
    public int ValueStride { get; }

    public ReadOnlySpan<byte> Key(int i) => _keys.AsSpan(i * KeySize, KeySize);
    public ReadOnlySpan<byte> Value(int i) => _values.AsSpan(i * ValueStride, ValueStride);

    /// <summary>Reads every entry; returns how many (read them with <see cref="Key"/> and <see cref="Value"/>).</summary>
    public int ReadAll()
    {
        if (!_noBatch)
        {
            int n = ReadBatched(out bool unsupported);
            if (!unsupported)
                return n;
            _noBatch = true;
        }
        return ReadKeyByKey();
    }

    private int ReadBatched(out bool unsupported)
    {
        unsupported = false;
        int capacity = _keys.Length / KeySize;
        int total = 0;
        ulong inToken = 0, outToken = 0;
        bool first = true;
        fixed (byte* keys = _keys, values = _values)
        {
            while (total < capacity)
            {
                uint count = (uint)(capacity - total);
                int rc = Libbpf.MapLookupBatch(_fd, first ? null : &inToken, &outToken, keys + total * KeySize,
                    values + (long)total * ValueStride, &count, 0);
                if (rc < 0 && rc != -ENOENT)
                {
                    if (first && rc is -22 or -524 or -95) // EINVAL, ENOTSUPP, EOPNOTSUPP: no batch ops for this map or kernel
                    {
                        unsupported = true;
                        return 0;
                    }
                    throw new BpfException($"bpf_map_lookup_batch(fd {_fd}): {KernelProbes.ErrorText(-rc)}", -rc);
                }
                total += (int)count;
                if (rc == -ENOENT)
                    break;
                inToken = outToken;
                first = false;
            }
        }
        return total;
    }

    private int ReadKeyByKey()
    {
        int capacity = _keys.Length / KeySize;
        int n = 0;
        Span<byte> previous = stackalloc byte[KeySize];
        fixed (byte* keys = _keys, values = _values)
        fixed (byte* prev = previous)
        {
            byte* at = null;
            while (n < capacity && Libbpf.MapGetNextKey(_fd, at, keys + n * KeySize) == 0)
            {
                if (Libbpf.MapLookup(_fd, keys + n * KeySize, values + (long)n * ValueStride) == 0)
                {
                    new ReadOnlySpan<byte>(keys + n * KeySize, KeySize).CopyTo(previous);
                    at = prev;
                    n++;
                }
                else if (at == null)
                    break; // the first key went away between the calls: try again at the next read
            }
        }
        return n;
    }

    /// <summary>One entry's value into <paramref name="value"/> (a per-CPU map: every possible CPU's); false when absent.</summary>
    public bool TryLookup(ReadOnlySpan<byte> key, Span<byte> value)
    {
        if (key.Length != KeySize || value.Length < ValueStride)
            throw new ArgumentException("key or value buffer of the wrong size");
        fixed (byte* k = key)
        fixed (byte* v = value)
            return Libbpf.MapLookup(_fd, k, v) == 0;
    }

    public void Delete(ReadOnlySpan<byte> key)
    {
        fixed (byte* k = key)
            Libbpf.MapDelete(_fd, k);
    }

    public void Update(ReadOnlySpan<byte> key, ReadOnlySpan<byte> value)
    {
        fixed (byte* k = key, v = value)
        {
            int rc = Libbpf.MapUpdate(_fd, k, v, 0);
            if (rc < 0)
                throw new BpfException($"bpf_map_update_elem(fd {_fd}): {KernelProbes.ErrorText(-rc)}", -rc);
        }
    }

    /// <summary>The sum over CPUs of a per-CPU u64 value.</summary>
    public static long SumPerCpu(ReadOnlySpan<byte> value)
    {
        long sum = 0;
        for (int i = 0; i + 8 <= value.Length; i += 8)
            sum += System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(value.Slice(i, 8));
        return sum;
    }
}

/// <summary>Run-time statistics of a loaded program (bpf_prog_info.run_time_ns and run_cnt). The kernel counts them
/// only while kernel.bpf_stats_enabled is 1, or while some process holds a BPF_ENABLE_STATS fd.</summary>
public static unsafe class BpfProgramStats
{
    private const int InfoSize = 232;     // sizeof(struct bpf_prog_info), linux 6.x uapi
    private const int RunTimeOffset = 192; // run_time_ns
    private const int RunCountOffset = 200; // run_cnt

    public static (ulong RunTimeNs, ulong Runs)? Read(int programFd)
    {
        byte* info = stackalloc byte[InfoSize];
        new Span<byte>(info, InfoSize).Clear();
        uint length = InfoSize;
        if (Libbpf.ObjectInfo(programFd, info, &length) < 0 || length < RunCountOffset + 8)
            return null;
        return (*(ulong*)(info + RunTimeOffset), *(ulong*)(info + RunCountOffset));
    }

    /// <summary>Turns the kernel's run-time accounting on for as long as the returned fd is open (BPF_ENABLE_STATS,
    /// Linux 5.8+); it costs every BPF program on the host two clock reads per run.</summary>
    public static SafeFd EnableRunTime()
    {
        int fd = Libbpf.EnableStats(0); // BPF_STATS_RUN_TIME
        if (fd < 0)
            throw new BpfException($"BPF_ENABLE_STATS: {KernelProbes.ErrorText(-fd)}", -fd);
        return new SafeFd(fd);
    }

    public static bool SysctlEnabled() =>
        File.Exists("/proc/sys/kernel/bpf_stats_enabled") && File.ReadAllText("/proc/sys/kernel/bpf_stats_enabled").Trim() == "1";
}
