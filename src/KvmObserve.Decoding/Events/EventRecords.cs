namespace KvmObserve.Decoding.Events;

// Typed views of one record each, handed to IKvmEventSink. Field meanings follow arch/x86/kvm/trace.h,
// include/trace/events/kvm.h and arch/x86/kvm/mmu/mmutrace.h.

/// <summary>What every record carries: trace-clock time, the thread that hit the tracepoint, the CPU it ran on.</summary>
public readonly record struct EventContext(ulong Timestamp, int Tid, int Cpu);

/// <summary>Vcpu is -1 where the event has no vcpu_id field; the aggregator then takes it from the thread.</summary>
public readonly record struct ExitRecord(int Vcpu, uint Isa, uint Reason, bool FailedVmEntry);

public readonly record struct EntryRecord(int Vcpu, bool ImmediateExit);

/// <summary>Reason is KVM_EXIT_*; Errno &lt; 0 means KVM_RUN returned an error (-4 = EINTR, a restart).</summary>
public readonly record struct UserspaceExitRecord(uint Reason, int Errno);

public readonly record struct PioRecord(bool Write, uint Port, uint Size, uint Count);

/// <summary>Type: 0 unsatisfied read, 1 read, 2 write (KVM_TRACE_MMIO_*).</summary>
public readonly record struct MmioRecord(uint Type, uint Length, ulong Gpa);

public readonly record struct MsrRecord(bool Write, uint Msr, bool Exception);

public readonly record struct CpuidRecord(uint Function, uint Index);

public readonly record struct EmulateInsnRecord(bool Failed);

public readonly record struct InjectedExceptionRecord(uint Vector, bool HasError, bool Reinjected);

/// <summary>Waited false: the halt ended while polling. Ns: how long the halt took.</summary>
public readonly record struct VcpuWakeupRecord(ulong Ns, bool Waited, bool Valid);

public readonly record struct HaltPollNsRecord(int Vcpu, bool Grow, uint New, uint Old);

/// <summary>ErrorCode bits: PFERR_* of arch/x86/include/asm/kvm_host.h.</summary>
public readonly record struct PageFaultRecord(int Vcpu, ulong Address, ulong ErrorCode);

/// <summary>Ret: RET_PF_* (5 = fixed, 6 = spurious on Linux 6.x).</summary>
public readonly record struct FastPageFaultRecord(int Vcpu, ulong ErrorCode, int Ret);
