using System.Buffers;
using System.Runtime.CompilerServices;
using KvmObserve.Decoding.Format;
using KvmObserve.Decoding.RingBuffer;

namespace KvmObserve.Sources.Tracefs;

/// <summary>
/// Cuts a byte stream of whole ring-buffer pages (what trace_pipe_raw reads give) into pages, Kestrel style:
/// <c>while (TryReadPage(ref buffer, ...))</c>, a single-span fast path and a copying path for a page that a pipe
/// split across segments.
/// </summary>
public static class PageStreamParser
{
    /// <summary>Parses every complete page in <paramref name="buffer"/> and slices them off; a partial page stays.</summary>
    public static int ParsePages<THandler>(ref ReadOnlySequence<byte> buffer, in PageHeaderFormat layout, ref THandler handler)
        where THandler : struct, IRingBufferRecordHandler
    {
        int pages = 0;
        while (TryReadPage(ref buffer, layout, ref handler))
            pages++;
        return pages;
    }

    private static bool TryReadPage<THandler>(ref ReadOnlySequence<byte> buffer, in PageHeaderFormat layout, ref THandler handler)
        where THandler : struct, IRingBufferRecordHandler
    {
        int pageSize = layout.PageSize;
        if (buffer.Length < pageSize)
            return false;
        ReadOnlySequence<byte> page = buffer.Slice(0, pageSize);
        if (page.IsSingleSegment)
            RingBufferPageReader.ReadPage(page.FirstSpan, layout, ref handler);
        else
            ReadSplitPage(page, layout, ref handler);
        buffer = buffer.Slice(page.End);
        return true;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ReadSplitPage<THandler>(in ReadOnlySequence<byte> page, in PageHeaderFormat layout, ref THandler handler)
        where THandler : struct, IRingBufferRecordHandler
    {
        byte[] scratch = ArrayPool<byte>.Shared.Rent((int)page.Length);
        try
        {
            page.CopyTo(scratch);
            RingBufferPageReader.ReadPage(scratch.AsSpan(0, (int)page.Length), layout, ref handler);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }
}
