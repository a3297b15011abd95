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
