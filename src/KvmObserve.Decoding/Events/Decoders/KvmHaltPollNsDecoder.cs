using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_halt_poll_ns: the vCPU's halt_poll_ns grew or shrank from old to new.</summary>
public readonly struct KvmHaltPollNsDecoder
{
    private readonly FieldRef _grow, _vcpu, _new, _old;

    private KvmHaltPollNsDecoder(EventFormat format)
    {
        _grow = FieldRef.Required(format, "grow");
        _vcpu = FieldRef.Required(format, "vcpu_id");
        _new = FieldRef.Required(format, "new");
        _old = FieldRef.Required(format, "old");
        MinLength = FieldRef.EndOf(_grow, _vcpu, _new, _old);
    }

    public int MinLength { get; }

    public static KvmHaltPollNsDecoder Create(EventFormat format) => new(format);

    public HaltPollNsRecord Decode(ReadOnlySpan<byte> payload) =>
        new((int)_vcpu.ReadUInt32(payload), _grow.ReadBool(payload), _new.ReadUInt32(payload), _old.ReadUInt32(payload));
}
