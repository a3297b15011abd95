using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events.Decoders;

/// <summary>The kvmmmu events that are counted per VM and nothing more: the record must only hold its
/// common fields, so one decoder serves them all.</summary>
public readonly struct MmuCountDecoder
{
    private MmuCountDecoder(EventFormat format)
    {
        MinLength = 0;
        foreach (FieldFormat f in format.Fields)
        {
            if (f.Name.StartsWith("common_", StringComparison.Ordinal))
                MinLength = Math.Max(MinLength, f.End);
        }
    }

    public int MinLength { get; }

    public static MmuCountDecoder Create(EventFormat format) => new(format);
}
