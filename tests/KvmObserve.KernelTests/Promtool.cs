using System.Diagnostics;

namespace KvmObserve.KernelTests;

/// <summary>promtool (Debian's prometheus package): what Prometheus itself says of the agent's output.</summary>
public static class Promtool
{
    public static string? Path { get; } = new[] { "/usr/bin/promtool", "/usr/local/bin/promtool" }.FirstOrDefault(File.Exists);

    /// <summary>Asserts that `promtool check metrics` accepts <paramref name="text"/>. Without promtool it checks
    /// nothing on a developer's machine and fails under CI, where .ci/run installs it.</summary>
    public static void AssertAccepts(string text)
    {
        if (Path is null)
        {
            Assert.True(Environment.GetEnvironmentVariable("CI") != "true", "promtool is missing (apt-get install prometheus)");
            return;
        }
        var psi = new ProcessStartInfo(Path, "check metrics") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        using Process p = Process.Start(psi)!;
        p.StandardInput.Write(text);
        p.StandardInput.Close();
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"promtool check metrics: {output}");
    }
}
