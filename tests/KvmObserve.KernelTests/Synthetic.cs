using KvmObserve.Decoding.Format;
using KvmObserve.Sources.Recording;
using KvmObserve.Tests;

namespace KvmObserve.KernelTests;

/// <summary>
/// An encoded flight recording in this kernel's own record layouts (its tracefs format files), for what the kernel
/// here cannot produce: kvm_exit and kvm_entry never fire on a software KVM backend, and without /dev/kvm nothing
/// fires. VM e2e-a (pid 5000; vCPUs 0 and 1, threads 5001 and 5002) exits with kvm_exit/kvm_entry pairs around every
/// kind of event; VM e2e-b (pid 6000; vCPU 0, thread 6001) has no kvm_exit, as on this machine's backend. Both have
/// schedstat readings (steal). From <c>stormFrom</c> to <c>stormTo</c> seconds, e2e-a's vCPU 0 storms with IO exits.
/// </summary>
internal static class Synthetic
{
    private const uint Vmx = 1;
    private const uint ExceptionNmi = 0, Cpuid = 10, Hlt = 12, IoInstruction = 30, MsrRead = 31, EptViolation = 48, EptMisconfig = 49;
    private const uint KvmExitIo = 2, KvmExitMmio = 6;

    /// <summary>Writes the recording; returns how many kvm_exit records it holds.</summary>
    public static long Write(string path, double stormFrom, double stormTo, double length, int calmPerVcpu, int stormPerSecond)
    {
        string root = Directory.Exists("/sys/kernel/tracing/events/kvm") ? "/sys/kernel/tracing" : "/sys/kernel/debug/tracing";
        var texts = new Dictionary<string, string>();
        var formats = new Dictionary<string, EventFormat>();
        foreach (string dir in Directory.GetDirectories(Path.Combine(root, "events", "kvm")).Concat(Directory.GetDirectories(Path.Combine(root, "events", "kvmmmu"))))
        {
            string system = Path.GetFileName(Path.GetDirectoryName(dir))!, name = Path.GetFileName(dir);
            string file = Path.Combine(dir, "format");
            if (!File.Exists(file))
                continue;
            texts[$"{system}:{name}"] = File.ReadAllText(file);
            formats[name] = EventFormatParser.Parse(system, texts[$"{system}:{name}"]);
        }
        var records = new List<RecordedRecord>();
        long exits = 0;
        const ulong Second = 1_000_000_000;
        ulong start = 10 * Second;

        void Add(ulong ts, int cpu, string ev, int tid, params (string, ulong)[] fields) =>
            records.Add(new RecordedRecord(ts, (ushort)cpu, FlightRecording.TracepointKind, PayloadEncoder.Encode(formats[ev], tid, fields)));

        void Exit(ref ulong ts, int cpu, int tid, int vcpu, uint reason, Action<ulong>? inside = null)
        {
            Add(ts, cpu, "kvm_exit", tid, ("exit_reason", reason), ("isa", Vmx), ("vcpu_id", (ulong)vcpu));
            exits++;
            inside?.Invoke(ts);
            ts += 2_000 + (ulong)(reason * 37 % 1_500);
            Add(ts, cpu, "kvm_entry", tid, ("vcpu_id", (ulong)vcpu));
        }

        // Each vCPU starts with a known halt-poll window, so halts are told poll_success or poll_fail.
        foreach ((int tid, int vcpu, int cpu) in new[] { (5001, 0, 0), (5002, 1, 1), (6001, 0, 1) })
            Add(start, cpu, "kvm_halt_poll_ns", tid, ("grow", 1), ("vcpu_id", (ulong)vcpu), ("new", 200_000), ("old", 0));

        int ticks = (int)(length * 1000);
        int[] exitCount = new int[2];
        for (int ms = 0; ms < ticks; ms++)
        {
            ulong t0 = start + Second / 1000 * (ulong)ms + 1_000;
            // e2e-a: every vCPU exits calmPerVcpu times a second, cycling through the kinds of exit.
            int perMs = Math.Max(1, calmPerVcpu / 1000);
            bool everyMs = calmPerVcpu >= 1000 || ms % (1000 / calmPerVcpu) == 0;
            for (int vcpu = 0; vcpu < 2 && everyMs; vcpu++)
            {
                int tid = 5001 + vcpu, cpu = vcpu;
                for (int k = 0; k < perMs; k++)
                {
                    ulong ts = t0 + (ulong)(vcpu * 300 + k * 10_000);
                    int i = exitCount[vcpu]++; // every kind in turn
                    switch (i % 8)
                    {
                        case 0 or 7:
                            Exit(ref ts, cpu, tid, vcpu, IoInstruction, at =>
                            {
                                Add(at + 100, cpu, "kvm_pio", tid, ("rw", 1), ("port", 0x3f8 + (ulong)(i % 3)), ("size", 1), ("count", 1));
                                Add(at + 200, cpu, "kvm_userspace_exit", tid, ("reason", KvmExitIo), ("errno", 0));
                            });
                            break;
                        case 1:
                            Exit(ref ts, cpu, tid, vcpu, MsrRead, at => Add(at + 100, cpu, "kvm_msr", tid, ("ecx", 0x10), ("write", 0)));
                            break;
                        case 2:
                            Exit(ref ts, cpu, tid, vcpu, Hlt, at =>
                            {
                                Add(at + 100, cpu, "kvm_vcpu_wakeup", tid, ("ns", 20_000 + (ulong)(i % 5) * 40_000), ("waited", (ulong)(i / 8 % 2)), ("valid", 1));
                                if (i % 64 == 2)
                                    Add(at + 150, cpu, "kvm_halt_poll_ns", tid, ("grow", (ulong)(i / 64 % 2)), ("vcpu_id", (ulong)vcpu), ("new", 200_000), ("old", 100_000));
                            });
                            break;
                        case 3:
                            Exit(ref ts, cpu, tid, vcpu, EptViolation, at =>
                            {
                                Add(at + 100, cpu, "kvm_page_fault", tid, ("vcpu_id", (ulong)vcpu), ("fault_address", 0x10_0000 + (ulong)i * 4096), ("error_code", 0x2));
                                Add(at + 200, cpu, "kvm_mmu_spte_requested", tid, ("gfn", 0x100 + (ulong)i), ("level", 1));
                                Add(at + 300, cpu, "kvm_mmu_set_spte", tid, ("gfn", 0x100 + (ulong)i), ("level", 1));
                            });
                            break;
                        case 4:
                            Exit(ref ts, cpu, tid, vcpu, EptMisconfig, at =>
                            {
                                Add(at + 100, cpu, "kvm_emulate_insn", tid, ("rip", 0x1000), ("len", 3));
                                Add(at + 200, cpu, "kvm_mmio", tid, ("type", 2), ("len", 4), ("gpa", 0xd000_0000));
                                Add(at + 300, cpu, "kvm_userspace_exit", tid, ("reason", KvmExitMmio), ("errno", 0));
                            });
                            break;
                        case 5:
                            Exit(ref ts, cpu, tid, vcpu, Cpuid, at => Add(at + 100, cpu, "kvm_cpuid", tid, ("function", 1)));
                            break;
                        case 6:
                            Exit(ref ts, cpu, tid, vcpu, ExceptionNmi, at => Add(at + 100, cpu, "kvm_inj_exception", tid, ("exception", 14), ("has_error", 1)));
                            break;
                    }
                }
            }
            // e2e-b: 200 events a second, no kvm_exit.
            if (ms % 5 == 0)
            {
                ulong ts = t0 + 700;
                switch (ms / 5 % 4)
                {
                    case 0:
                        Add(ts, 1, "kvm_pio", 6001, ("rw", 0), ("port", 0x60), ("size", 1), ("count", 1));
                        Add(ts + 100, 1, "kvm_userspace_exit", 6001, ("reason", KvmExitIo), ("errno", 0));
                        break;
                    case 1:
                        Add(ts, 1, "kvm_msr", 6001, ("ecx", 0x1b), ("write", 1));
                        break;
                    case 2:
                        Add(ts, 1, "kvm_cpuid", 6001, ("function", 0));
                        break;
                    case 3:
                        Add(ts, 1, "kvm_vcpu_wakeup", 6001, ("ns", 50_000), ("waited", 1), ("valid", 1));
                        break;
                }
            }
            // The storm: e2e-a's vCPU 0 exits on port I/O stormPerSecond times a second.
            double seconds = ms / 1000.0;
            if (seconds >= stormFrom && seconds < stormTo)
            {
                int perMsStorm = stormPerSecond / 1000;
                for (int k = 0; k < perMsStorm; k++)
                {
                    ulong ts = t0 + 20_000 + (ulong)(k * (900_000 / perMsStorm));
                    Exit(ref ts, 0, 5001, 0, IoInstruction);
                }
            }
            // schedstat every 500 ms: e2e-a's vCPU 0 waits 20% of the time, the others 5%.
            if (ms % 500 == 0)
            {
                ulong elapsed = (ulong)ms * 1_000_000;
                foreach ((int tid, double steal) in new[] { (5001, 0.20), (5002, 0.05), (5000, 0.05), (6001, 0.05) })
                    records.Add(new RecordedRecord(t0, 0, FlightRecording.SchedstatKind,
                        FlightRecording.SchedstatPayload(tid, elapsed / 2, (ulong)(elapsed * steal))));
            }
        }
        records.Sort(static (a, b) => a.Timestamp.CompareTo(b.Timestamp));

        var header = new RecordingHeader
        {
            Created = DateTime.UtcNow.ToString("O"),
            Host = "encoded by AlertingEndToEndTests",
            Source = "tracefs",
            Reason = "encoded fixture: a storm at " + stormFrom + " s",
            Vm = "e2e-a",
            FromNs = records[0].Timestamp,
            ToNs = records[^1].Timestamp,
            Records = records.Count,
            Formats = texts,
            Threads =
            [
                new RecordedThread(5000, 5000, "e2e-a", "qemu", "", -1),
                new RecordedThread(5001, 5000, "e2e-a", "qemu", "", 0),
                new RecordedThread(5002, 5000, "e2e-a", "qemu", "", 1),
                new RecordedThread(6001, 6000, "e2e-b", "firecracker", "", 0),
            ],
        };
        using FileStream output = File.Create(path);
        FlightRecording.Write(output, header, records);
        return exits;
    }
}
