using System.Buffers;
using System.Buffers.Text;
using System.Text;

namespace KvmObserve.Exposition;

/// <summary>
/// Writes the Prometheus text format 0.0.4 into an <see cref="IBufferWriter{T}"/>: UTF-8 straight into the output
/// buffer, numbers through Utf8Formatter, label values escaped (they carry user input such as VM names).
/// <code>
/// # HELP kvm_pio_total Port I/O exits.
/// # TYPE kvm_pio_total counter
/// kvm_pio_total{vm="web-1",port="0x3f8",direction="out"} 1234
/// </code>
/// </summary>
/// <remarks>With <c>openMetrics</c>, it writes OpenMetrics text 1.0.0 instead: a counter's family is named without its
/// _total suffix (its samples keep it), and the exposition ends with "# EOF".</remarks>
public sealed class PrometheusTextWriter(IBufferWriter<byte> output, bool openMetrics = false) : MetricWriter
{
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";
    public const string OpenMetricsContentType = "application/openmetrics-text; version=1.0.0; charset=utf-8";

    private bool _firstLabel;

    public override void Family(string name, string type, string help)
    {
        if (openMetrics && type == "counter" && name.EndsWith("_total", StringComparison.Ordinal))
            name = name[..^"_total".Length];
        Ascii("# HELP ");
        Ascii(name);
        Byte((byte)' ');
        Escaped(help, escapeQuotes: false);
        Ascii("\n# TYPE ");
        Ascii(name);
        Byte((byte)' ');
        Ascii(type);
        Byte((byte)'\n');
    }

    public override void End()
    {
        if (openMetrics)
            Ascii("# EOF\n");
    }

    public override MetricWriter Begin(string metricName)
    {
        Ascii(metricName);
        _firstLabel = true;
        return this;
    }

    public override MetricWriter Label(string name, string value)
    {
        LabelStart(name);
        Escaped(value, escapeQuotes: true);
        Byte((byte)'"');
        return this;
    }

    public override MetricWriter Label(string name, long value)
    {
        LabelStart(name);
        Number(value);
        Byte((byte)'"');
        return this;
    }

    private void LabelStart(string name)
    {
        Byte(_firstLabel ? (byte)'{' : (byte)',');
        _firstLabel = false;
        Ascii(name);
        Ascii("=\"");
    }

    public override void Value(long value)
    {
        CloseLabels();
        Number(value);
        Byte((byte)'\n');
    }

    public override void Value(double value)
    {
        CloseLabels();
        if (double.IsPositiveInfinity(value)) Ascii("+Inf");
        else if (double.IsNegativeInfinity(value)) Ascii("-Inf");
        else if (double.IsNaN(value)) Ascii("NaN");
        else
        {
            Span<byte> span = output.GetSpan(32);
            if (!Utf8Formatter.TryFormat(value, span, out int written))
                throw new InvalidOperationException("number did not fit");
            output.Advance(written);
        }
        Byte((byte)'\n');
    }

    private void CloseLabels()
    {
        if (!_firstLabel)
            Byte((byte)'}');
        Byte((byte)' ');
    }

    private void Number(long value)
    {
        Span<byte> span = output.GetSpan(20);
        Utf8Formatter.TryFormat(value, span, out int written);
        output.Advance(written);
    }

    private void Byte(byte b)
    {
        output.GetSpan(1)[0] = b;
        output.Advance(1);
    }

    private void Ascii(string s)
    {
        Span<byte> span = output.GetSpan(s.Length);
        int n = Encoding.ASCII.GetBytes(s, span);
        output.Advance(n);
    }

    /// <summary>UTF-8 with \\, \n (and in label values \") escaped, as the format requires.</summary>
    private void Escaped(string s, bool escapeQuotes)
    {
        int start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c is not ('\\' or '\n' or '"') || (c == '"' && !escapeQuotes))
                continue;
            Utf8(s.AsSpan(start, i - start));
            Ascii(c switch { '\\' => "\\\\", '\n' => "\\n", _ => "\\\"" });
            start = i + 1;
        }
        Utf8(s.AsSpan(start));
    }

    private void Utf8(ReadOnlySpan<char> chars)
    {
        if (chars.IsEmpty)
            return;
        Span<byte> span = output.GetSpan(Encoding.UTF8.GetMaxByteCount(chars.Length));
        output.Advance(Encoding.UTF8.GetBytes(chars, span));
    }
}
