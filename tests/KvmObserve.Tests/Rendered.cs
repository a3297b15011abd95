using System.Buffers;
using System.Text;
using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Exposition;

namespace KvmObserve.Tests;

/// <summary>What /metrics would say of an aggregator fed by the tracefs page path with these decoders.</summary>
internal static class Rendered
{
    public static string Text(Aggregator aggregator, KvmEventDecoders decoders)
    {
        var buffer = new ArrayBufferWriter<byte>();
        MetricsRenderer.Render(buffer, new ExpositionContext
        {
            Aggregator = aggregator,
            SourceName = "tracefs",
            Tracepoints = [],
            ExitReasons = decoders.ExitReasons,
            UserspaceExitReasons = decoders.UserspaceExitReasons,
        });
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }
}
