using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>kvm:kvm_emulate_insn: one instruction run by KVM's emulator; failed when it could not.</summary>
public readonly struct KvmEmulateInsnDecoder
{
    private readonly FieldRef _failed;

    private KvmEmulateInsnDecoder(EventFormat format)
    {
        _failed = FieldRef.Required(format, "failed");
        MinLength = _failed.End;
    }

    public int MinLength { get; }

    public static KvmEmulateInsnDecoder Create(EventFormat format) => new(format);

    public EmulateInsnRecord Decode(ReadOnlySpan<byte> payload) => new(_failed.ReadBool(payload));
}
