namespace KvmObserve.Decoding.Format;

/// <summary>A parsed events/SYSTEM/EVENT/format file.</summary>
public sealed class EventFormat
{
    public EventFormat(string system, string name, int id, IReadOnlyList<FieldFormat> fields, string printFormat)
    {
        System = system;
        Name = name;
        Id = id;
        Fields = fields;
        PrintFormat = printFormat;
    }

    public string System { get; }
    public string Name { get; }
    public int Id { get; }
    public IReadOnlyList<FieldFormat> Fields { get; }
    public string PrintFormat { get; }
    public string FullName => $"{System}:{Name}";

    public FieldFormat? Find(string fieldName)
    {
        foreach (FieldFormat f in Fields)
        {
            if (f.Name == fieldName)
                return f;
        }
        return null;
    }

    public override string ToString() => $"{FullName} (id {Id}, {Fields.Count} fields)";
}
