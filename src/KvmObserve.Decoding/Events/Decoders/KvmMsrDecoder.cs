using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_msr: write, ecx (the MSR index), exception (#GP injected).</summary>
public readonly struct KvmMsrDecoder
{
    private readonly FieldRef _write, _ecx, _exception;

    private KvmMsrDecoder(EventFormat format)
    {
        _write = FieldRef.Required(format, "write");
        _ecx = FieldRef.Required(format, "ecx");
        _exception = FieldRef.Optional(format, "exception");
        MinLength = FieldRef.EndOf(_write, _ecx, _exception);
    }

    public int MinLength { get; }

    public static KvmMsrDecoder Create(EventFormat format) => new(format);

    public MsrRecord Decode(ReadOnlySpan<byte> payload) =>
        new(_write.ReadBool(payload), _ecx.ReadUInt32(payload), _exception.IsPresent && _exception.ReadBool(payload));
}
