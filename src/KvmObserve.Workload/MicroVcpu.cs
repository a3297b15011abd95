using System.Diagnostics;
using System.Globalization;
using KvmObserve.Native;
using KvmObserve.Native.Kvm;

namespace KvmObserve.Workload;

/// <summary>One vCPU of a <see cref="MicroVm"/>, run by the thread that calls <see cref="RunPhase"/>.</summary>
internal sealed unsafe class MicroVcpu : IDisposable
{
    private const uint MsrApicBase = 0x1b;
    private const ulong ApicBaseX2Apic = 0xfee00c00; // base 0xfee00000 | enable | x2APIC
    private const ulong ApicBaseBsp = 0x100;
    private const int LapicSpuriousVector = 0xf0;

    private readonly MicroVm _vm;
    private readonly SafeFd _fd;
    private readonly MappedRegion _run;

    public MicroVcpu(MicroVm vm, int index)
    {
        _vm = vm;
        Index = index;
        _fd = new SafeFd(Sys.Ioctl(vm.VmFd, KvmIoctl.CreateVcpu, index, $"KVM_CREATE_VCPU({index})"));
        _run = MappedRegion.Shared(_fd, (nuint)vm.VcpuMmapSize, writable: true);
        fixed (byte* cpuid = vm.SupportedCpuid)
            Sys.Ioctl(_fd, KvmIoctl.SetCpuid2, (nint)cpuid, "KVM_SET_CPUID2");
        if (vm.HasIrqchip)
            EnableX2Apic();
        EnableStealTime();
    }

    private const uint MsrKvmStealTime = 0x4b564d03;
    private const ulong KvmMsrEnabled = 1;

    /// <summary>MSR_KVM_STEAL_TIME = GPA | enabled: KVM writes struct kvm_steal_time (steal ns first) there each time
    /// the vCPU enters, as a paravirtual guest asks it to.</summary>
    private void EnableStealTime()
    {
        byte* msrs = stackalloc byte[8 + sizeof(KvmMsrEntry)];
        *(uint*)msrs = 1;
        *(KvmMsrEntry*)(msrs + 8) = new KvmMsrEntry { Index = MsrKvmStealTime, Data = GuestLayout.StealTime(Index) | KvmMsrEnabled };
        StealTimeEnabled = Sys.Ioctl(_fd, KvmIoctl.SetMsrs, (nint)msrs, "KVM_SET_MSRS(STEAL_TIME)") == 1;
    }

    /// <summary>Whether KVM took the steal-time MSR (it needs schedstats in the host kernel).</summary>
    public bool StealTimeEnabled { get; private set; }

    /// <summary>The steal time KVM last wrote into the guest's struct kvm_steal_time, in ns.</summary>
    public ulong GuestStealNs => _vm.ReadGuestU64(GuestLayout.StealTime(Index));

    public int Index { get; }

    /// <summary>The kernel's binary stats of this vCPU (KVM_GET_STATS_FD); empty where the
    /// kernel does not offer them.</summary>
    public IReadOnlyDictionary<string, ulong> KernelStats()
    {
        try
        {
            return KvmStats.Read(_fd);
        }
        catch (NativeErrorException)
        {
            return new Dictionary<string, ulong>();
        }
    }

    private void EnableX2Apic()
    {
        byte* msrs = stackalloc byte[8 + sizeof(KvmMsrEntry)];
        *(uint*)msrs = 1;
        ulong apicBase = ApicBaseX2Apic | (Index == 0 ? ApicBaseBsp : 0);
        *(KvmMsrEntry*)(msrs + 8) = new KvmMsrEntry { Index = MsrApicBase, Data = apicBase };
        if (Sys.Ioctl(_fd, KvmIoctl.SetMsrs, (nint)msrs, "KVM_SET_MSRS(APIC_BASE)") != 1)
            throw new InvalidOperationException("KVM refused the x2APIC base MSR");
        byte* lapic = stackalloc byte[KvmIoctl.LapicStateSize];
        Sys.Ioctl(_fd, KvmIoctl.GetLapic, (nint)lapic, "KVM_GET_LAPIC");
        *(uint*)(lapic + LapicSpuriousVector) = 0x1ff; // APIC software-enabled, spurious vector 0xff
        Sys.Ioctl(_fd, KvmIoctl.SetLapic, (nint)lapic, "KVM_SET_LAPIC");
        uint mpState = KvmIoctl.MpStateRunnable;
        Sys.Ioctl(_fd, KvmIoctl.SetMpState, (nint)(&mpState), "KVM_SET_MP_STATE");
    }

