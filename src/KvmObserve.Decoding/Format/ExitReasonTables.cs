using System.Reflection;

namespace KvmObserve.Decoding.Format;

/// <summary>Instruction-set families of kvm_exit's isa field (arch/x86/kvm/trace.h: KVM_ISA_VMX = 1, KVM_ISA_SVM = 2).</summary>
public static class KvmIsa
{
    public const uint Vmx = 1;
    public const uint Svm = 2;

    /// <summary>VMX keeps the basic reason in bits 0-15; bit 31 says the VM entry itself failed.</summary>
    public const uint VmxBasicReasonMask = 0xffff;
    public const uint VmxFailedVmEntry = 0x8000_0000;

    public static string Label(uint isa) => isa switch
    {
        Vmx => "vmx",
        Svm => "svm",
        _ => isa.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}

/// <summary>
/// Exit reason names per ISA, taken from the __print_symbolic tables in kvm_exit's print fmt. Kernels that print
/// "(REC->isa == 1) ? VMX-table : SVM-table" give both; older single-vendor formats give one, recognised by its names.
/// When the format has no table at all, the tables of a built-in copy of a Linux 6.18 format are used instead.
/// </summary>
public sealed class ExitReasonTables
{
    private readonly IReadOnlyDictionary<long, string> _vmx;
    private readonly IReadOnlyDictionary<long, string> _svm;

    private ExitReasonTables(IReadOnlyDictionary<long, string> vmx, IReadOnlyDictionary<long, string> svm, bool fromFormat)
    {
        _vmx = vmx;
        _svm = svm;
        FromFormat = fromFormat;
    }

    /// <summary>False when the tables came from the built-in fallback.</summary>
    public bool FromFormat { get; }

    public bool HasVmx => _vmx.Count > 0;
    public bool HasSvm => _svm.Count > 0;

    /// <summary>The ISA an old format without an isa field implies (its only table), or 0 when it does not say.</summary>
    public uint ImpliedIsa => HasVmx && !HasSvm ? KvmIsa.Vmx : HasSvm && !HasVmx ? KvmIsa.Svm : 0;

    /// <summary>Every reason of one ISA's table, as exit_reason holds it (SVM's -1 as 0xffffffff).</summary>
    public IReadOnlyList<uint> Reasons(uint isa)
    {
        IReadOnlyDictionary<long, string> table = isa == KvmIsa.Vmx ? _vmx : isa == KvmIsa.Svm ? _svm : new Dictionary<long, string>();
        return table.Keys.Select(k => unchecked((uint)k)).Distinct().Order().ToList();
    }

    /// <summary>The reason's name, or its number as text when the table does not know it.</summary>
    public string Name(uint isa, uint reason)
    {
        IReadOnlyDictionary<long, string>? table = isa == KvmIsa.Vmx ? _vmx : isa == KvmIsa.Svm ? _svm : null;
        if (table is not null)
        {
            // SVM reasons are compared as the kernel prints them: exit_reason as an int, so 0xffffffff is -1.
            if (table.TryGetValue(reason, out string? name) || table.TryGetValue(unchecked((int)reason), out name))
                return name;
        }
        return reason.ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    public static ExitReasonTables FromPrintFormat(string printFormat)
    {
        IReadOnlyList<SymbolicTable> tables = PrintFormatParser.SymbolicTables(printFormat);
        IReadOnlyDictionary<long, string>? vmx = null, svm = null;
        var reasonTables = tables.Where(t => t.Expression.Contains("exit_reason", StringComparison.Ordinal)).ToList();
        if (reasonTables.Count >= 2 && printFormat.Contains("isa == 1", StringComparison.Ordinal))
        {
            vmx = reasonTables[0].Names;
            svm = reasonTables[1].Names;
        }
        else
        {
            foreach (SymbolicTable t in reasonTables)
            {
                if (LooksLikeVmx(t)) vmx ??= t.Names;
                else if (LooksLikeSvm(t)) svm ??= t.Names;
            }
        }
        var empty = new Dictionary<long, string>();
        return new ExitReasonTables(vmx ?? empty, svm ?? empty, fromFormat: true);
    }

    /// <summary>The tables of the format when it has any, else the built-in ones.</summary>
    public static ExitReasonTables FromFormatOrBuiltIn(EventFormat kvmExit)
    {
        ExitReasonTables fromFormat = FromPrintFormat(kvmExit.PrintFormat);
        if (fromFormat.HasVmx || fromFormat.HasSvm)
            return fromFormat;
        ExitReasonTables builtIn = BuiltIn;
        return new ExitReasonTables(builtIn._vmx, builtIn._svm, fromFormat: false);
    }

    public static ExitReasonTables BuiltIn { get; } = LoadBuiltIn();

    private static ExitReasonTables LoadBuiltIn()
    {
        using Stream stream = typeof(ExitReasonTables).Assembly.GetManifestResourceStream("kvm_exit.builtin.format")
            ?? throw new InvalidOperationException("built-in kvm_exit format resource is missing");
        using var reader = new StreamReader(stream);
        EventFormat format = EventFormatParser.Parse("kvm", reader.ReadToEnd());
        return FromPrintFormat(format.PrintFormat);
    }

    private static bool LooksLikeVmx(SymbolicTable t) =>
        t.ContainsName("IO_INSTRUCTION") || t.ContainsName("EPT_VIOLATION") || t.ContainsName("EXCEPTION_NMI");

    private static bool LooksLikeSvm(SymbolicTable t) =>
        t.ContainsName("npf") || t.ContainsName("vmrun") || t.ContainsName("io") || t.ContainsName("msr");
}
