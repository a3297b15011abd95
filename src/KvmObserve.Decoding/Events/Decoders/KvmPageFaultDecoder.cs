using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_page_fault: vcpu_id, fault_address, error_code (PFERR_* bits).</summary>
public readonly struct KvmPageFaultDecoder
{
    private readonly FieldRef _vcpu, _address, _errorCode;

    private KvmPageFaultDecoder(EventFormat format)
    {
        _vcpu = FieldRef.Optional(format, "vcpu_id");
        _address = FieldRef.Required(format, "fault_address");
        _errorCode = FieldRef.Required(format, "error_code");
        MinLength = FieldRef.EndOf(_vcpu, _address, _errorCode);
    }

    public int MinLength { get; }

    public static KvmPageFaultDecoder Create(EventFormat format) => new(format);

    public PageFaultRecord Decode(ReadOnlySpan<byte> payload) =>
        new(_vcpu.IsPresent ? (int)_vcpu.ReadUInt32(payload) : -1, _address.Read(payload), _errorCode.Read(payload));
}
