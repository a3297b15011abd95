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

    /// <summary>The format file text of each catalogued tracepoint this kernel has, by "system:name" (what a flight
    /// recording carries, so it decodes anywhere).</summary>
    public Dictionary<string, string> Texts()
    {
        var texts = new Dictionary<string, string>();
        foreach (Tracepoint tp in TracepointCatalog.All)
        {
            string path = Path.Combine(Root, "events", tp.System, tp.Name, "format");
            if (File.Exists(path))
                texts[tp.FullName] = File.ReadAllText(path);
        }
        return texts;
    }
}
