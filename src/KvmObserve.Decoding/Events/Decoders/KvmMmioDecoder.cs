using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_mmio: type (0 unsatisfied read, 1 read, 2 write), len, gpa.</summary>
public readonly struct KvmMmioDecoder
{
    private readonly FieldRef _type, _len, _gpa;

    private KvmMmioDecoder(EventFormat format)
    {
        _type = FieldRef.Required(format, "type");
        _len = FieldRef.Required(format, "len");
        _gpa = FieldRef.Required(format, "gpa");
        MinLength = FieldRef.EndOf(_type, _len, _gpa);
    }

    public int MinLength { get; }

    public static KvmMmioDecoder Create(EventFormat format) => new(format);

    public MmioRecord Decode(ReadOnlySpan<byte> payload) =>
        new(_type.ReadUInt32(payload), _len.ReadUInt32(payload), _gpa.Read(payload));
}
