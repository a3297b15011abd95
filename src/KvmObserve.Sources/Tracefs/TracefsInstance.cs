using System.Globalization;

namespace KvmObserve.Sources.Tracefs;

/// <summary>
/// A private tracefs instance (instances/kvmobserve-PID): its own ring buffers and event switches, so the agent never
/// touches the global buffer or another tool's instance. Removed on dispose; instances left behind by a process that
/// died (SIGKILL, crash) are removed by <see cref="RemoveStale"/> at the next start.
/// </summary>
public sealed class TracefsInstance : IDisposable
{
    public const string NamePrefix = "kvmobserve-";

    private readonly List<string> _enabled = new();
    private bool _disposed;

    private TracefsInstance(string tracefsRoot, string name)
    {
        TracefsRoot = tracefsRoot;
        Name = name;
        Path = System.IO.Path.Combine(tracefsRoot, "instances", name);
    }

    public string TracefsRoot { get; }
    public string Name { get; }
    public string Path { get; }

    /// <summary>Creates instances/kvmobserve-PID[-suffix].</summary>
    public static TracefsInstance Create(string tracefsRoot, string? suffix = null)
    {
        string name = NamePrefix + Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + (suffix is null ? "" : "-" + suffix);
        var instance = new TracefsInstance(tracefsRoot, name);
        if (Directory.Exists(instance.Path))
            RemoveDirectory(instance.Path);
        Directory.CreateDirectory(instance.Path);
        return instance;
    }

    /// <summary>Removes kvmobserve-* instances whose owning process no longer runs. Returns their names.</summary>
    /// <summary>Whether <paramref name="pid"/> runs and is an agent (or a process hosting one, such as a test host): a
    /// dead agent's PID taken by an unrelated process must not keep its instance tracing.</summary>
    private static bool IsAgent(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Contains("kvmobserve", StringComparison.OrdinalIgnoreCase);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // gone
        }
    }

    public static IReadOnlyList<string> RemoveStale(string tracefsRoot)
    {
        var removed = new List<string>();
        string instances = System.IO.Path.Combine(tracefsRoot, "instances");
        if (!Directory.Exists(instances))
            return removed;
        foreach (string dir in Directory.GetDirectories(instances, NamePrefix + "*"))
        {
            string name = System.IO.Path.GetFileName(dir);
            if (OwnerPid(name) is int pid && (pid == Environment.ProcessId || IsAgent(pid)))
                continue; // another agent's, still running
            DisableAll(dir);
            RemoveDirectory(dir);
            removed.Add(name);
        }
        return removed;
    }

    /// <summary>The pid in "kvmobserve-PID" or "kvmobserve-PID-suffix".</summary>
    public static int? OwnerPid(string instanceName)
    {
        if (!instanceName.StartsWith(NamePrefix, StringComparison.Ordinal))
            return null;
        string rest = instanceName[NamePrefix.Length..];
        int dash = rest.IndexOf('-');
        if (dash >= 0)
            rest = rest[..dash];
        return int.TryParse(rest, NumberStyles.None, CultureInfo.InvariantCulture, out int pid) ? pid : null;
    }

    public void SetBufferSizeKb(int kb) =>
        File.WriteAllText(System.IO.Path.Combine(Path, "buffer_size_kb"), kb.ToString(CultureInfo.InvariantCulture));

    /// <summary>How full (percent) a CPU buffer must be before poll wakes a reader; 0 wakes it on any data.</summary>
    public void SetBufferPercent(int percent) =>
        File.WriteAllText(System.IO.Path.Combine(Path, "buffer_percent"), percent.ToString(CultureInfo.InvariantCulture));

    /// <summary>The clock of the instance's timestamps: "mono" (CLOCK_MONOTONIC) is one time base across CPUs, which
    /// pairing records a thread left on different CPUs needs; the default "local" is per CPU.</summary>
    public void SetTraceClock(string clock) =>
        File.WriteAllText(System.IO.Path.Combine(Path, "trace_clock"), clock);

    /// <summary>Switches one event on in this instance. Returns false when the kernel does not have it.</summary>
    public bool Enable(string system, string eventName)
    {
        string enable = System.IO.Path.Combine(Path, "events", system, eventName, "enable");
        if (!File.Exists(enable))
            return false;
        File.WriteAllText(enable, "1");
        _enabled.Add(enable);
        return true;
    }

    public bool IsEnabled(string system, string eventName)
    {
        string enable = System.IO.Path.Combine(Path, "events", system, eventName, "enable");
        return File.Exists(enable) && File.ReadAllText(enable).Trim() == "1";
    }

    /// <summary>The CPUs this instance has per-CPU buffers for.</summary>
    public IReadOnlyList<int> Cpus()
    {
        var cpus = new List<int>();
        foreach (string dir in Directory.GetDirectories(System.IO.Path.Combine(Path, "per_cpu"), "cpu*"))
        {
            if (int.TryParse(System.IO.Path.GetFileName(dir).AsSpan(3), NumberStyles.None, CultureInfo.InvariantCulture, out int cpu))
                cpus.Add(cpu);
        }
        cpus.Sort();
        return cpus;
    }

    public string PipeRawPath(int cpu) =>
        System.IO.Path.Combine(Path, "per_cpu", "cpu" + cpu.ToString(CultureInfo.InvariantCulture), "trace_pipe_raw");

    /// <summary>Turns recording off so readers can drain what is left without new events arriving.</summary>
    public void StopRecording() => File.WriteAllText(System.IO.Path.Combine(Path, "tracing_on"), "0");

    /// <summary>Disables the events and removes the instance. Every fd into it must be closed first.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        foreach (string enable in _enabled)
            TryWrite(enable, "0");
        RemoveDirectory(Path);
    }

    private static void DisableAll(string instancePath) => TryWrite(System.IO.Path.Combine(instancePath, "events", "enable"), "0");

    private static void TryWrite(string path, string text)
    {
        try
        {
            File.WriteAllText(path, text);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    private static void RemoveDirectory(string path)
    {
        // rmdir(2) of an instance: tracefs removes everything inside; EBUSY while any of its files is open.
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                Directory.Delete(path, recursive: false);
                return;
            }
            catch (DirectoryNotFoundException) { return; }
            catch (IOException) when (attempt < 50)
            {
                Thread.Sleep(20);
            }
        }
    }
}
