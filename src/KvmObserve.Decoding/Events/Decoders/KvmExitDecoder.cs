using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_exit. isa tells VMX from SVM; for VMX, bit 31 of exit_reason (FAILED_VMENTRY) is kept apart
/// from the basic reason in bits 0-15. Formats without isa get the ISA their only reason table implies.</summary>
public readonly struct KvmExitDecoder
{
    private readonly FieldRef _reason, _isa, _vcpu;
    private readonly uint _impliedIsa;

    private KvmExitDecoder(EventFormat format, ExitReasonTables tables)
    {
        _reason = FieldRef.Required(format, "exit_reason");
        _isa = FieldRef.Optional(format, "isa");
        _vcpu = FieldRef.Optional(format, "vcpu_id");
        _impliedIsa = tables.ImpliedIsa;
        MinLength = FieldRef.EndOf(_reason, _isa, _vcpu);
        Tables = tables;
    }

    public int MinLength { get; }

    public ExitReasonTables Tables { get; }

    public static KvmExitDecoder Create(EventFormat format) => new(format, ExitReasonTables.FromFormatOrBuiltIn(format));

    public ExitRecord Decode(ReadOnlySpan<byte> payload)
    {
        uint raw = _reason.ReadUInt32(payload);
        uint isa = _isa.IsPresent ? _isa.ReadUInt32(payload) : _impliedIsa;
        int vcpu = _vcpu.IsPresent ? (int)_vcpu.ReadUInt32(payload) : -1;
        if (isa == KvmIsa.Vmx)
            return new ExitRecord(vcpu, isa, raw & KvmIsa.VmxBasicReasonMask, (raw & KvmIsa.VmxFailedVmEntry) != 0);
        return new ExitRecord(vcpu, isa, raw, false);
    }
}
