using System.Buffers.Binary;
using System.Text;

namespace KvmObserve.Fuzz;

/// <summary>
/// Deterministic mutations of real inputs, in the manner of AFL's havoc stage: bit flips, boundary values written as
/// 1/2/4/8-byte integers, cut, duplicated and inserted ranges, truncation, splicing with another seed, and for text
/// the tokens its parser keys on. The same seed gives the same inputs, so a crash found in CI reproduces anywhere.
/// </summary>
public sealed class Mutator(ulong seed, int maxLength = 1 << 16)
{
    private ulong _state = seed == 0 ? 0x9e3779b97f4a7c15 : seed;

    private static readonly long[] Boundaries =
    [
        0, 1, -1, 2, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 4095, 4096, 4097, 32767, 32768, 65535, 65536,
        int.MaxValue, int.MinValue, int.MaxValue - 7, uint.MaxValue, (1L << 30) - 1, 1L << 30, 1L << 31, long.MaxValue, long.MinValue,
    ];

    public ulong Next()
    {
        // xorshift64*: fast, and its whole state is the one seed.
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        return _state * 0x2545F4914F6CDD1DUL;
    }

    public int Below(int n) => n <= 0 ? 0 : (int)(Next() % (ulong)n);

    /// <summary>One to eight stacked mutations of <paramref name="input"/>; <paramref name="tokens"/> are inserted
    /// and swapped in as whole words (empty for binary inputs).</summary>
    public byte[] Mutate(byte[] input, IReadOnlyList<byte[]> corpus, IReadOnlyList<string> tokens)
    {
        var data = new List<byte>(input);
        int rounds = 1 << Below(4);
        for (int r = 0; r < rounds; r++)
        {
            int op = Below(tokens.Count > 0 ? 13 : 10);
            int at = Below(data.Count + 1);
            switch (op)
            {
                case 0 when data.Count > 0:
                    at = Below(data.Count);
                    data[at] ^= (byte)(1 << Below(8));
                    break;
                case 1 when data.Count > 0:
                    data[Below(data.Count)] = (byte)Next();
                    break;
                case 2:
                case 3:
                    WriteBoundary(data, op == 3);
                    break;
                case 4 when data.Count > 0:
                    {
                        at = Below(data.Count);
                        int n = 1 + Below(Math.Min(64, data.Count - at));
                        data.RemoveRange(at, n);
                        break;
                    }
                case 5 when data.Count > 0:
                    {
                        int from = Below(data.Count);
                        int n = 1 + Below(Math.Min(256, data.Count - from));
                        data.InsertRange(at, data.GetRange(from, n));
                        break;
                    }
                case 6:
                    {
                        int n = 1 + Below(32);
                        for (int i = 0; i < n; i++)
                            data.Insert(Math.Min(at, data.Count), (byte)Next());
                        break;
                    }
                case 7 when data.Count > 0:
                    data.RemoveRange(at = Below(data.Count), data.Count - at);
                    break;
                case 8 when corpus.Count > 0:
                    {
                        byte[] other = corpus[Below(corpus.Count)];
                        if (other.Length == 0)
                            break;
                        int from = Below(other.Length);
                        int n = 1 + Below(Math.Min(1024, other.Length - from));
                        if (Below(2) == 0 && at + n <= data.Count)
                            for (int i = 0; i < n; i++) data[at + i] = other[from + i];
                        else
                            data.InsertRange(at, other.AsSpan(from, n).ToArray());
                        break;
                    }
                case 9 when data.Count > 0:
                    {
                        // Aligned 32-bit boundary: lengths and offsets in binary formats are mostly 4- or 8-aligned.
                        at = Below(data.Count / 4 + 1) * 4;
                        if (at + 4 <= data.Count)
                            Write(data, at, Boundaries[Below(Boundaries.Length)], 4);
                        break;
                    }
                case 10:
                case 11:
                    {
                        byte[] token = Encoding.UTF8.GetBytes(tokens[Below(tokens.Count)]);
                        int repeat = Below(8) == 0 ? 1 + Below(200) : 1;
                        for (int i = 0; i < repeat; i++)
                            data.InsertRange(Math.Min(at, data.Count), token);
                        break;
                    }
                case 12:
                    ReplaceNumber(data);
                    break;
            }
        }
        if (data.Count > maxLength)
            data.RemoveRange(maxLength, data.Count - maxLength);
        return data.ToArray();
    }

    private void WriteBoundary(List<byte> data, bool bigWord)
    {
        int width = bigWord ? (Below(2) == 0 ? 4 : 8) : (Below(2) == 0 ? 1 : 2);
        if (data.Count < width)
            return;
        long value = Boundaries[Below(Boundaries.Length)];
        if (Below(4) == 0)
            value += Below(17) - 8;
        Write(data, Below(data.Count - width + 1), value, width);
    }

    private static void Write(List<byte> data, int at, long value, int width)
    {
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, value);
        for (int i = 0; i < width; i++)
            data[at + i] = bytes[i];
    }

    /// <summary>Swaps one run of ASCII digits for a boundary number, as text ("offset:12;" → "offset:-2147483648;").</summary>
    private void ReplaceNumber(List<byte> data)
    {
        if (data.Count == 0)
            return;
        int start = Below(data.Count);
        while (start < data.Count && !char.IsAsciiDigit((char)data[start]))
            start++;
        if (start >= data.Count)
            return;
        int end = start;
        while (end < data.Count && char.IsAsciiDigit((char)data[end]))
            end++;
        long value = Boundaries[Below(Boundaries.Length)];
        byte[] text = Encoding.ASCII.GetBytes(Below(3) == 0 ? $"0x{value:x}" : value.ToString(System.Globalization.CultureInfo.InvariantCulture));
        data.RemoveRange(start, end - start);
        data.InsertRange(start, text);
    }
}
