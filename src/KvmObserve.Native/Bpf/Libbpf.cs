using System.Runtime.InteropServices;

namespace KvmObserve.Native.Bpf;

/// <summary>
/// P/Invoke into Debian's libbpf1 (libbpf.so.1, API 1.x): objects, maps, programs and links are opaque pointers.
/// In libbpf 1.x, calls that return a pointer give NULL and set errno on failure; calls that return int give a
/// negative errno.
/// </summary>
internal static unsafe partial class Libbpf
{
    internal const string Name = "libbpf.so.1";

    [LibraryImport(Name, EntryPoint = "bpf_object__open_file", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static partial nint ObjectOpenFile(string path, nint options);

    [LibraryImport(Name, EntryPoint = "bpf_object__load")]
    internal static partial int ObjectLoad(nint obj);

    [LibraryImport(Name, EntryPoint = "bpf_object__close")]
    internal static partial void ObjectClose(nint obj);

    [LibraryImport(Name, EntryPoint = "bpf_object__next_map")]
    internal static partial nint ObjectNextMap(nint obj, nint previous);

    [LibraryImport(Name, EntryPoint = "bpf_object__next_program")]
    internal static partial nint ObjectNextProgram(nint obj, nint previous);

    [LibraryImport(Name, EntryPoint = "bpf_map__name")]
    internal static partial nint MapName(nint map);

    [LibraryImport(Name, EntryPoint = "bpf_map__fd")]
    internal static partial int MapFd(nint map);

    [LibraryImport(Name, EntryPoint = "bpf_map__set_max_entries")]
    internal static partial int MapSetMaxEntries(nint map, uint maxEntries);

    [LibraryImport(Name, EntryPoint = "bpf_map__set_initial_value")]
    internal static partial int MapSetInitialValue(nint map, void* data, nuint size);

    [LibraryImport(Name, EntryPoint = "bpf_map__initial_value")]
    internal static partial nint MapInitialValue(nint map, out nuint size);

    [LibraryImport(Name, EntryPoint = "bpf_program__name")]
    internal static partial nint ProgramName(nint program);

    [LibraryImport(Name, EntryPoint = "bpf_program__fd")]
    internal static partial int ProgramFd(nint program);

    /// <summary>struct bpf_tracepoint_opts { size_t sz; __u64 bpf_cookie; } (libbpf.h, 16 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct TracepointOptions
    {
        public nuint Size;
        public ulong Cookie;
    }

    [LibraryImport(Name, EntryPoint = "bpf_program__attach_tracepoint_opts", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static partial nint ProgramAttachTracepoint(nint program, string category, string name, TracepointOptions* options);

    [LibraryImport(Name, EntryPoint = "bpf_link__destroy")]
    internal static partial int LinkDestroy(nint link);

    [LibraryImport(Name, EntryPoint = "bpf_link__fd")]
    internal static partial int LinkFd(nint link);

    [LibraryImport(Name, EntryPoint = "libbpf_num_possible_cpus")]
    internal static partial int NumPossibleCpus();

    [LibraryImport(Name, EntryPoint = "bpf_map_lookup_batch")]
    internal static partial int MapLookupBatch(int fd, void* inBatch, void* outBatch, void* keys, void* values, uint* count, nint options);

    [LibraryImport(Name, EntryPoint = "bpf_map_get_next_key")]
    internal static partial int MapGetNextKey(int fd, void* key, void* nextKey);

    [LibraryImport(Name, EntryPoint = "bpf_map_lookup_elem")]
    internal static partial int MapLookup(int fd, void* key, void* value);

    [LibraryImport(Name, EntryPoint = "bpf_map_update_elem")]
    internal static partial int MapUpdate(int fd, void* key, void* value, ulong flags);

    [LibraryImport(Name, EntryPoint = "bpf_map_delete_elem")]
    internal static partial int MapDelete(int fd, void* key);

    [LibraryImport(Name, EntryPoint = "bpf_obj_get_info_by_fd")]
    internal static partial int ObjectInfo(int fd, void* info, uint* infoLength);

    [LibraryImport(Name, EntryPoint = "bpf_enable_stats")]
    internal static partial int EnableStats(int type);

    [LibraryImport(Name, EntryPoint = "libbpf_set_print")]
    internal static partial nint SetPrint(delegate* unmanaged<int, nint, nint, int> print);

    [LibraryImport("libc", EntryPoint = "vsnprintf")]
    internal static partial int VsnPrintf(byte* buffer, nuint size, nint format, nint arguments);
}
