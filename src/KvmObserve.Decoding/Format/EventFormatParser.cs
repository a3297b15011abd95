using System.Globalization;

namespace KvmObserve.Decoding.Format;

/// <summary>
/// Parses the text of a tracefs format file. Layout (one event):
/// <code>
/// name: kvm_pio
/// ID: 110
/// format:
/// 	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
/// 	...
/// 	field:unsigned int port;	offset:12;	size:4;	signed:0;
///
/// print fmt: "pio_%s at 0x%x ...", REC->rw ? "write" : "read", ...
/// </code>
/// Pure: no I/O. Bad text throws FormatException naming the line.
/// </summary>
public static class EventFormatParser
{
    /// <summary>No record or page header is larger than a ring-buffer sub-buffer (at most a few MiB).</summary>
    public const int MaxRecordBytes = 1 << 24;

    public static EventFormat Parse(string system, string text)
    {
        string? name = null;
        int id = -1;
        string printFormat = "";
        var fields = new List<FieldFormat>();
        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].Trim();
            if (line.StartsWith("name:", StringComparison.Ordinal))
                name = line["name:".Length..].Trim();
            else if (line.StartsWith("ID:", StringComparison.Ordinal))
                id = ParseInt(line["ID:".Length..].Trim(), i);
            else if (line.StartsWith("field:", StringComparison.Ordinal))
                fields.Add(ParseField(line, i));
            else if (line.StartsWith("print fmt:", StringComparison.Ordinal))
                printFormat = line["print fmt:".Length..].Trim();
        }
        if (name is null)
            throw new FormatException($"format of {system}: no 'name:' line");
        if (id < 0)
            throw new FormatException($"format of {system}:{name}: no 'ID:' line");
        if (fields.Count == 0)
            throw new FormatException($"format of {system}:{name}: no fields");
        if (id > ushort.MaxValue)
            throw new FormatException($"format of {system}:{name}: ID {id} does not fit common_type (16 bits)");
        return new EventFormat(system, name, id, fields, printFormat);
    }

    /// <summary>Parses "field:TYPE NAME;	offset:N;	size:N;	signed:N;".</summary>
    public static FieldFormat ParseField(string line, int lineIndex = 0)
    {
        string declaration = "";
        int offset = -1, size = -1;
        bool signed = false;
        foreach (string rawPart in line.Split(';'))
        {
            string part = rawPart.Trim();
            if (part.StartsWith("field:", StringComparison.Ordinal))
                declaration = part["field:".Length..].Trim();
            else if (part.StartsWith("offset:", StringComparison.Ordinal))
                offset = ParseInt(part["offset:".Length..], lineIndex);
            else if (part.StartsWith("size:", StringComparison.Ordinal))
                size = ParseInt(part["size:".Length..], lineIndex);
            else if (part.StartsWith("signed:", StringComparison.Ordinal))
                signed = ParseInt(part["signed:".Length..], lineIndex) != 0;
        }
        if (declaration.Length == 0 || offset < 0 || size <= 0)
            throw new FormatException($"line {lineIndex + 1}: not a field line: '{line}'");
        if ((long)offset + size > MaxRecordBytes)
            throw new FormatException($"line {lineIndex + 1}: field ends at {(long)offset + size}, past any ring-buffer page");
        return new FieldFormat(FieldName(declaration), declaration, offset, size, signed);
    }

    /// <summary>"unsigned int port" → port; "__u8 insn[15]" → insn; "u64 * sptep" → sptep.</summary>
    private static string FieldName(string declaration)
    {
        string d = declaration;
        int bracket = d.IndexOf('[');
        if (bracket >= 0)
            d = d[..bracket];
        d = d.TrimEnd();
        int start = d.Length;
        while (start > 0 && (char.IsLetterOrDigit(d[start - 1]) || d[start - 1] == '_'))
            start--;
        return d[start..];
    }

    private static int ParseInt(string s, int lineIndex)
    {
        if (!int.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
            throw new FormatException($"line {lineIndex + 1}: '{s.Trim()}' is not a number");
        return v;
    }
}
