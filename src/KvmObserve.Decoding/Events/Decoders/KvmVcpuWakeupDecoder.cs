using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_vcpu_wakeup: ns (halt duration), waited (false = woken while polling), valid.</summary>
public readonly struct KvmVcpuWakeupDecoder
{
    private readonly FieldRef _ns, _waited, _valid;

    private KvmVcpuWakeupDecoder(EventFormat format)
    {
        _ns = FieldRef.Required(format, "ns");
        _waited = FieldRef.Required(format, "waited");
        _valid = FieldRef.Optional(format, "valid");
        MinLength = FieldRef.EndOf(_ns, _waited, _valid);
    }

    public int MinLength { get; }

    public static KvmVcpuWakeupDecoder Create(EventFormat format) => new(format);

    public VcpuWakeupRecord Decode(ReadOnlySpan<byte> payload) =>
        new(_ns.Read(payload), _waited.ReadBool(payload), !_valid.IsPresent || _valid.ReadBool(payload));
}
