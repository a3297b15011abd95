using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_pio: rw (1 = out), port, size, count.</summary>
public readonly struct KvmPioDecoder
{
    private readonly FieldRef _rw, _port, _size, _count;

    private KvmPioDecoder(EventFormat format)
    {
        _rw = FieldRef.Required(format, "rw");
        _port = FieldRef.Required(format, "port");
        _size = FieldRef.Required(format, "size");
        _count = FieldRef.Required(format, "count");
        MinLength = FieldRef.EndOf(_rw, _port, _size, _count);
    }

    public int MinLength { get; }

    public static KvmPioDecoder Create(EventFormat format) => new(format);

    public PioRecord Decode(ReadOnlySpan<byte> payload) =>
        new(_rw.ReadBool(payload), _port.ReadUInt32(payload), _size.ReadUInt32(payload), _count.ReadUInt32(payload));
}
