using KvmObserve.Decoding.Events.Decoders;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events;

/// <summary>
/// Turns raw tracepoint records into typed calls on a sink. Built once from the kernel's format files; then pure and
/// allocation-free: a record's common_type picks the decoder through an array indexed by event id.
/// </summary>
public sealed class KvmEventDecoders
{
    private readonly KvmEventKind[] _kindById;
    private readonly int[] _minLengthByKind;
    private readonly FieldRef _commonType;
    private readonly FieldRef _commonPid;
    private readonly int _commonLength;

    // Assigned once while the constructor runs. Structs, so each call below is direct.
    private KvmExitDecoder _exit;
    private KvmEntryDecoder _entry;
    private KvmUserspaceExitDecoder _userspaceExit;
    private KvmPioDecoder _pio;
    private KvmMmioDecoder _mmio;
    private KvmMsrDecoder _msr;
    private KvmCpuidDecoder _cpuid;
    private KvmEmulateInsnDecoder _emulateInsn;
    private KvmInjExceptionDecoder _injException;
    private KvmVcpuWakeupDecoder _vcpuWakeup;
    private KvmHaltPollNsDecoder _haltPollNs;
    private KvmPageFaultDecoder _pageFault;
    private FastPageFaultDecoder _fastPageFault;

    /// <param name="formatOf">The parsed format of a tracepoint, or null when this kernel does not have it.</param>
    public KvmEventDecoders(Func<Tracepoint, EventFormat?> formatOf)
    {
        var statuses = new List<TracepointStatus>();
        var kindById = new Dictionary<int, KvmEventKind>();
        _minLengthByKind = new int[Enum.GetValues<KvmEventKind>().Length];
        _commonType = new FieldRef(0, 2, false);
        _commonPid = new FieldRef(4, 4, true);
        bool commonKnown = false;

        foreach (Tracepoint tp in TracepointCatalog.All)
        {
            EventFormat? format;
            try
            {
                format = formatOf(tp);
            }
            catch (FormatException e)
            {
                statuses.Add(new TracepointStatus(tp, false, -1, $"format unreadable: {e.Message}"));
                continue;
            }
            if (format is null)
            {
                statuses.Add(new TracepointStatus(tp, false, -1, "not in this kernel"));
                continue;
            }
            try
            {
                if (!commonKnown)
                {
                    _commonType = FieldRef.Required(format, "common_type");
                    _commonPid = FieldRef.Required(format, "common_pid");
                    _commonLength = FieldRef.EndOf(_commonType, _commonPid);
                    commonKnown = true;
                }
                _minLengthByKind[(int)tp.Kind] = Math.Max(_commonLength, CreateDecoder(tp.Kind, format));
                kindById[format.Id] = tp.Kind;
                if (tp.Kind == KvmEventKind.UserspaceExit)
                    UserspaceExitReasons = UserspaceExitReasonNames(format);
                statuses.Add(new TracepointStatus(tp, true, format.Id, null));
            }
            catch (FormatMismatchException e)
            {
                statuses.Add(new TracepointStatus(tp, false, format.Id, $"format differs: {e.Message}"));
            }
        }

        _kindById = new KvmEventKind[kindById.Count == 0 ? 0 : kindById.Keys.Max() + 1];
        foreach ((int id, KvmEventKind kind) in kindById)
            _kindById[id] = kind;
        if (!commonKnown)
            _commonLength = FieldRef.EndOf(_commonType, _commonPid);
        Statuses = statuses;
        ExitReasons = _exit.Tables ?? ExitReasonTables.BuiltIn;
    }

    public IReadOnlyList<TracepointStatus> Statuses { get; }

    /// <summary>KVM_EXIT_* names from kvm_userspace_exit's print fmt, without the prefix ("IO", "MMIO", "HLT").</summary>
    public IReadOnlyDictionary<long, string> UserspaceExitReasons { get; private set; } = new Dictionary<long, string>();

    private static Dictionary<long, string> UserspaceExitReasonNames(EventFormat format)
    {
        var names = new Dictionary<long, string>();
        foreach (SymbolicTable table in PrintFormatParser.SymbolicTables(format.PrintFormat))
        {
            foreach ((long value, string name) in table.Names)
                names[value] = name.StartsWith("KVM_EXIT_", StringComparison.Ordinal) ? name["KVM_EXIT_".Length..] : name;
        }
        return names;
    }

    /// <summary>Exit reason names for the exposition (from kvm_exit's format, else built in).</summary>
    public ExitReasonTables ExitReasons { get; }

