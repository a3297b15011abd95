using System.Globalization;
using System.Text;

namespace KvmObserve.Decoding.Format;

/// <summary>
/// Extracts the __print_symbolic tables of a print fmt. The kernel prints them as C:
/// <code>__print_symbolic(REC->exit_reason, { 0x040 + 1, "DB excp" }, { -1, "invalid" }, { 2, "KVM_EXIT_" "IO" })</code>
/// Values are small integer expressions (+ - | &lt;&lt; parentheses, 1UL suffixes); names are concatenated literals.
/// </summary>
public static class PrintFormatParser
{
    private const string Marker = "__print_symbolic(";

    public static IReadOnlyList<SymbolicTable> SymbolicTables(string printFormat)
    {
        var tables = new List<SymbolicTable>();
        int at = 0;
        while ((at = printFormat.IndexOf(Marker, at, StringComparison.Ordinal)) >= 0)
        {
            int pos = at + Marker.Length;
            string expression = ReadUntilTopLevel(printFormat, ref pos, ',', ')').Trim();
            var names = new Dictionary<long, string>();
            while (pos < printFormat.Length && printFormat[pos] == ',')
            {
                pos++;
                SkipSpace(printFormat, ref pos);
                if (pos >= printFormat.Length || printFormat[pos] != '{')
                    break;
                pos++;
                string valueText = ReadUntilTopLevel(printFormat, ref pos, ',', '}');
                if (pos >= printFormat.Length)
                    break; // cut short: the entry has no name
                if (printFormat[pos] == '}')
                {
                    pos++; // "{ }": an empty table
                    SkipSpace(printFormat, ref pos);
                    continue;
                }
                pos++; // ','
                string nameText = ReadUntilTopLevel(printFormat, ref pos, '}', '}');
                if (pos >= printFormat.Length)
                    break;
                pos++; // '}'
                SkipSpace(printFormat, ref pos);
                if (TryEvaluate(valueText, out long value))
                    names[value] = ConcatenateLiterals(nameText);
            }
            tables.Add(new SymbolicTable(expression, names));
            at = pos;
        }
        return tables;
    }

    private static void SkipSpace(string s, ref int pos)
    {
        while (pos < s.Length && char.IsWhiteSpace(s[pos]))
            pos++;
    }

    /// <summary>Reads up to (not past) the first <paramref name="stop"/> or <paramref name="close"/> at nesting depth 0.</summary>
    private static string ReadUntilTopLevel(string s, ref int pos, char stop, char close)
    {
        int start = pos, depth = 0;
        bool inString = false;
        for (; pos < s.Length; pos++)
        {
            char c = s[pos];
            if (inString)
            {
                if (c == '\\') pos++;
                else if (c == '"') inString = false;
                continue;
            }
            if (c == '"') inString = true;
            else if (c is '(' or '{' or '[') depth++;
            else if (depth > 0 && c is ')' or '}' or ']') depth--;
            else if (depth == 0 && (c == stop || c == close)) break;
        }
        pos = Math.Min(pos, s.Length); // a trailing backslash steps past the end
        return s[start..pos];
    }

    private static string ConcatenateLiterals(string text)
    {
        var sb = new StringBuilder();
        bool inString = false;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (!inString)
            {
                if (c == '"') inString = true;
                continue;
            }
            if (c == '\\' && i + 1 < text.Length) { sb.Append(text[++i]); continue; }
            if (c == '"') { inString = false; continue; }
            sb.Append(c);
        }
        return sb.ToString();
    }

    /// <summary>Evaluates the integer expressions kernels put in symbol tables.</summary>
    public static bool TryEvaluate(string text, out long value)
    {
        var parser = new ExpressionParser(text);
        try
        {
            value = parser.ParseOr();
            parser.SkipSpace();
            return parser.AtEnd;
        }
        catch (FormatException)
        {
            value = 0;
            return false;
        }
    }

    private ref struct ExpressionParser(string text)
    {
        // Kernel tables nest two or three deep; a bound keeps hostile text from exhausting the stack.
        private const int MaxDepth = 64;
        private readonly string _text = text;
        private int _pos;
        private int _depth;

        public readonly bool AtEnd => _pos >= _text.Length;

        public void SkipSpace()
        {
            while (_pos < _text.Length && char.IsWhiteSpace(_text[_pos]))
                _pos++;
        }

        public long ParseOr()
        {
            long v = ParseShift();
            while (Accept('|'))
                v |= ParseShift();
            return v;
        }

        private long ParseShift()
        {
            long v = ParseSum();
            while (Accept("<<"))
                v <<= (int)(ParseSum() & 63);
            return v;
        }

        private long ParseSum()
        {
            long v = ParseUnary();
            while (true)
            {
                if (Accept('+')) v += ParseUnary();
                else if (Accept('-')) v -= ParseUnary();
                else return v;
            }
        }

        private long ParseUnary()
        {
            if (++_depth > MaxDepth)
                throw new FormatException($"nested more than {MaxDepth} deep");
            try
            {
                if (Accept('-')) return -ParseUnary();
                if (Accept('~')) return ~ParseUnary();
                if (Accept('('))
                {
                    long inner = ParseOr();
                    if (!Accept(')')) throw new FormatException("missing ')'");
                    return inner;
                }
                return ParseNumber();
            }
            finally
            {
                _depth--;
            }
        }

        private long ParseNumber()
        {
            SkipSpace();
            int start = _pos;
            while (_pos < _text.Length && char.IsAsciiLetterOrDigit(_text[_pos]))
                _pos++;
            ReadOnlySpan<char> token = _text.AsSpan(start, _pos - start);
            // U and L are never hex digits, so C suffixes (1UL, 0x10ull) can always be dropped.
            while (token.Length > 0 && token[^1] is 'u' or 'U' or 'l' or 'L')
                token = token[..^1];
            if (token.StartsWith("0x") || token.StartsWith("0X"))
            {
                if (ulong.TryParse(token[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out ulong hex))
                    return unchecked((long)hex);
            }
            else if (long.TryParse(token, NumberStyles.None, CultureInfo.InvariantCulture, out long dec))
                return dec;
            throw new FormatException($"not a number: '{token.ToString()}'");
        }

        private bool Accept(char c)
        {
            SkipSpace();
            if (_pos < _text.Length && _text[_pos] == c)
            {
                _pos++;
                return true;
            }
            return false;
        }

        private bool Accept(string s)
        {
            SkipSpace();
            if (string.CompareOrdinal(_text, _pos, s, 0, s.Length) == 0)
            {
                _pos += s.Length;
                return true;
            }
            return false;
        }
    }
}
