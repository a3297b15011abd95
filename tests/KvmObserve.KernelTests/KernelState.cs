namespace KvmObserve.KernelTests;

/// <summary>What the agent may leave in the kernel: nothing.</summary>
public static class KernelState
{
    public const string Tracefs = "/sys/kernel/tracing";

    public static IReadOnlyList<string> InstancesOf(int pid) =>
        Directory.Exists(Path.Combine(Tracefs, "instances"))
            ? Directory.GetDirectories(Path.Combine(Tracefs, "instances"), $"kvmobserve-{pid}*").Select(d => Path.GetFileName(d)).ToList()
            : [];

    /// <summary>bpftool, which lists what BPF the kernel holds (apt-get install bpftool); null where it is missing.</summary>
    public static string? Bpftool => new[] { "/usr/sbin/bpftool", "/usr/bin/bpftool", "/usr/local/sbin/bpftool" }.FirstOrDefault(File.Exists);

    /// <summary>The agent's BPF programs and maps the kernel holds now (names start with kvmo_ or kvmobser), and the
    /// links that attach any of those programs, as bpftool lists them.</summary>
    public static (List<string> Programs, List<string> Maps, List<string> Links) AgentBpf()
    {
        string bpftool = Bpftool ?? throw new InvalidOperationException("bpftool is missing (apt-get install bpftool)");
        System.Text.Json.JsonElement List(string what)
        {
            var psi = new System.Diagnostics.ProcessStartInfo(bpftool, $"-j {what} show") { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = System.Diagnostics.Process.Start(psi)!;
            string json = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return System.Text.Json.JsonDocument.Parse(json.Trim().Length == 0 ? "[]" : json).RootElement.Clone();
        }
        static string Name(System.Text.Json.JsonElement e) => e.TryGetProperty("name", out var n) ? n.GetString() ?? "" : "";
        static bool Ours(string name) => name.StartsWith("kvmo_", StringComparison.Ordinal) || name.StartsWith("kvmobser", StringComparison.Ordinal);
        var programs = List("prog").EnumerateArray().Where(e => Ours(Name(e))).ToList();
        var ids = programs.Select(e => e.GetProperty("id").GetInt32()).ToHashSet();
        var maps = List("map").EnumerateArray().Where(e => Ours(Name(e))).Select(e => $"{Name(e)} ({e.GetProperty("id").GetInt32()})").ToList();
        var links = List("link").EnumerateArray().Where(e => e.TryGetProperty("prog_id", out var id) && ids.Contains(id.GetInt32()))
            .Select(e => $"link {e.GetProperty("id").GetInt32()}").ToList();
        return (programs.Select(e => $"{Name(e)} ({e.GetProperty("id").GetInt32()})").ToList(), maps, links);
    }

    /// <summary>Waits (up to 10 s) until the kernel holds none of the agent's BPF: it frees a program, map or link
    /// shortly after the last fd holding it is closed, not at once.</summary>
    public static string WaitForNoAgentBpf()
    {
        DateTime until = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            var (programs, maps, links) = AgentBpf();
            if (programs.Count + maps.Count + links.Count == 0)
                return "";
            if (DateTime.UtcNow > until)
                return string.Join(", ", programs.Concat(maps).Concat(links));
            Thread.Sleep(100);
        }
    }

    public static string GlobalEnabledEvents() =>
        File.Exists(Path.Combine(Tracefs, "set_event")) ? File.ReadAllText(Path.Combine(Tracefs, "set_event")).Trim() : "";
}
