using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_cpuid: function (the leaf) and index (the subleaf).</summary>
public readonly struct KvmCpuidDecoder
{
    private readonly FieldRef _function, _index;

    private KvmCpuidDecoder(EventFormat format)
    {
        _function = FieldRef.Required(format, "function");
        _index = FieldRef.Optional(format, "index");
        MinLength = FieldRef.EndOf(_function, _index);
    }

    public int MinLength { get; }

    public static KvmCpuidDecoder Create(EventFormat format) => new(format);

    public CpuidRecord Decode(ReadOnlySpan<byte> payload) =>
        new(_function.ReadUInt32(payload), _index.IsPresent ? _index.ReadUInt32(payload) : 0);
}
