using System.Buffers;
using System.Text;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Series;
using KvmObserve.Exposition;

namespace KvmObserve.Tests;

public class ExpositionTests
{
    private static string Write(Action<PrometheusTextWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>();
        write(new PrometheusTextWriter(buffer));
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    [Fact]
    public void Label_values_and_help_are_escaped()
    {
        string text = Write(w =>
        {
            w.Family("kvm_vm_info", "gauge", "A \"VM\"\\ on two\nlines");
            w.Begin("kvm_vm_info").Label("vm", "we\"ird\\name\nx").Label("pid", 12).Value(1L);
        });
        Assert.Equal(
            "# HELP kvm_vm_info A \"VM\"\\\\ on two\\nlines\n# TYPE kvm_vm_info gauge\n" +
            "kvm_vm_info{vm=\"we\\\"ird\\\\name\\nx\",pid=\"12\"} 1\n", text);
    }

    [Fact]
    public void Non_ascii_label_values_are_utf8_and_numbers_are_plain()
    {
        string text = Write(w =>
        {
            w.Begin("x").Label("vm", "größe-Ω").Value(0.25);
            w.Begin("y").Value(double.PositiveInfinity);
        });
        Assert.Equal("x{vm=\"größe-Ω\"} 0.25\ny +Inf\n", text);
    }

    [Fact]
    public void Labels_of_each_family_are_spelled_as_documented()
    {
        Assert.Equal("0x3f8", LabelValues.Hex(0x3f8));
        Assert.Equal("out", LabelValues.InOut(1));
        Assert.Equal("in", LabelValues.InOut(0));
        Assert.Equal("other", LabelValues.InOut(MetricFamilies.OtherDirection)); // a counting source's default
        Assert.Equal("write", LabelValues.ReadWrite(1));
        Assert.Equal("other", LabelValues.ReadWrite(MetricFamilies.OtherDirection));
        Assert.Equal("unsatisfied_read", LabelValues.MmioDirection(0));
        Assert.Equal("other", LabelValues.MmioDirection(MetricFamilies.OtherDirection));
        Assert.Equal("GP", LabelValues.Vector(13));
        Assert.Equal("42", LabelValues.Vector(42));
        Assert.Equal("not_present_write", LabelValues.PageFaultKind((uint)AggregatingSink.ClassifyFault(0x2)));
        Assert.Equal("protection_exec", LabelValues.PageFaultKind((uint)AggregatingSink.ClassifyFault(0x11)));
        Assert.Equal("reserved_bits", LabelValues.PageFaultKind((uint)AggregatingSink.ClassifyFault(0x9)));
    }
}
