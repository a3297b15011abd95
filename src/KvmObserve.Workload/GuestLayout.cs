using System.Buffers.Binary;

namespace KvmObserve.Workload;

/// <summary>
/// Guest-physical memory map of the micro-VM (identity-mapped, so guest-virtual = guest-physical):
/// <code>
/// 0x1000        PML4            0x2000  PDPT         0x3000-0x6fff  4 PDs: 4 GiB in 2 MiB pages, U/S=1
/// 0x8000        IDT             0xa000  GDT          0xb000         TSS (rsp0 = 0xe000)
/// 0x10000       interrupt handler (counts into [r15]); 0x11000 one interrupt counter per vCPU (r15 points at it)
/// 0x11800 + v*64         vCPU v's struct kvm_steal_time (MSR_KVM_STEAL_TIME)
/// 0xe000-0xefff the exceptions' stack (IST1, top 0xf000)
/// 0x14000       one 16-byte stub per other vector, then the fault handler (reports to 0xe0001000)
/// 0x100000 + v*0x10000   vCPU v's program; its stack grows down from the top of that 64 KiB block
/// 0x2000000 + v*slice    vCPU v's pages for touch mode
/// 0xd0000000    MMIO target (no memslot: every store exits)     0xe0000000  doorbell: "phase done"
/// 0xe0001000    fault report: vector, error code, RIP, CR2, RSP (offsets 0, 8, 16, 24, 32)
/// </code>
/// GDT in Linux's layout: 0x10 kernel CS, 0x18 kernel DS, 0x2b user DS, 0x33 user CS, 0x40 TSS.
/// </summary>
internal static class GuestLayout
{
    public const ulong Pml4 = 0x1000, Pdpt = 0x2000, PageDirectories = 0x3000;
    public const ulong Idt = 0x8000, Gdt = 0xa000, Tss = 0xb000, Rsp0 = 0xe000;
    /// <summary>The exceptions' own stack (TSS IST1): an exception raised with a bad RSP is reported, where on that
    /// RSP its delivery would fault twice more, into a triple fault.</summary>
    public const ulong FaultStack = 0xf000;
    public const ulong InterruptHandler = 0x10000;
    public const ulong Counters = 0x11000;
    public const ulong ProgramBase = 0x100000, ProgramStride = 0x10000;
    public const ulong TouchBase = 0x2000000;
    public const ulong MmioTarget = 0xd0000000, Doorbell = 0xe0000000, FaultReport = 0xe0001000;
    public const ulong FaultStubs = 0x14000;
    public const int FaultStubSize = 16;
    public const byte TimerVector = 0x30;
    public const ushort KernelCs = 0x10, KernelDs = 0x18, UserDs = 0x2b, UserCs = 0x33, TssSelector = 0x40;
    public const int GdtLimit = 0x50 - 1;

    public static ulong ProgramAddress(int vcpu) => ProgramBase + (ulong)vcpu * ProgramStride;
    public static ulong StackTop(int vcpu) => ProgramAddress(vcpu) + ProgramStride - 0x10;
    public static ulong InterruptCounter(int vcpu) => Counters + (ulong)vcpu * 8;

    /// <summary>Where KVM writes vCPU v's struct kvm_steal_time (64 bytes, 64-byte aligned).</summary>
    public static ulong StealTime(int vcpu) => Counters + 0x800 + (ulong)vcpu * 64;

    /// <summary>Writes page tables, GDT, TSS, IDT and the interrupt handler into guest memory.</summary>
    public static void Build(Span<byte> memory)
    {
        const ulong present = 1, writable = 2, user = 4, large = 0x80;
        BinaryPrimitives.WriteUInt64LittleEndian(memory[(int)Pml4..], Pdpt | present | writable | user);
        for (int i = 0; i < 4; i++)
        {
            ulong pd = PageDirectories + (ulong)i * 0x1000;
            BinaryPrimitives.WriteUInt64LittleEndian(memory[(int)(Pdpt + (ulong)i * 8)..], pd | present | writable | user);
            for (int j = 0; j < 512; j++)
            {
                ulong frame = ((ulong)i << 30) | ((ulong)j << 21);
                BinaryPrimitives.WriteUInt64LittleEndian(memory[(int)(pd + (ulong)j * 8)..], frame | present | writable | user | large);
            }
        }

        Span<byte> gdt = memory[(int)Gdt..];
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[0x10..], 0x00af9b000000ffff); // kernel code, L=1
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[0x18..], 0x00cf93000000ffff); // kernel data
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[0x28..], 0x00cff3000000ffff); // user data, DPL3
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[0x30..], 0x00affb000000ffff); // user code, DPL3, L=1
        // 64-bit TSS descriptor (16 bytes): limit 0x67, type 0xb (busy TSS), present
        ulong tssLow = 0x67 | ((Tss & 0xffffff) << 16) | (0x8bUL << 40) | ((Tss >> 24 & 0xff) << 56);
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[0x40..], tssLow);
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[0x48..], Tss >> 32);
        BinaryPrimitives.WriteUInt64LittleEndian(memory[(int)(Tss + 4)..], Rsp0);
        BinaryPrimitives.WriteUInt64LittleEndian(memory[(int)(Tss + 0x24)..], FaultStack); // IST1

        // 64-bit interrupt gates, DPL0, kernel CS: the timer vector's handler, and a reporting stub for every other.
        for (int v = 0; v < 256; v++)
            WriteGate(memory[(int)(Idt + (ulong)v * 16)..], v == TimerVector ? InterruptHandler : FaultStubs + (ulong)(v * FaultStubSize),
                ist: v < 32 ? (byte)1 : (byte)0);

        GuestPrograms.InterruptHandler().CopyTo(memory[(int)InterruptHandler..]);
        GuestPrograms.FaultHandlers().CopyTo(memory[(int)FaultStubs..]);
    }

    private static void WriteGate(Span<byte> gate, ulong handler, byte ist)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(gate, (ushort)(handler & 0xffff));
        BinaryPrimitives.WriteUInt16LittleEndian(gate[2..], KernelCs);
        gate[4] = ist;
        gate[5] = 0x8e;
        BinaryPrimitives.WriteUInt16LittleEndian(gate[6..], (ushort)(handler >> 16 & 0xffff));
        BinaryPrimitives.WriteUInt32LittleEndian(gate[8..], (uint)(handler >> 32));
    }
}
