using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Sources.Tracefs;

/// <summary>Reads the layout files of a tracefs mount: header_page, header_event and each event's format.</summary>
public sealed class TracefsFormats(string tracefsRoot)
{
    public string Root { get; } = tracefsRoot;

    public PageHeaderFormat PageHeader() =>
        PageHeaderFormat.Parse(File.ReadAllText(Path.Combine(Root, "events", "header_page")));

    /// <summary>Null when header_event matches what the page reader implements, else the difference.</summary>
    public string? CheckEventHeader() => EventHeaderFormat.Check(File.ReadAllText(Path.Combine(Root, "events", "header_event")));

    /// <summary>The parsed format, or null when this kernel has no such event.</summary>
    public EventFormat? Event(Tracepoint tracepoint)
    {
        string path = Path.Combine(Root, "events", tracepoint.System, tracepoint.Name, "format");
        return File.Exists(path) ? EventFormatParser.Parse(tracepoint.System, File.ReadAllText(path)) : null;
    }

    public KvmEventDecoders Decoders() => new(Event);
}
