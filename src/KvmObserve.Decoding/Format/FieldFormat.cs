namespace KvmObserve.Decoding.Format;

/// <summary>One "field:" line of an event format file: where the field sits in the record and how wide it is.</summary>
public readonly record struct FieldFormat(string Name, string Declaration, int Offset, int Size, bool Signed)
{
    public int End => Offset + Size;
}
