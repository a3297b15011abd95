using KvmObserve.Decoding.Format;

namespace KvmObserve.Tests;

public class FormatParserTests
{
    [Fact]
    public void Parses_the_real_kvm_exit_format_of_this_machine()
    {
        EventFormat f = Fixture.Format("kvm_exit.format");
        Assert.Equal("kvm_exit", f.Name);
        Assert.Equal(103, f.Id);
        Assert.Equal(new FieldFormat("exit_reason", "unsigned int exit_reason", 8, 4, false), f.Find("exit_reason"));
        Assert.Equal(24, f.Find("isa")!.Value.Offset);
        Assert.Equal(56, f.Find("vcpu_id")!.Value.Offset);
        Assert.Equal(4, f.Find("common_pid")!.Value.Size);
        Assert.True(f.Find("common_pid")!.Value.Signed);
    }

    [Theory]
    [InlineData("kvm_pio.format", "port", 12, 4)]
    [InlineData("kvm_msr.format", "ecx", 12, 4)]
    [InlineData("kvm_mmio.format", "gpa", 16, 8)]
    [InlineData("kvm_vcpu_wakeup.format", "waited", 16, 1)]
    [InlineData("kvm_halt_poll_ns.format", "new", 16, 4)]
    [InlineData("fast_page_fault.format", "ret", 56, 4)]
    public void Field_offsets_come_from_the_format(string file, string field, int offset, int size)
    {
        FieldFormat f = Fixture.Format(file).Find(field)!.Value;
        Assert.Equal(offset, f.Offset);
        Assert.Equal(size, f.Size);
    }

    [Fact]
    public void Array_and_pointer_declarations_keep_their_names()
    {
        Assert.Equal("insn", EventFormatParser.ParseField("field:__u8 insn[15];\toffset:21;\tsize:15;\tsigned:0;").Name);
        Assert.Equal("sptep", EventFormatParser.ParseField("field:u64 * sptep;\toffset:32;\tsize:8;\tsigned:0;").Name);
    }

    [Theory]
    [InlineData("name: x\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n")]
    [InlineData("name: x\nID: 1\nformat:\n")]
    [InlineData("name: x\nID: z\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n")]
    [InlineData("name: x\nID: 1\nformat:\n\tfield:int a;\toffset:zero;\tsize:4;\tsigned:1;\n")]
    public void Bad_format_text_is_a_format_exception(string text) =>
        Assert.Throws<FormatException>(() => EventFormatParser.Parse("kvm", text));

    [Fact]
    public void Page_header_gives_the_page_layout()
    {
        PageHeaderFormat h = Fixture.PageHeader;
        Assert.Equal(PageHeaderFormat.Default64, h);
        Assert.Equal(4096, h.PageSize);
        Assert.Null(EventHeaderFormat.Check(Fixture.Text("header_event")));
        Assert.NotNull(EventHeaderFormat.Check(Fixture.Text("header_event").Replace("== 29", "== 27")));
    }

    [Fact]
    public void Both_exit_reason_tables_of_a_current_kernel()
    {
        ExitReasonTables t = ExitReasonTables.FromPrintFormat(Fixture.Format("kvm_exit.format").PrintFormat);
        Assert.True(t.HasVmx && t.HasSvm);
        Assert.Equal("IO_INSTRUCTION", t.Name(KvmIsa.Vmx, 30));
        Assert.Equal("EPT_VIOLATION", t.Name(KvmIsa.Vmx, 48));
        Assert.Equal("io", t.Name(KvmIsa.Svm, 0x7b));
        Assert.Equal("GP excp", t.Name(KvmIsa.Svm, 0x40 + 13)); // "0x040 + 13" evaluated
        Assert.Equal("npf", t.Name(KvmIsa.Svm, 0x400));
        Assert.Equal("invalid_guest_state", t.Name(KvmIsa.Svm, 0xffffffff)); // { -1, ... }
        Assert.Equal("vmgexit_hypervisor_feature", t.Name(KvmIsa.Svm, 0x8000fffd));
        Assert.Equal("9999", t.Name(KvmIsa.Vmx, 9999));
        Assert.Equal("7", t.Name(3, 7));
    }

    [Fact]
    public void Vmx_only_and_svm_only_formats_of_older_kernels()
    {
        ExitReasonTables vmx = ExitReasonTables.FromPrintFormat(Fixture.Format("kvm_exit.vmx-only.format").PrintFormat);
        Assert.Equal(KvmIsa.Vmx, vmx.ImpliedIsa);
        Assert.Equal("HLT", vmx.Name(KvmIsa.Vmx, 12));
        ExitReasonTables svm = ExitReasonTables.FromPrintFormat(Fixture.Format("kvm_exit.svm-only.format").PrintFormat);
        Assert.Equal(KvmIsa.Svm, svm.ImpliedIsa);
        Assert.Equal("msr", svm.Name(KvmIsa.Svm, 0x7c));
    }

    [Fact]
    public void A_format_without_tables_falls_back_to_the_built_in_ones()
    {
        ExitReasonTables t = ExitReasonTables.FromFormatOrBuiltIn(Fixture.Format("kvm_exit.no-tables.format"));
        Assert.False(t.FromFormat);
        Assert.Equal("IO_INSTRUCTION", t.Name(KvmIsa.Vmx, 30));
        Assert.Equal("hlt", t.Name(KvmIsa.Svm, 0x78));
    }

    [Theory]
    [InlineData("0x040 + 1", 0x41)]
    [InlineData("-1", -1)]
    [InlineData("(1 << 0) | (1 << 1)", 3)]
    [InlineData("((((1UL))) << (15))", 1 << 15)]
    [InlineData("0x80000001", 0x80000001)]
    public void Symbol_values_are_evaluated(string expression, long expected)
    {
        Assert.True(PrintFormatParser.TryEvaluate(expression, out long v));
        Assert.Equal(expected, v);
    }

    [Fact]
    public void Userspace_exit_names_are_read_from_concatenated_literals()
    {
        IReadOnlyList<SymbolicTable> tables = PrintFormatParser.SymbolicTables(Fixture.Format("kvm_userspace_exit.format").PrintFormat);
        Assert.Equal("KVM_EXIT_IO", tables[0].Names[2]);
        Assert.Equal("KVM_EXIT_X86_WRMSR", tables[0].Names[30]);
    }
}
