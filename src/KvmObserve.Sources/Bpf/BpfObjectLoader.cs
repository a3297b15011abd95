using KvmObserve.Aggregation;
using KvmObserve.Decoding.Events;
using KvmObserve.Decoding.Format;
using KvmObserve.Native.Bpf;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Sources.Bpf;

/// <summary>What the bpf source is told beyond <see cref="SourceOptions"/>.</summary>
public sealed class BpfOptions
{
    /// <summary>The compiled probes/kvmobserve.bpf.c; by default the one built next to the agent.</summary>
    public string ObjectPath { get; set; } = DefaultObjectPath;

    /// <summary>Entries of the counts map (each a (pid, thread, vCPU, family, key) series).</summary>
    public uint MapEntries { get; set; } = 32_768;

    /// <summary>Keep the kernel's BPF run-time accounting on while the source runs (BPF_ENABLE_STATS).</summary>
    public bool Stats { get; set; }

    /// <summary>Count only these processes (VMM pids); empty: every process.</summary>
    public IReadOnlyList<int> Pids { get; set; } = [];

    public static string DefaultObjectPath => Path.Combine(AppContext.BaseDirectory, "probes", "kvmobserve.bpf.o");
}

/// <summary>The compiled probes/kvmobserve.bpf.o, configured from this kernel's format files and loaded (verified),
/// not attached: for the bpf source, and for the checks that ask whether it can run here.</summary>
public static class BpfObjectLoader
{
    /// <summary>A field of an event of this kernel, by the event's kind and the field's name, from its format file
    /// (each read once); null where the event or the field does not exist.</summary>
    public static Func<KvmEventKind, string, FieldFormat?> FieldsOf(TracefsFormats formats)
    {
        var byKind = new Dictionary<KvmEventKind, EventFormat?>();
        return (kind, name) =>
        {
            if (!byKind.TryGetValue(kind, out EventFormat? format))
            {
                Tracepoint? tp = TracepointCatalog.All.FirstOrDefault(t => t.Kind == kind);
                byKind[kind] = format = tp is null ? null : formats.Event(tp);
            }
            return format?.Find(name);
        };
    }

    /// <summary>Opens the object, sets its globals from the formats and loads it (maps and programs, not attached).</summary>
    public static BpfObject Load(BpfOptions bpf, Func<KvmEventKind, string, FieldFormat?> fieldOf, uint impliedIsa)
    {
        if (!File.Exists(bpf.ObjectPath))
            throw new BpfException($"{bpf.ObjectPath} is missing: the BPF programs are built with the agent only where clang is installed (apt-get install clang libbpf-dev, then build again)");
        BpfObject obj = BpfObject.Open(bpf.ObjectPath);
        try
        {
            uint filter = bpf.Pids.Count > 0 ? 1u : 0u;
            obj.SetReadOnlyData(BpfLayout.Config(fieldOf, filter, impliedIsa, ThreadStates.HorizonNs));
            obj.SetMaxEntries("kvmo_counts", bpf.MapEntries);
            obj.Load();
            if (bpf.Pids.Count > 0)
            {
                var pids = new BpfMap(obj.MapFd("kvmo_pids"), 4, 1, 1, perCpu: false);
                foreach (int pid in bpf.Pids)
                    pids.Update(BitConverter.GetBytes(pid), [1]);
            }
            return obj;
        }
        catch
        {
            obj.Dispose();
            throw;
        }
    }

    /// <summary>Why the bpf source cannot run here, or null: libbpf, the built object, and the kernel's verdict on
    /// loading it (loaded and released at once; nothing is attached).</summary>
    public static string? Probe(string tracefsRoot, BpfOptions? bpf = null)
    {
        bpf ??= new BpfOptions();
        try
        {
            _ = BpfMap.PossibleCpus;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException)
        {
            return $"libbpf.so.1 cannot be loaded (apt-get install libbpf1): {e.GetBaseException().Message}";
        }
        try
        {
            var formats = new TracefsFormats(tracefsRoot);
            using BpfObject obj = Load(bpf, FieldsOf(formats), formats.Decoders().ExitReasons.ImpliedIsa);
            return null;
        }
        catch (BpfException e)
        {
            return e.Errno == 1 ? $"{e.Message} (needs CAP_BPF and CAP_PERFMON, or root)" : e.Message;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return e.Message;
        }
    }
}
