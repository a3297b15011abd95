using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Tests;

public class DecoderTests
{
    private static readonly Dictionary<string, EventFormat> Formats = new()
    {
        ["kvm:kvm_exit"] = Fixture.Format("kvm_exit.format"),
        ["kvm:kvm_entry"] = Fixture.Format("kvm_entry.format"),
        ["kvm:kvm_pio"] = Fixture.Format("kvm_pio.format"),
        ["kvm:kvm_userspace_exit"] = Fixture.Format("kvm_userspace_exit.format"),
        ["kvm:kvm_vcpu_wakeup"] = Fixture.Format("kvm_vcpu_wakeup.format"),
        ["kvm:kvm_msr"] = Fixture.Format("kvm_msr.format"),
        ["kvm:kvm_halt_poll_ns"] = Fixture.Format("kvm_halt_poll_ns.format"),
        ["kvmmmu:fast_page_fault"] = Fixture.Format("fast_page_fault.format", "kvmmmu"),
    };

    private static KvmEventDecoders Decoders(Dictionary<string, EventFormat> formats) =>
        new(tp => formats.GetValueOrDefault(tp.FullName));

    private static List<string> Decode(KvmEventDecoders d, params byte[][] payloads)
    {
        var sink = CollectingSink.Create();
        foreach (byte[] p in payloads)
            d.Decode(1, 0, p, ref sink);
        return sink.Seen;
    }

    [Fact]
    public void Vmx_reasons_with_failed_vmentry_kept_apart()
    {
        EventFormat f = Formats["kvm:kvm_exit"];
        KvmEventDecoders d = Decoders(Formats);
        List<string> seen = Decode(d,
            PayloadEncoder.Encode(f, 42, ("exit_reason", 30), ("isa", 1), ("vcpu_id", 3)),
            PayloadEncoder.Encode(f, 42, ("exit_reason", 0x8000_0021), ("isa", 1), ("vcpu_id", 3)),
            PayloadEncoder.Encode(f, 43, ("exit_reason", 0x7b), ("isa", 2), ("vcpu_id", 0)),
            PayloadEncoder.Encode(f, 43, ("exit_reason", 0xffffffff), ("isa", 2), ("vcpu_id", 0)),
            PayloadEncoder.Encode(f, 44, ("exit_reason", 5), ("isa", 7), ("vcpu_id", 1)));
        Assert.Equal(
        [
            "exit 42 ExitRecord { Vcpu = 3, Isa = 1, Reason = 30, FailedVmEntry = False }",
            "exit 42 ExitRecord { Vcpu = 3, Isa = 1, Reason = 33, FailedVmEntry = True }",
            "exit 43 ExitRecord { Vcpu = 0, Isa = 2, Reason = 123, FailedVmEntry = False }",
            "exit 43 ExitRecord { Vcpu = 0, Isa = 2, Reason = 4294967295, FailedVmEntry = False }",
            "exit 44 ExitRecord { Vcpu = 1, Isa = 7, Reason = 5, FailedVmEntry = False }",
        ], seen);
        Assert.Equal("INVALID_STATE", d.ExitReasons.Name(KvmIsa.Vmx, 33));
        Assert.Equal("invalid_guest_state", d.ExitReasons.Name(KvmIsa.Svm, 0xffffffff));
    }

    [Fact]
    public void An_old_kvm_exit_without_isa_takes_the_isa_of_its_table()
    {
        var formats = new Dictionary<string, EventFormat> { ["kvm:kvm_exit"] = Fixture.Format("kvm_exit.vmx-only.format") };
        KvmEventDecoders d = Decoders(formats);
        List<string> seen = Decode(d, PayloadEncoder.Encode(formats["kvm:kvm_exit"], 9, ("exit_reason", 0x8000_000c)));
        Assert.Equal(["exit 9 ExitRecord { Vcpu = -1, Isa = 1, Reason = 12, FailedVmEntry = True }"], seen);
    }

