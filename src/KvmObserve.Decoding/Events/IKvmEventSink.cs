namespace KvmObserve.Decoding.Events;

/// <summary>
/// Receives decoded records. Implemented by structs and called through a generic parameter, so every call is direct
/// and inlinable. The record is valid only during the call.
/// </summary>
public interface IKvmEventSink
{
    void OnExit(in EventContext context, in ExitRecord record);
    void OnEntry(in EventContext context, in EntryRecord record);
    void OnUserspaceExit(in EventContext context, in UserspaceExitRecord record);
    void OnPio(in EventContext context, in PioRecord record);
    void OnMmio(in EventContext context, in MmioRecord record);
    void OnMsr(in EventContext context, in MsrRecord record);
    void OnCpuid(in EventContext context, in CpuidRecord record);
    void OnEmulateInsn(in EventContext context, in EmulateInsnRecord record);
    void OnInjectedException(in EventContext context, in InjectedExceptionRecord record);
    void OnVcpuWakeup(in EventContext context, in VcpuWakeupRecord record);
    void OnHaltPollNs(in EventContext context, in HaltPollNsRecord record);
    void OnPageFault(in EventContext context, in PageFaultRecord record);
    void OnFastPageFault(in EventContext context, in FastPageFaultRecord record);

    /// <summary>A kvmmmu event that is only counted (spte requested/set, page get/zap, mmio sptes, ...).</summary>
    void OnMmuEvent(in EventContext context, KvmEventKind kind);

    /// <summary>A record that could not be decoded: too short for its format, or of an event id not enabled.</summary>
    void OnDecodeError(int cpu, KvmEventKind kind);
}
