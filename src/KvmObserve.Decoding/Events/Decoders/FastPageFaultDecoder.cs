using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvmmmu:fast_page_fault: vcpu_id, error_code, ret (RET_PF_FIXED or RET_PF_SPURIOUS, else not fixed).</summary>
public readonly struct FastPageFaultDecoder
{
    private readonly FieldRef _vcpu, _errorCode, _ret;

    private FastPageFaultDecoder(EventFormat format)
    {
        _vcpu = FieldRef.Required(format, "vcpu_id");
        _errorCode = FieldRef.Required(format, "error_code");
        _ret = FieldRef.Required(format, "ret");
        MinLength = FieldRef.EndOf(_vcpu, _errorCode, _ret);
    }

    public int MinLength { get; }

    public static FastPageFaultDecoder Create(EventFormat format) => new(format);

    public FastPageFaultRecord Decode(ReadOnlySpan<byte> payload) =>
        new((int)_vcpu.Read(payload), _errorCode.Read(payload), (int)_ret.Read(payload));
}
