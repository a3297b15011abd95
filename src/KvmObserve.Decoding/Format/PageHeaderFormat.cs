namespace KvmObserve.Decoding.Format;

/// <summary>
/// Layout of a ring-buffer data page, from events/header_page:
/// <code>
/// 	field: u64 timestamp;	offset:0;	size:8;	signed:0;
/// 	field: local_t commit;	offset:8;	size:8;	signed:1;
/// 	field: int overwrite;	offset:8;	size:1;	signed:1;
/// 	field: char data;	offset:16;	size:4080;	signed:0;
/// </code>
/// The page (sub-buffer) size is data offset + data size.
/// </summary>
public readonly record struct PageHeaderFormat(int TimestampOffset, int CommitOffset, int CommitSize, int DataOffset, int DataSize)
{
    public int PageSize => DataOffset + DataSize;

    /// <summary>The layout of x86-64 kernels with 4 KiB sub-buffers; tests and benchmarks encode pages in it.</summary>
    public static PageHeaderFormat Default64 { get; } = new(0, 8, 8, 16, 4080);

    public static PageHeaderFormat Parse(string text)
    {
        FieldFormat? timestamp = null, commit = null, data = null;
        int index = 0;
        foreach (string raw in text.Split('\n'))
        {
            string line = raw.Trim();
            if (line.StartsWith("field:", StringComparison.Ordinal))
            {
                FieldFormat f = EventFormatParser.ParseField(line, index);
                switch (f.Name)
                {
                    case "timestamp": timestamp = f; break;
                    case "commit": commit = f; break;
                    case "data": data = f; break;
                }
            }
            index++;
        }
        if (timestamp is null || commit is null || data is null)
            throw new FormatException("header_page: expected fields timestamp, commit and data");
        if (timestamp.Value.Size != 8 || commit.Value.Size is not (4 or 8))
            throw new FormatException($"header_page: unsupported sizes (timestamp {timestamp.Value.Size}, commit {commit.Value.Size})");
        if (timestamp.Value.End > data.Value.Offset || commit.Value.End > data.Value.Offset)
            throw new FormatException($"header_page: timestamp and commit must come before data at offset {data.Value.Offset}");
        return new PageHeaderFormat(timestamp.Value.Offset, commit.Value.Offset, commit.Value.Size, data.Value.Offset, data.Value.Size);
    }
}
