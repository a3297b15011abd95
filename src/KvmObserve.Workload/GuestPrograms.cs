namespace KvmObserve.Workload;

/// <summary>
/// The guest programs, one per mode. Each loops <c>count</c> times and ends by storing to the doorbell page, which
/// exits to the VMM as MMIO; the VMM then starts the next mode's program.
/// </summary>
internal static class GuestPrograms
{
    public const ushort PioPort = 0x3f8;
    /// <summary>IA32_MISC_ENABLE: read, and written back as read, with no effect. Every KVM backend intercepts it both
    /// ways (kvm_intel and kvm_amd pass MSRs such as KERNEL_GS_BASE through to the guest, which then never exit).</summary>
    public const uint MsrReadWrite = 0x1a0;
    public const uint X2ApicEoi = 0x80b, X2ApicLvtTimer = 0x832, X2ApicTimerInitialCount = 0x838, X2ApicTimerDivide = 0x83e;
    public const uint CpuidLeaf = 0;

    /// <summary>Timer vector interrupt: x2APIC EOI, count into [r15], return.</summary>
    public static byte[] InterruptHandler() => new GuestAssembler()
        .PushRaxRcxRdx().MovEcx(X2ApicEoi).XorEax().XorEdx().Wrmsr().IncQwordAtR15().PopRdxRcxRax().Iretq()
        .ToArray();

    /// <summary>Vectors for which the CPU pushes an error code (Intel SDM vol. 3, 6.13).</summary>
    private static bool HasErrorCode(int vector) => vector is 8 or (>= 10 and <= 14) or 17 or 21 or 29 or 30;

    /// <summary>
    /// A stub for every vector but the timer's, 16 bytes apart from <see cref="GuestLayout.FaultStubs"/>, then the
    /// handler they jump to. It reports vector, error code, faulting RIP, RSP and CR2 as five 8-byte stores to
    /// <see cref="GuestLayout.FaultReport"/> (MMIO exits the VMM reads), so that an exception the guest programs never
    /// expect is named, where without a gate it would become a triple fault (KVM_EXIT_SHUTDOWN), whose registers
    /// kvm_amd does not even keep.
    /// </summary>
    public static byte[] FaultHandlers()
    {
        var a = new GuestAssembler();
        const int handler = 256 * GuestLayout.FaultStubSize;
        for (int v = 0; v < 256; v++)
        {
            a.PadTo(v * GuestLayout.FaultStubSize);
            if (!HasErrorCode(v))
                a.PushImm32(0);
            a.PushImm32((uint)v).Jmp(handler);
        }
        a.PadTo(handler);
        // Left on the stack: RIP, CS, RFLAGS, RSP, SS of the interrupted code. CR2 goes last: it ends the report.
        a.PopRax().PopRdx().MovRcxFromStackTop().MovRdi(GuestLayout.FaultReport)
            .StoreRaxAtRdi(0).StoreRdxAtRdi(8).StoreRcxAtRdi(16).MovRcxFromStack(24).StoreRcxAtRdi(32)
            .MovRaxCr2().StoreRaxAtRdi(24);
        return a.JmpSelf().ToArray();
    }

    /// <summary>"#PF (vector 14)"; "vector 255" for an interrupt no program asked for.</summary>
    public static string VectorName(ulong vector) => vector switch
    {
        0 => "#DE", 1 => "#DB", 2 => "NMI", 3 => "#BP", 4 => "#OF", 5 => "#BR", 6 => "#UD", 7 => "#NM", 8 => "#DF",
        10 => "#TS", 11 => "#NP", 12 => "#SS", 13 => "#GP", 14 => "#PF", 16 => "#MF", 17 => "#AC", 18 => "#MC",
        19 => "#XM", 21 => "#CP", _ => "interrupt",
    } + $" (vector {vector})";

    public static byte[] Build(LoadMode mode, uint count, ulong touchBase, uint timerPeriodNs)
    {
        var a = new GuestAssembler();
        a.MovEsi(count);
        int loop;
        switch (mode)
        {
            case LoadMode.Pio:
                a.MovEdx(PioPort).MovEax('k');
                loop = a.Position;
                a.OutDxAl();
                break;
            case LoadMode.Mmio:
                a.MovRdi(GuestLayout.MmioTarget);
                loop = a.Position;
                a.StoreDwordAtRdi();
                break;
            case LoadMode.Msr:
                loop = a.Position;
                a.MovEcx(MsrReadWrite).Rdmsr().Wrmsr();
                break;
            case LoadMode.Cpuid:
                loop = a.Position;
                a.MovEax(CpuidLeaf).XorEcx().Cpuid();
                break;
            case LoadMode.Hlt:
                // A one-shot timer armed right before each hlt: the interrupt cannot be pending when hlt starts (a
                // periodic timer can fire while the vCPU is preempted, and then hlt does not block at all).
                a.MovEcx(X2ApicTimerDivide).MovEax(0xb).XorEdx().Wrmsr();                 // divide by 1
                a.MovEcx(X2ApicLvtTimer).MovEax(GuestLayout.TimerVector).Wrmsr();        // one-shot, unmasked
                loop = a.Position;
                a.MovEcx(X2ApicTimerInitialCount).MovEax(timerPeriodNs).XorEdx().Wrmsr();
                a.Sti().Hlt().Cli();
                a.DecEsiJnz(loop);
                a.MovEcx(X2ApicLvtTimer).MovEax(0x10000u | GuestLayout.TimerVector).XorEdx().Wrmsr(); // mask it again
                return a.MovRdi(GuestLayout.Doorbell).StoreDwordAtRdi().JmpSelf().ToArray();
            case LoadMode.Touch:
                a.MovRdi(touchBase);
                loop = a.Position;
                a.StoreByteAtRdi().AddRdi(4096);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(mode), mode, "one mode at a time");
        }
        a.DecEsiJnz(loop);
        return a.MovRdi(GuestLayout.Doorbell).StoreDwordAtRdi().JmpSelf().ToArray();
    }

    /// <summary>MSR writes the hlt program makes besides the EOIs: divide, LVT (arm, mask), one initial count per halt.</summary>
    public static IEnumerable<(uint Msr, long Writes)> HltMsrWrites(uint halts) =>
        [(X2ApicTimerDivide, 1), (X2ApicLvtTimer, 2), (X2ApicTimerInitialCount, halts)];
}