    private long _phaseStarted;  // Stopwatch ticks
    private long _phaseLimit;    // ticks the phase may take; 0 outside a phase

    /// <summary>How long the vCPU has run its phase, where that is longer than the phase may take: its guest went
    /// astray (under QEMU's emulated SVM a nested guest has, now and then, run on past its program, or looped on).
    /// Null while it is fine, or between phases.</summary>
    public TimeSpan? Astray()
    {
        long limit = Volatile.Read(ref _phaseLimit);
        long took = Stopwatch.GetTimestamp() - Volatile.Read(ref _phaseStarted);
        return limit > 0 && took > limit ? Stopwatch.GetElapsedTime(0, took) : null;
    }

    /// <summary>Loads <paramref name="program"/> and runs it to the doorbell, counting every exit into the report.
    /// <paramref name="limit"/>: the longest the phase may take; <paramref name="exits"/>: the exits to the VMM its
    /// program makes before the doorbell's (its PIO or MMIO operations; none in the other modes).</summary>
    public void RunPhase(byte[] program, bool user, VcpuReport report, TimeSpan limit, long exits)
    {
        Volatile.Write(ref _phaseStarted, Stopwatch.GetTimestamp());
        Volatile.Write(ref _phaseLimit, (long)(limit.TotalSeconds * Stopwatch.Frequency));
        try
        {
            RunPhase(program, user, report, exits);
        }
        finally
        {
            Volatile.Write(ref _phaseLimit, 0);
        }
    }

    private void RunPhase(byte[] program, bool user, VcpuReport report, long exits)
    {
        ulong rip = GuestLayout.ProgramAddress(Index);
        program.CopyTo(_vm.Memory[(int)rip..]);
        SetSegments(user);
        var regs = new KvmRegs
        {
            Rip = rip,
            Rsp = GuestLayout.StackTop(Index),
            Rflags = 0x2,
            R15 = GuestLayout.InterruptCounter(Index),
        };
        Sys.Ioctl(_fd, KvmIoctl.SetRegs, (nint)(&regs), "KVM_SET_REGS");

        byte* run = _run.Pointer;
        while (true)
        {
            int r = Sys.TryIoctl(_fd, KvmIoctl.Run, 0);
            if (r == -Errno.EINTR || r == -Errno.EAGAIN)
            {
                VcpuReport.Add(report.UserspaceExits, "restart", 1);
                continue;
            }
            if (r < 0)
                throw new NativeErrorException("KVM_RUN", -r);
            uint reason = *(uint*)(run + KvmRunLayout.ExitReasonOffset);
            // A guest that loops on past its count (a register gone wrong) never reaches the doorbell. -1: the doorbell's
            // own exit; the fault handler's reports are not the program's.
            bool faultReport = reason == KvmExitReason.Mmio && (*(ulong*)(run + KvmRunLayout.MmioPhysAddr) & ~0xfffUL) == GuestLayout.FaultReport;
            if (reason is KvmExitReason.Io or KvmExitReason.Mmio && !faultReport && --exits < -1)
                throw new InvalidOperationException($"vCPU {Index}: its guest went astray: more exits than its program makes, at {Where()}");
            switch (reason)
            {
                case KvmExitReason.Io:
                {
                    VcpuReport.Add(report.UserspaceExits, "IO", 1);
                    ushort port = *(ushort*)(run + KvmRunLayout.IoPort);
                    bool output = run[KvmRunLayout.IoDirection] == 1;
                    VcpuReport.Add(report.Pio, $"0x{port:x}/{(output ? "out" : "in")}", 1);
                    break;
                }
                case KvmExitReason.Mmio:
                {
                    VcpuReport.Add(report.UserspaceExits, "MMIO", 1);
                    ulong gpa = *(ulong*)(run + KvmRunLayout.MmioPhysAddr);
                    bool write = run[KvmRunLayout.MmioIsWrite] != 0;
                    VcpuReport.Add(report.Mmio, $"0x{gpa & ~0xfffUL:x}/{(write ? "write" : "read")}", 1);
                    if ((gpa & ~0xfffUL) == GuestLayout.Doorbell)
                        return;
                    if ((gpa & ~0xfffUL) == GuestLayout.FaultReport)
                        NoteFault(gpa & 0xfff, *(ulong*)(run + KvmRunLayout.MmioData));
                    break;
                }
                case KvmExitReason.Hlt:
                    VcpuReport.Add(report.UserspaceExits, "HLT", 1);
                    return;
                case KvmExitReason.Shutdown:
                    VcpuReport.Add(report.UserspaceExits, "SHUTDOWN", 1);
                    throw new InvalidOperationException($"vCPU {Index}: the guest shut down (triple fault); after it (kvm_amd resets the vCPU): {Where()}");
                default:
                    VcpuReport.Add(report.UserspaceExits, reason.ToString(CultureInfo.InvariantCulture), 1);
                    throw new InvalidOperationException(reason == KvmExitReason.InternalError
                        ? $"vCPU {Index}: KVM internal error, suberror {*(uint*)(run + KvmRunLayout.InternalSuberror)}, at {Where()}"
                        : $"vCPU {Index}: unexpected exit {reason} at {Where()}");
            }
        }
    }

