using System.Buffers.Binary;
using KvmObserve.Aggregation.Series;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Sources.Bpf;

/// <summary>
/// The contract with probes/kvmobserve.bpf.c: which program serves which event, the fields each reads (set as
/// read-only globals before load, from the event's format file), and the layouts of the maps' keys and values.
/// </summary>
public static class BpfLayout
{
    /// <summary>sizeof(struct config).</summary>
    public const int ConfigSize = 120;
    private const int FieldsOffset = 16;

    /// <summary>struct config's fields after the header, in order: (event, field, required).</summary>
    public static IReadOnlyList<(KvmEventKind Kind, string Field, bool Required)> ConfigFields { get; } =
    [
        (KvmEventKind.Exit, "exit_reason", true), (KvmEventKind.Exit, "isa", false), (KvmEventKind.Exit, "vcpu_id", false),
        (KvmEventKind.Entry, "vcpu_id", false),
        (KvmEventKind.UserspaceExit, "reason", true), (KvmEventKind.UserspaceExit, "errno", true),
        (KvmEventKind.Pio, "rw", true), (KvmEventKind.Pio, "port", true),
        (KvmEventKind.Mmio, "type", true), (KvmEventKind.Mmio, "gpa", true),
        (KvmEventKind.Msr, "write", true), (KvmEventKind.Msr, "ecx", true),
        (KvmEventKind.Cpuid, "function", true),
        (KvmEventKind.InjectedException, "exception", true),
        (KvmEventKind.VcpuWakeup, "ns", true), (KvmEventKind.VcpuWakeup, "waited", true), (KvmEventKind.VcpuWakeup, "valid", false),
        (KvmEventKind.HaltPollNs, "grow", true), (KvmEventKind.HaltPollNs, "vcpu_id", true), (KvmEventKind.HaltPollNs, "new", true),
        (KvmEventKind.HaltPollNs, "old", true),
        (KvmEventKind.PageFault, "vcpu_id", false), (KvmEventKind.PageFault, "error_code", true),
        (KvmEventKind.FastPageFault, "vcpu_id", true), (KvmEventKind.FastPageFault, "ret", true),
    ];

    /// <summary>The program that counts an event: one per kvm event, one shared by the count-only kvmmmu events
    /// (told apart by the attach cookie, their kind).</summary>
    public static string ProgramOf(KvmEventKind kind) => kind switch
    {
        KvmEventKind.Exit => "kvmo_exit",
        KvmEventKind.Entry => "kvmo_entry",
        KvmEventKind.UserspaceExit => "kvmo_uexit",
        KvmEventKind.Pio => "kvmo_pio",
        KvmEventKind.Mmio => "kvmo_mmio",
        KvmEventKind.Msr => "kvmo_msr",
        KvmEventKind.Cpuid => "kvmo_cpuid",
        KvmEventKind.EmulateInsn => "kvmo_emulate",
        KvmEventKind.InjectedException => "kvmo_inj_exc",
        KvmEventKind.VcpuWakeup => "kvmo_wakeup",
        KvmEventKind.HaltPollNs => "kvmo_halt_poll",
        KvmEventKind.PageFault => "kvmo_page_fault",
        KvmEventKind.FastPageFault => "kvmo_fast_pf",
        _ => "kvmo_mmu",
    };

    /// <summary>Fields an event's program needs that <paramref name="fieldOf"/> does not have ("" when none).</summary>
    public static string MissingFields(KvmEventKind kind, Func<KvmEventKind, string, FieldFormat?> fieldOf) =>
        string.Join(", ", ConfigFields.Where(f => f.Kind == kind && f.Required && fieldOf(kind, f.Field) is null).Select(f => f.Field));

    /// <summary>struct config: the filter bits, the ISA of kvm_exit formats without one, the pairing horizon, and
    /// every field's offset and size (0: absent).</summary>
    public static byte[] Config(Func<KvmEventKind, string, FieldFormat?> fieldOf, uint filter, uint impliedIsa, ulong horizonNs)
    {
        var config = new byte[ConfigSize];
        BinaryPrimitives.WriteUInt32LittleEndian(config.AsSpan(0), filter);
        BinaryPrimitives.WriteUInt32LittleEndian(config.AsSpan(4), impliedIsa);
        BinaryPrimitives.WriteUInt64LittleEndian(config.AsSpan(8), horizonNs);
        for (int i = 0; i < ConfigFields.Count; i++)
        {
            (KvmEventKind kind, string name, _) = ConfigFields[i];
            if (fieldOf(kind, name) is not FieldFormat f || f.Size is < 1 or > 8 || f.Offset > ushort.MaxValue)
                continue;
            BinaryPrimitives.WriteUInt16LittleEndian(config.AsSpan(FieldsOffset + 4 * i), (ushort)f.Offset);
            BinaryPrimitives.WriteUInt16LittleEndian(config.AsSpan(FieldsOffset + 4 * i + 2), (ushort)f.Size);
        }
        return config;
    }

    /// <summary>struct key of kvmo_counts: tgid, tid, vcpu, family, label1, pad, label2.</summary>
    public const int KeySize = 32;

    public static (int Tgid, SeriesKey Key) ReadKey(ReadOnlySpan<byte> k) =>
    (
        BinaryPrimitives.ReadInt32LittleEndian(k),
        new SeriesKey(
            BinaryPrimitives.ReadInt32LittleEndian(k[4..]),
            BinaryPrimitives.ReadInt32LittleEndian(k[8..]),
            (MetricFamily)BinaryPrimitives.ReadUInt32LittleEndian(k[12..]),
            BinaryPrimitives.ReadUInt32LittleEndian(k[16..]),
            BinaryPrimitives.ReadUInt64LittleEndian(k[24..]))
    );

    /// <summary>label1 of a halt the kernel could not classify (its thread's window was unknown there): 0x100 | waited.</summary>
    public const uint UnknownWindow = 0x100;

    /// <summary>struct tstate of kvmo_threads (keyed by tid).</summary>
    public const int ThreadStateSize = 32;

    /// <summary>struct tstate: poll_ns, poll_at_halt, first_old, vcpu, tgid.</summary>
    public static (long PollNs, long FirstOld, int Vcpu) ReadThreadState(ReadOnlySpan<byte> v) =>
        (BinaryPrimitives.ReadInt64LittleEndian(v), BinaryPrimitives.ReadInt64LittleEndian(v[16..]),
         BinaryPrimitives.ReadInt32LittleEndian(v[24..]));

    /// <summary>Slots of kvmo_stats: 1..31 events by KvmEventKind, then what the programs dropped.</summary>
    public const int StatSlots = 56;
    public const int StatMapFull = 32, StatExitUnmatched = 33, StatExitTooLong = 34, StatStateFull = 35, StatNewSeries = 36;
    /// <summary>StatFamilyFull + family: <see cref="StatMapFull"/> by MetricFamily.</summary>
    public const int StatFamilyFull = 40;
}
