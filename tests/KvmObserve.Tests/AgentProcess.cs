using System.Diagnostics;

namespace KvmObserve.Tests;

/// <summary>Runs kvmobserve (the built dll beside the tests) to completion: for what it says before it touches the
/// kernel (settings), so no root is needed.</summary>
internal static class AgentProcess
{
    public static (int ExitCode, string Stdout, string Stderr) Run(IEnumerable<string> args, IReadOnlyDictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"));
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        foreach (string name in psi.Environment.Keys.Where(k => k.StartsWith("KVMOBSERVE__", StringComparison.Ordinal) || k.StartsWith("OTEL_", StringComparison.Ordinal)).ToList())
            psi.Environment.Remove(name);
        foreach ((string k, string v) in env ?? new Dictionary<string, string>())
            psi.Environment[k] = v;
        using Process p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = p.StandardError.ReadToEnd();
        if (!p.WaitForExit(60_000))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"kvmobserve {string.Join(' ', args)} did not exit");
        }
        return (p.ExitCode, stdout.Result, stderr);
    }
}
