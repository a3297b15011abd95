using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_userspace_exit: KVM_RUN returning to the VMM with run->exit_reason, or with an errno.</summary>
public readonly struct KvmUserspaceExitDecoder
{
    private readonly FieldRef _reason, _errno;

    private KvmUserspaceExitDecoder(EventFormat format)
    {
        _reason = FieldRef.Required(format, "reason");
        _errno = FieldRef.Required(format, "errno");
        MinLength = FieldRef.EndOf(_reason, _errno);
    }

    public int MinLength { get; }

    public static KvmUserspaceExitDecoder Create(EventFormat format) => new(format);

    public UserspaceExitRecord Decode(ReadOnlySpan<byte> payload) =>
        new(_reason.ReadUInt32(payload), (int)_errno.Read(payload));
}
