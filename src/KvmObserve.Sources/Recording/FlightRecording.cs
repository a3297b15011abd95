using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace KvmObserve.Sources.Recording;

/// <summary>
/// The flight-recording file: what a storm looked like, as the raw tracepoint records the kernel gave, with everything
/// needed to decode and attribute them on another machine or kernel. README ("Flight recordings") documents it.
/// <code>
/// file:    | magic "KVMOFR01" | u32 header length | header: UTF-8 JSON | record ... |
/// record:  | u32 length | u16 cpu | u16 kind | u64 timestamp ns (CLOCK_MONOTONIC of the recording host) |
///          | payload[length] | zero padding to 8 bytes |
/// kind 0:  a tracepoint record as the ring buffer held it (common_type first); decoded with header.formats
/// kind 1:  a schedstat reading of a VM thread: | u32 tid | u32 0 | u64 run ns | u64 run_delay ns |
/// </code>
/// Records are in timestamp order. Little-endian throughout.
/// </summary>
public static class FlightRecording
{
    public static ReadOnlySpan<byte> Magic => "KVMOFR01"u8;
    public const int RecordHeaderSize = 16;
    public const ushort TracepointKind = 0;
    public const ushort SchedstatKind = 1;
    public const int SchedstatPayloadSize = 24;

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public static void Write(Stream output, RecordingHeader header, IEnumerable<RecordedRecord> records)
    {
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(header, Json);
        Span<byte> head = stackalloc byte[RecordHeaderSize];
        output.Write(Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(head, (uint)json.Length);
        output.Write(head[..4]);
        output.Write(json);
        Span<byte> pad = stackalloc byte[8];
        foreach (RecordedRecord r in records)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(head, (uint)r.Payload.Length);
            BinaryPrimitives.WriteUInt16LittleEndian(head[4..], r.Cpu);
            BinaryPrimitives.WriteUInt16LittleEndian(head[6..], r.Kind);
            BinaryPrimitives.WriteUInt64LittleEndian(head[8..], r.Timestamp);
            output.Write(head);
            output.Write(r.Payload.Span);
            output.Write(pad[..((8 - r.Payload.Length % 8) % 8)]);
        }
    }

    /// <summary>Reads a whole recording. A file that is not one, or is cut short, is a FormatException naming the
    /// offset.</summary>
    public static (RecordingHeader Header, List<RecordedRecord> Records) Read(byte[] bytes)
    {
        ReadOnlySpan<byte> file = bytes;
        if (file.Length < Magic.Length + 4 || !file[..Magic.Length].SequenceEqual(Magic))
            throw new FormatException("not a KvmObserve flight recording (no KVMOFR01 magic at offset 0x0)");
        uint headerLength = BinaryPrimitives.ReadUInt32LittleEndian(file[Magic.Length..]);
        int at = Magic.Length + 4;
        if (headerLength > (uint)(file.Length - at))
            throw new FormatException($"header of {headerLength} bytes runs past the end of the file at offset 0x{at:x}");
        RecordingHeader header;
        try
        {
            header = JsonSerializer.Deserialize<RecordingHeader>(file.Slice(at, (int)headerLength), Json)
                ?? throw new FormatException("empty header");
        }
        catch (JsonException e)
        {
            throw new FormatException($"header at offset 0x{at:x} is not valid JSON: {e.Message}");
        }
        if (header.Version != 1)
            throw new FormatException($"recording version {header.Version}; this agent reads version 1");
        CheckHeader(header, at);
        at += (int)headerLength;
        var records = new List<RecordedRecord>();
        while (at < file.Length)
        {
            if (at + RecordHeaderSize > file.Length)
                throw new FormatException($"record header cut short at offset 0x{at:x}");
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(file[at..]);
            ushort cpu = BinaryPrimitives.ReadUInt16LittleEndian(file[(at + 4)..]);
            ushort kind = BinaryPrimitives.ReadUInt16LittleEndian(file[(at + 6)..]);
            ulong ts = BinaryPrimitives.ReadUInt64LittleEndian(file[(at + 8)..]);
            long padded = (length + 7L) & ~7L;
            if (padded > file.Length - at - RecordHeaderSize)
                throw new FormatException($"record of {length} bytes at offset 0x{at:x} runs past the end of the file");
            records.Add(new RecordedRecord(ts, cpu, kind, bytes.AsMemory(at + RecordHeaderSize, (int)length)));
            at += RecordHeaderSize + (int)padded;
        }
        return (header, records);
    }

