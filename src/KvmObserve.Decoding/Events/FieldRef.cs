using System.Buffers.Binary;
using KvmObserve.Decoding.Format;

namespace KvmObserve.Decoding.Events;

/// <summary>Where one field sits in a record, taken from the format file; reads it from a payload.</summary>
public readonly struct FieldRef
{
    public FieldRef(int offset, int size, bool signed)
    {
        Offset = offset;
        Size = size;
        Signed = signed;
    }

    public int Offset { get; }
    public int Size { get; }
    public bool Signed { get; }
    public bool IsPresent => Size != 0;
    public int End => Offset + Size;

    public static FieldRef Absent => default;

    /// <summary>The named integer field; throws <see cref="FormatMismatchException"/> when the format lacks it.</summary>
    public static FieldRef Required(EventFormat format, string name)
    {
        FieldFormat f = format.Find(name) ?? throw new FormatMismatchException(format, $"has no field '{name}'");
        if (f.Size is not (1 or 2 or 4 or 8))
            throw new FormatMismatchException(format, $"field '{name}' has size {f.Size}, expected 1, 2, 4 or 8");
        return new FieldRef(f.Offset, f.Size, f.Signed);
    }

    public static FieldRef Optional(EventFormat format, string name) =>
        format.Find(name) is { Size: 1 or 2 or 4 or 8 } f ? new FieldRef(f.Offset, f.Size, f.Signed) : Absent;

    /// <summary>The field zero-extended (or, for a signed field, sign-extended) to 64 bits; 0 when absent.</summary>
    public ulong Read(ReadOnlySpan<byte> payload)
    {
        ReadOnlySpan<byte> p = payload.Slice(Offset);
        return Size switch
        {
            1 => Signed ? (ulong)(sbyte)p[0] : p[0],
            2 => Signed ? (ulong)BinaryPrimitives.ReadInt16LittleEndian(p) : BinaryPrimitives.ReadUInt16LittleEndian(p),
            4 => Signed ? (ulong)BinaryPrimitives.ReadInt32LittleEndian(p) : BinaryPrimitives.ReadUInt32LittleEndian(p),
            8 => BinaryPrimitives.ReadUInt64LittleEndian(p),
            _ => 0,
        };
    }

    public uint ReadUInt32(ReadOnlySpan<byte> payload) => (uint)Read(payload);

    public bool ReadBool(ReadOnlySpan<byte> payload) => Read(payload) != 0;

    public static int EndOf(params ReadOnlySpan<FieldRef> fields)
    {
        int end = 0;
        foreach (FieldRef f in fields)
            end = Math.Max(end, f.End);
        return end;
    }
}

/// <summary>The kernel's format for an event lacks what its decoder needs.</summary>
public sealed class FormatMismatchException(EventFormat format, string problem)
    : Exception($"{format.FullName} {problem}");
