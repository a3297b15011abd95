using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_inj_exception: exception (the vector), has_error, reinjected.</summary>
public readonly struct KvmInjExceptionDecoder
{
    private readonly FieldRef _exception, _hasError, _reinjected;

    private KvmInjExceptionDecoder(EventFormat format)
    {
        _exception = FieldRef.Required(format, "exception");
        _hasError = FieldRef.Optional(format, "has_error");
        _reinjected = FieldRef.Optional(format, "reinjected");
        MinLength = FieldRef.EndOf(_exception, _hasError, _reinjected);
    }

    public int MinLength { get; }

    public static KvmInjExceptionDecoder Create(EventFormat format) => new(format);

    public InjectedExceptionRecord Decode(ReadOnlySpan<byte> payload) =>
        new(_exception.ReadUInt32(payload), _hasError.IsPresent && _hasError.ReadBool(payload),
            _reinjected.IsPresent && _reinjected.ReadBool(payload));
}
