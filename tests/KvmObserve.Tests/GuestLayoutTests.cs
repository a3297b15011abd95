using System.Buffers.Binary;
using KvmObserve.Workload;

namespace KvmObserve.Tests;

/// <summary>The load VM's interrupt table: every vector has a gate, so an exception the guest programs do not
/// expect is reported by the fault handler instead of ending in a triple fault.</summary>
public sealed class GuestLayoutTests
{
    private static readonly byte[] Memory = BuildMemory();

    private static byte[] BuildMemory()
    {
        byte[] memory = new byte[0x20000];
        GuestLayout.Build(memory);
        return memory;
    }

    private static ulong GateTarget(int vector)
    {
        ReadOnlySpan<byte> gate = Memory.AsSpan((int)GuestLayout.Idt + vector * 16, 16);
        Assert.Equal(GuestLayout.KernelCs, BinaryPrimitives.ReadUInt16LittleEndian(gate[2..]));
        Assert.Equal(0x8e, gate[5]); // present, DPL0, 64-bit interrupt gate
        Assert.Equal(vector < 32 ? 1 : 0, gate[4]); // exceptions on their own stack (IST1)
        return BinaryPrimitives.ReadUInt16LittleEndian(gate)
            | (ulong)BinaryPrimitives.ReadUInt16LittleEndian(gate[6..]) << 16
            | (ulong)BinaryPrimitives.ReadUInt32LittleEndian(gate[8..]) << 32;
    }

    [Fact]
    public void The_timer_vector_reaches_the_interrupt_handler()
    {
        Assert.Equal(GuestLayout.InterruptHandler, GateTarget(GuestLayout.TimerVector));
    }

    [Theory]
    [InlineData(0, false)]   // #DE
    [InlineData(6, false)]   // #UD
    [InlineData(8, true)]    // #DF
    [InlineData(13, true)]   // #GP
    [InlineData(14, true)]   // #PF
    [InlineData(18, false)]  // #MC
    [InlineData(21, true)]   // #CP
    [InlineData(255, false)] // the APIC's spurious vector
    public void Every_other_vector_pushes_its_number_and_one_error_code_then_jumps_to_the_fault_handler(int vector, bool cpuPushesErrorCode)
    {
        ulong stub = GateTarget(vector);
        Assert.Equal(GuestLayout.FaultStubs + (ulong)(vector * GuestLayout.FaultStubSize), stub);
        ReadOnlySpan<byte> code = Memory.AsSpan((int)stub, GuestLayout.FaultStubSize);
        if (!cpuPushesErrorCode)
        {
            Assert.Equal([0x68, 0, 0, 0, 0], code[..5].ToArray()); // push 0: the error code the CPU did not push
            code = code[5..];
        }
        Assert.Equal(0x68, code[0]);
        Assert.Equal((uint)vector, BinaryPrimitives.ReadUInt32LittleEndian(code[1..]));
        Assert.Equal(0xE9, code[5]);
        long next = (long)stub + (GuestLayout.FaultStubSize - code.Length) + 10;
        long target = next + BinaryPrimitives.ReadInt32LittleEndian(code[6..]);
        Assert.Equal((long)GuestLayout.FaultStubs + 256 * GuestLayout.FaultStubSize, target);
    }

    [Fact]
    public void The_fault_handler_reports_vector_error_code_rip_rsp_and_cr2_to_the_fault_page()
    {
        ReadOnlySpan<byte> handler = Memory.AsSpan((int)GuestLayout.FaultStubs + 256 * GuestLayout.FaultStubSize, 64);
        byte[] expected =
        [
            0x58, 0x5A, 0x48, 0x8B, 0x0C, 0x24,                   // pop rax (vector); pop rdx (error code); mov rcx, [rsp] (rip)
            0x48, 0xBF, 0x00, 0x10, 0x00, 0xE0, 0, 0, 0, 0,       // mov rdi, 0xe0001000
            0x48, 0x89, 0x47, 0x00, 0x48, 0x89, 0x57, 0x08,       // mov [rdi], rax; mov [rdi+8], rdx
            0x48, 0x89, 0x4F, 0x10,                               // mov [rdi+16], rcx
            0x48, 0x8B, 0x4C, 0x24, 0x18, 0x48, 0x89, 0x4F, 0x20, // mov rcx, [rsp+24] (rsp); mov [rdi+32], rcx
            0x0F, 0x20, 0xD0, 0x48, 0x89, 0x47, 0x18, 0xEB, 0xFE, // mov rax, cr2; mov [rdi+24], rax; jmp $
        ];
        Assert.Equal(expected, handler[..expected.Length].ToArray());
        Assert.Equal(0xe0001000UL, GuestLayout.FaultReport);
        Assert.Equal(GuestLayout.FaultStack, BinaryPrimitives.ReadUInt64LittleEndian(Memory.AsSpan((int)GuestLayout.Tss + 0x24))); // IST1
    }

    [Theory]
    [InlineData(6UL, "#UD (vector 6)")]
    [InlineData(14UL, "#PF (vector 14)")]
    [InlineData(255UL, "interrupt (vector 255)")]
    public void Vectors_are_named_as_the_manuals_name_them(ulong vector, string name)
    {
        Assert.Equal(name, GuestPrograms.VectorName(vector));
    }
}