    [Fact]
    public void Every_event_goes_to_its_own_callback()
    {
        KvmEventDecoders d = Decoders(Formats);
        List<string> seen = Decode(d,
            PayloadEncoder.Encode(Formats["kvm:kvm_pio"], 5, ("rw", 1), ("port", 0x3f8), ("size", 1), ("count", 1)),
            PayloadEncoder.Encode(Formats["kvm:kvm_userspace_exit"], 5, ("reason", 2), ("errno", 0)),
            PayloadEncoder.Encode(Formats["kvm:kvm_userspace_exit"], 5, ("reason", 0), ("errno", unchecked((ulong)-4))),
            PayloadEncoder.Encode(Formats["kvm:kvm_vcpu_wakeup"], 6, ("ns", 1500), ("waited", 1), ("valid", 1)),
            PayloadEncoder.Encode(Formats["kvm:kvm_msr"], 6, ("write", 1), ("ecx", 0x80b), ("exception", 0)),
            PayloadEncoder.Encode(Formats["kvm:kvm_halt_poll_ns"], 6, ("grow", 1), ("vcpu_id", 1), ("new", 20000), ("old", 10000)),
            PayloadEncoder.Encode(Formats["kvm:kvm_entry"], 6, ("vcpu_id", 1)),
            PayloadEncoder.Encode(Formats["kvmmmu:fast_page_fault"], 6, ("vcpu_id", 1), ("error_code", 3), ("ret", 5)));
        Assert.Equal(
        [
            "pio 5 PioRecord { Write = True, Port = 1016, Size = 1, Count = 1 }",
            "uexit 5 UserspaceExitRecord { Reason = 2, Errno = 0 }",
            "uexit 5 UserspaceExitRecord { Reason = 0, Errno = -4 }",
            "wake 6 VcpuWakeupRecord { Ns = 1500, Waited = True, Valid = True }",
            "msr 6 MsrRecord { Write = True, Msr = 2059, Exception = False }",
            "poll 6 HaltPollNsRecord { Vcpu = 1, Grow = True, New = 20000, Old = 10000 }",
            "entry 6 EntryRecord { Vcpu = 1, ImmediateExit = False }",
            "fpf 6 FastPageFaultRecord { Vcpu = 1, ErrorCode = 3, Ret = 5 }",
        ], seen);
    }

    [Fact]
    public void Short_records_and_unknown_ids_are_counted_not_decoded()
    {
        KvmEventDecoders d = Decoders(Formats);
        byte[] pio = PayloadEncoder.Encode(Formats["kvm:kvm_pio"], 5, ("port", 1));
        byte[] unknown = (byte[])pio.Clone();
        unknown[0] = 0xff; unknown[1] = 0x7f;
        var sink = CollectingSink.Create();
        d.Decode(1, 0, pio[..10], ref sink);
        d.Decode(1, 0, unknown, ref sink);
        d.Decode(1, 0, pio[..3], ref sink);
        Assert.Empty(sink.Seen);
        Assert.Equal(3, sink.Errors);
    }

    [Fact]
    public void A_missing_event_or_a_differing_format_is_reported_not_fatal()
    {
        var formats = new Dictionary<string, EventFormat>(Formats)
        {
            ["kvm:kvm_pio"] = EventFormatParser.Parse("kvm", Fixture.Text("kvm_pio.format").Replace("port;", "portnum;")),
        };
        KvmEventDecoders d = Decoders(formats);
        TracepointStatus pio = d.Statuses.Single(s => s.Tracepoint.Name == "kvm_pio");
        Assert.False(pio.Available);
        Assert.Contains("has no field 'port'", pio.Problem);
        TracepointStatus mmio = d.Statuses.Single(s => s.Tracepoint.Name == "kvm_mmio");
        Assert.Equal("not in this kernel", mmio.Problem);
        Assert.True(d.Statuses.Single(s => s.Tracepoint.Name == "kvm_exit").Available);
    }
}
