using System.Buffers.Binary;

namespace KvmObserve.Workload;

/// <summary>Emits the handful of x86-64 instructions the guest programs need (encodings: Intel SDM vol. 2).</summary>
internal sealed class GuestAssembler
{
    private readonly List<byte> _code = new();

    public int Position => _code.Count;

    public byte[] ToArray() => _code.ToArray();

    private GuestAssembler Bytes(params ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
            _code.Add(b);
        return this;
    }

    private GuestAssembler Imm32(uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        return Bytes(b);
    }

    private GuestAssembler Imm64(ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return Bytes(b);
    }

    public GuestAssembler MovEax(uint v) => Bytes(0xB8).Imm32(v);
    public GuestAssembler MovEcx(uint v) => Bytes(0xB9).Imm32(v);
    public GuestAssembler MovEdx(uint v) => Bytes(0xBA).Imm32(v);
    public GuestAssembler MovEsi(uint v) => Bytes(0xBE).Imm32(v);
    public GuestAssembler MovRdi(ulong v) => Bytes(0x48, 0xBF).Imm64(v);
    public GuestAssembler XorEax() => Bytes(0x31, 0xC0);
    public GuestAssembler XorEcx() => Bytes(0x31, 0xC9);
    public GuestAssembler XorEdx() => Bytes(0x31, 0xD2);
    public GuestAssembler OutDxAl() => Bytes(0xEE);
    public GuestAssembler StoreByteAtRdi() => Bytes(0x88, 0x07);       // mov [rdi], al
    public GuestAssembler StoreDwordAtRdi() => Bytes(0x89, 0x07);      // mov [rdi], eax
    public GuestAssembler AddRdi(uint v) => Bytes(0x48, 0x81, 0xC7).Imm32(v);
    public GuestAssembler IncQwordAtR15() => Bytes(0x49, 0xFF, 0x07);  // inc qword [r15]
    public GuestAssembler Rdmsr() => Bytes(0x0F, 0x32);
    public GuestAssembler Wrmsr() => Bytes(0x0F, 0x30);
    public GuestAssembler Cpuid() => Bytes(0x0F, 0xA2);
    public GuestAssembler Hlt() => Bytes(0xF4);
    public GuestAssembler Sti() => Bytes(0xFB);
    public GuestAssembler Cli() => Bytes(0xFA);
    public GuestAssembler Iretq() => Bytes(0x48, 0xCF);
    public GuestAssembler PushRaxRcxRdx() => Bytes(0x50, 0x51, 0x52);
    public GuestAssembler PopRdxRcxRax() => Bytes(0x5A, 0x59, 0x58);

    /// <summary>dec esi; jnz target (rel32).</summary>
    public GuestAssembler DecEsiJnz(int target)
    {
        Bytes(0xFF, 0xCE);
        int next = Position + 6;
        return Bytes(0x0F, 0x85).Imm32((uint)(target - next));
    }

    public GuestAssembler PushImm32(uint v) => Bytes(0x68).Imm32(v);          // sign-extended to 64 bits
    public GuestAssembler PopRax() => Bytes(0x58);
    public GuestAssembler PopRdx() => Bytes(0x5A);
    public GuestAssembler MovRcxFromStackTop() => Bytes(0x48, 0x8B, 0x0C, 0x24); // mov rcx, [rsp]
    public GuestAssembler MovRcxFromStack(byte displacement) => Bytes(0x48, 0x8B, 0x4C, 0x24, displacement); // mov rcx, [rsp+d8]
    public GuestAssembler MovRaxCr2() => Bytes(0x0F, 0x20, 0xD0);
    public GuestAssembler StoreRaxAtRdi(byte displacement) => Bytes(0x48, 0x89, 0x47, displacement); // mov [rdi+d8], rax
    public GuestAssembler StoreRcxAtRdi(byte displacement) => Bytes(0x48, 0x89, 0x4F, displacement);
    public GuestAssembler StoreRdxAtRdi(byte displacement) => Bytes(0x48, 0x89, 0x57, displacement);

    /// <summary>Pads with int3 up to <paramref name="position"/>.</summary>
    public GuestAssembler PadTo(int position)
    {
        while (_code.Count < position)
            _code.Add(0xCC);
        return this;
    }

    /// <summary>jmp target (rel32; target is a position in this code).</summary>
    public GuestAssembler Jmp(int target)
    {
        int next = Position + 5;
        return Bytes(0xE9).Imm32((uint)(target - next));
    }

    /// <summary>jmp $ (spins if the VMM ever resumes past the end).</summary>
    public GuestAssembler JmpSelf() => Bytes(0xEB, 0xFE);
}