    /// <summary>JSON leaves any member out or null; the pipeline needs every thread named.</summary>
    private static void CheckHeader(RecordingHeader header, int at)
    {
        if (header.Formats is null || header.Formats.Any(f => f.Value is null))
            throw new FormatException($"header at offset 0x{at:x}: 'formats' must map each tracepoint to its format file");
        if (header.Threads is null)
            throw new FormatException($"header at offset 0x{at:x}: 'threads' must be a list");
        foreach (RecordedThread? t in header.Threads)
        {
            if (t is null || t.Vm is null || t.Vmm is null || t.Uuid is null)
                throw new FormatException($"header at offset 0x{at:x}: thread {t?.Tid.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "null"} needs vm, vmm and uuid");
        }
        header.Host ??= "";
        header.Vm ??= "";
        header.Source ??= "";
        header.Reason ??= "";
        header.Kernel ??= "";
        header.Created ??= "";
    }

    public static byte[] SchedstatPayload(int tid, ulong runNs, ulong waitNs)
    {
        var payload = new byte[SchedstatPayloadSize];
        BinaryPrimitives.WriteInt32LittleEndian(payload, tid);
        BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(8), runNs);
        BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(16), waitNs);
        return payload;
    }

    public static (int Tid, ulong RunNs, ulong WaitNs) ParseSchedstat(ReadOnlySpan<byte> payload) =>
        payload.Length < SchedstatPayloadSize
            ? throw new FormatException($"schedstat record of {payload.Length} bytes, not {SchedstatPayloadSize}")
            : (BinaryPrimitives.ReadInt32LittleEndian(payload), BinaryPrimitives.ReadUInt64LittleEndian(payload[8..]),
                BinaryPrimitives.ReadUInt64LittleEndian(payload[16..]));
}

/// <summary>One record of a recording (see <see cref="FlightRecording"/>); read ones are slices of the file's bytes.</summary>
public readonly record struct RecordedRecord(ulong Timestamp, ushort Cpu, ushort Kind, ReadOnlyMemory<byte> Payload);

/// <summary>The JSON header of a recording.</summary>
public sealed class RecordingHeader
{
    public int Version { get; set; } = 1;
    public string Created { get; set; } = "";
    public string Host { get; set; } = "";
    public string Kernel { get; set; } = "";
    /// <summary>The source that read the records (tracefs, perf).</summary>
    public string Source { get; set; } = "";
    /// <summary>Why it was recorded ("exit storm").</summary>
    public string Reason { get; set; } = "";
    public string Vm { get; set; } = "";
    /// <summary>Time range covered, in the recording host's CLOCK_MONOTONIC ns.</summary>
    public ulong FromNs { get; set; }
    public ulong ToNs { get; set; }
    public long Records { get; set; }
    /// <summary>False when the recorder's ring had already dropped records of the range's start.</summary>
    public bool Complete { get; set; } = true;
    /// <summary>The format file of each tracepoint, by "system:name", as the recording kernel had it.</summary>
    public Dictionary<string, string> Formats { get; set; } = new();
    /// <summary>The VM threads the records name.</summary>
    public List<RecordedThread> Threads { get; set; } = new();
}

/// <summary>A thread of a recorded VM (vcpu -1: a VMM thread that is not a vCPU).</summary>
public sealed record RecordedThread(int Tid, int Pid, string Vm, string Vmm, string Uuid, int Vcpu);