    /// <summary>The kind of an event id, None for ids this instance does not decode.</summary>
    public KvmEventKind KindOf(int id) => (uint)id < (uint)_kindById.Length ? _kindById[id] : KvmEventKind.None;

    /// <summary>Builds the decoder of <paramref name="kind"/>; returns the record length it needs.</summary>
    private int CreateDecoder(KvmEventKind kind, EventFormat format)
    {
        switch (kind)
        {
            case KvmEventKind.Exit: _exit = KvmExitDecoder.Create(format); return _exit.MinLength;
            case KvmEventKind.Entry: _entry = KvmEntryDecoder.Create(format); return _entry.MinLength;
            case KvmEventKind.UserspaceExit: _userspaceExit = KvmUserspaceExitDecoder.Create(format); return _userspaceExit.MinLength;
            case KvmEventKind.Pio: _pio = KvmPioDecoder.Create(format); return _pio.MinLength;
            case KvmEventKind.Mmio: _mmio = KvmMmioDecoder.Create(format); return _mmio.MinLength;
            case KvmEventKind.Msr: _msr = KvmMsrDecoder.Create(format); return _msr.MinLength;
            case KvmEventKind.Cpuid: _cpuid = KvmCpuidDecoder.Create(format); return _cpuid.MinLength;
            case KvmEventKind.EmulateInsn: _emulateInsn = KvmEmulateInsnDecoder.Create(format); return _emulateInsn.MinLength;
            case KvmEventKind.InjectedException: _injException = KvmInjExceptionDecoder.Create(format); return _injException.MinLength;
            case KvmEventKind.VcpuWakeup: _vcpuWakeup = KvmVcpuWakeupDecoder.Create(format); return _vcpuWakeup.MinLength;
            case KvmEventKind.HaltPollNs: _haltPollNs = KvmHaltPollNsDecoder.Create(format); return _haltPollNs.MinLength;
            case KvmEventKind.PageFault: _pageFault = KvmPageFaultDecoder.Create(format); return _pageFault.MinLength;
            case KvmEventKind.FastPageFault: _fastPageFault = FastPageFaultDecoder.Create(format); return _fastPageFault.MinLength;
            default: return MmuCountDecoder.Create(format).MinLength;
        }
    }

    /// <summary>Decodes one record and calls the matching method of <paramref name="sink"/>.</summary>
    public void Decode<TSink>(ulong timestamp, int cpu, ReadOnlySpan<byte> payload, ref TSink sink)
        where TSink : struct, IKvmEventSink
    {
        if (payload.Length < _commonLength)
        {
            sink.OnDecodeError(cpu, KvmEventKind.None);
            return;
        }
        KvmEventKind kind = KindOf((int)_commonType.Read(payload));
        if (kind == KvmEventKind.None || payload.Length < _minLengthByKind[(int)kind])
        {
            sink.OnDecodeError(cpu, kind);
            return;
        }
        var context = new EventContext(timestamp, (int)_commonPid.Read(payload), cpu);
        switch (kind)
        {
            case KvmEventKind.Exit: sink.OnExit(in context, _exit.Decode(payload)); break;
            case KvmEventKind.Entry: sink.OnEntry(in context, _entry.Decode(payload)); break;
            case KvmEventKind.UserspaceExit: sink.OnUserspaceExit(in context, _userspaceExit.Decode(payload)); break;
            case KvmEventKind.Pio: sink.OnPio(in context, _pio.Decode(payload)); break;
            case KvmEventKind.Mmio: sink.OnMmio(in context, _mmio.Decode(payload)); break;
            case KvmEventKind.Msr: sink.OnMsr(in context, _msr.Decode(payload)); break;
            case KvmEventKind.Cpuid: sink.OnCpuid(in context, _cpuid.Decode(payload)); break;
            case KvmEventKind.EmulateInsn: sink.OnEmulateInsn(in context, _emulateInsn.Decode(payload)); break;
            case KvmEventKind.InjectedException: sink.OnInjectedException(in context, _injException.Decode(payload)); break;
            case KvmEventKind.VcpuWakeup: sink.OnVcpuWakeup(in context, _vcpuWakeup.Decode(payload)); break;
            case KvmEventKind.HaltPollNs: sink.OnHaltPollNs(in context, _haltPollNs.Decode(payload)); break;
            case KvmEventKind.PageFault: sink.OnPageFault(in context, _pageFault.Decode(payload)); break;
            case KvmEventKind.FastPageFault: sink.OnFastPageFault(in context, _fastPageFault.Decode(payload)); break;
            default: sink.OnMmuEvent(in context, kind); break;
        }
    }
}
