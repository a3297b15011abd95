namespace KvmObserve.Decoding.Format;

/// <summary>
/// Checks events/header_event against the compressed entry header this reader implements:
/// <code>
/// # compressed entry header
/// 	type_len    :    5 bits
/// 	time_delta  :   27 bits
/// 	array       :   32 bits
///
/// 	padding     : type == 29
/// 	time_extend : type == 30
/// 	time_stamp : type == 31
/// 	data max type_len  == 28
/// </code>
/// </summary>
public static class EventHeaderFormat
{
    public const int PaddingType = 29, TimeExtendType = 30, TimeStampType = 31, DataMaxTypeLen = 28;

    /// <summary>Returns null when the header matches, else why it does not.</summary>
    public static string? Check(string text)
    {
        string compact = string.Join(' ', text.Split((char[])[' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries));
        string[] expected =
        [
            "type_len : 5 bits", "time_delta : 27 bits", $"padding : type == {PaddingType}",
            $"time_extend : type == {TimeExtendType}", $"time_stamp : type == {TimeStampType}",
            $"data max type_len == {DataMaxTypeLen}",
        ];
        foreach (string e in expected)
        {
            if (!compact.Contains(e, StringComparison.Ordinal))
                return $"header_event lacks '{e}'";
        }
        return null;
    }
}