    private readonly ulong[] _fault = new ulong[5];

    /// <summary>One of the fault handler's five stores (<see cref="GuestPrograms.FaultHandlers"/>); CR2, the last,
    /// ends the run with all of them.</summary>
    private void NoteFault(ulong offset, ulong value)
    {
        if (offset % 8 != 0 || offset / 8 >= (ulong)_fault.Length)
            return;
        _fault[offset / 8] = value;
        if (offset / 8 == 3)
            throw new InvalidOperationException(
                $"vCPU {Index}: guest exception {GuestPrograms.VectorName(_fault[0])} at rip 0x{_fault[2]:x} (program at " +
                $"0x{GuestLayout.ProgramAddress(Index):x}), rsp 0x{_fault[4]:x}, error code 0x{_fault[1]:x}, cr2 0x{_fault[3]:x}");
    }

    /// <summary>Where the vCPU stands, for an error (kvm_amd resets its state on a shutdown: the values are then
    /// those of a reset vCPU).</summary>
    private string Where()
    {
        KvmRegs regs;
        return Sys.TryIoctl(_fd, KvmIoctl.GetRegs, (nint)(&regs)) < 0
            ? "an unknown rip"
            : $"rip 0x{regs.Rip:x} (program at 0x{GuestLayout.ProgramAddress(Index):x}), rsp 0x{regs.Rsp:x}";
    }

    private void SetSegments(bool user)
    {
        KvmSregs sregs;
        Sys.Ioctl(_fd, KvmIoctl.GetSregs, (nint)(&sregs), "KVM_GET_SREGS");
        KvmSegment code = Segment(user ? GuestLayout.UserCs : GuestLayout.KernelCs, type: 0xb, user, longMode: true);
        KvmSegment data = Segment(user ? GuestLayout.UserDs : GuestLayout.KernelDs, type: 0x3, user, longMode: false);
        sregs.Cs = code;
        sregs.Ds = sregs.Es = sregs.Fs = sregs.Gs = sregs.Ss = data;
        sregs.Tr = new KvmSegment
        {
            Base = GuestLayout.Tss, Limit = 0x67, Selector = GuestLayout.TssSelector, Type = 0xb, Present = 1,
        };
        sregs.Gdt = new KvmDtable { Base = GuestLayout.Gdt, Limit = GuestLayout.GdtLimit };
        sregs.Idt = new KvmDtable { Base = GuestLayout.Idt, Limit = 256 * 16 - 1 };
        sregs.Cr0 = 0x80050033;
        sregs.Cr3 = GuestLayout.Pml4;
        sregs.Cr4 = 0x620;
        sregs.Efer = 0xd01;
        Sys.Ioctl(_fd, KvmIoctl.SetSregs, (nint)(&sregs), "KVM_SET_SREGS");
    }

    private static KvmSegment Segment(ushort selector, byte type, bool user, bool longMode) => new()
    {
        Base = 0, Limit = 0xffffffff, Selector = selector, Type = type, Present = 1, Dpl = (byte)(user ? 3 : 0),
        Db = (byte)(longMode ? 0 : 1), S = 1, L = (byte)(longMode ? 1 : 0), G = 1,
    };

    public void Dispose()
    {
        _run.Dispose();
        _fd.Dispose();
    }
}
