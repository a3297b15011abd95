using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_entry (vcpu_id; immediate_exit on newer kernels).</summary>
public readonly struct KvmEntryDecoder
{
    private readonly FieldRef _vcpu, _immediateExit;

    private KvmEntryDecoder(EventFormat format)
    {
        _vcpu = FieldRef.Required(format, "vcpu_id");
        _immediateExit = FieldRef.Optional(format, "immediate_exit");
        MinLength = FieldRef.EndOf(_vcpu, _immediateExit);
    }

    public int MinLength { get; }

    public static KvmEntryDecoder Create(EventFormat format) => new(format);

    public EntryRecord Decode(ReadOnlySpan<byte> payload) =>
        new((int)_vcpu.ReadUInt32(payload), _immediateExit.IsPresent && _immediateExit.ReadBool(payload));
}
