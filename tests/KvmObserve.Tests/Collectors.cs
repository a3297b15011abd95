using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.RingBuffer;

namespace KvmObserve.Tests;

/// <summary>Keeps what the page reader delivers, for assertions.</summary>
internal struct CollectingRecordHandler : IRingBufferRecordHandler
{
    public List<(ulong Timestamp, byte[] Payload)> Records;
    public ulong Lost;
    public int InexactLosses;
    public int Corrupt;

    public static CollectingRecordHandler Create() => new() { Records = new() };

    public void OnRecord(ulong timestamp, ReadOnlySpan<byte> payload) => Records.Add((timestamp, payload.ToArray()));

    public void OnEventsLost(ulong count, bool exact)
    {
        Lost += count;
        if (!exact) InexactLosses++;
    }

    public void OnCorruptPage(int offset) => Corrupt++;
}

/// <summary>Keeps decoded records as text, for assertions.</summary>
internal struct CollectingSink : IKvmEventSink
{
    public List<string> Seen;
    public int Errors;

    public static CollectingSink Create() => new() { Seen = new() };

    public void OnExit(in EventContext c, in ExitRecord r) => Seen.Add($"exit {c.Tid} {r}");
    public void OnEntry(in EventContext c, in EntryRecord r) => Seen.Add($"entry {c.Tid} {r}");
    public void OnUserspaceExit(in EventContext c, in UserspaceExitRecord r) => Seen.Add($"uexit {c.Tid} {r}");
    public void OnPio(in EventContext c, in PioRecord r) => Seen.Add($"pio {c.Tid} {r}");
    public void OnMmio(in EventContext c, in MmioRecord r) => Seen.Add($"mmio {c.Tid} {r}");
    public void OnMsr(in EventContext c, in MsrRecord r) => Seen.Add($"msr {c.Tid} {r}");
    public void OnCpuid(in EventContext c, in CpuidRecord r) => Seen.Add($"cpuid {c.Tid} {r}");
    public void OnEmulateInsn(in EventContext c, in EmulateInsnRecord r) => Seen.Add($"emul {c.Tid} {r}");
    public void OnInjectedException(in EventContext c, in InjectedExceptionRecord r) => Seen.Add($"inj {c.Tid} {r}");
    public void OnVcpuWakeup(in EventContext c, in VcpuWakeupRecord r) => Seen.Add($"wake {c.Tid} {r}");
    public void OnHaltPollNs(in EventContext c, in HaltPollNsRecord r) => Seen.Add($"poll {c.Tid} {r}");
    public void OnPageFault(in EventContext c, in PageFaultRecord r) => Seen.Add($"pf {c.Tid} {r}");
    public void OnFastPageFault(in EventContext c, in FastPageFaultRecord r) => Seen.Add($"fpf {c.Tid} {r}");
    public void OnMmuEvent(in EventContext c, KvmEventKind kind) => Seen.Add($"mmu {c.Tid} {kind}");
    public void OnDecodeError(int cpu, KvmEventKind kind) => Errors++;
}
