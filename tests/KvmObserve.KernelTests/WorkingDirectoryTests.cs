using System.Diagnostics;

namespace KvmObserve.KernelTests;

/// <summary>Where the agent is started from changes nothing: before, the host watched its working directory
/// recursively for appsettings.json changes (44,324 inotify watches when started from /).</summary>
public class WorkingDirectoryTests
{
    private static (int Watches, double MedianScrapeMs) RunFrom(string directory)
    {
        int port = Agent.FreePort();
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "kvmobserve.dll"), "run", "--source", "tracefs", "--listen", $"127.0.0.1:{port}" })
            psi.ArgumentList.Add(a);
        using var agent = Process.Start(psi)!;
        agent.OutputDataReceived += (_, _) => { };
        agent.ErrorDataReceived += (_, _) => { };
        agent.BeginOutputReadLine();
        agent.BeginErrorReadLine();
        try
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
            var waited = Stopwatch.StartNew();
            while (waited.Elapsed < TimeSpan.FromSeconds(60))
            {
                try
                {
                    if (http.GetAsync($"http://127.0.0.1:{port}/healthz").Result.IsSuccessStatusCode)
                        break;
                }
                catch (AggregateException) { }
                Thread.Sleep(200);
            }
            var times = new List<double>();
            for (int i = 0; i < 25; i++)
            {
                var clock = Stopwatch.StartNew();
                Assert.True(http.GetAsync($"http://127.0.0.1:{port}/metrics").Result.IsSuccessStatusCode);
                times.Add(clock.Elapsed.TotalMilliseconds);
            }
            int watches = 0;
            foreach (string fd in Directory.GetFiles($"/proc/{agent.Id}/fd"))
            {
                if (new FileInfo(fd).LinkTarget == "anon_inode:inotify")
                    watches += File.ReadLines($"/proc/{agent.Id}/fdinfo/{Path.GetFileName(fd)}").Count(l => l.StartsWith("inotify", StringComparison.Ordinal));
            }
            return (watches, times.Skip(5).Order().ElementAt(10));
        }
        finally
        {
            Syscall.Kill(agent.Id, 15);
            agent.WaitForExit(20_000);
        }
    }

    [KernelFact(Kvm = false)]
    public void Started_from_root_the_agent_holds_a_handful_of_inotify_watches_and_scrapes_as_fast()
    {
        string elsewhere = Directory.CreateTempSubdirectory("kvmobserve-cwd").FullName;
        try
        {
            (int rootWatches, double rootMs) = RunFrom("/");
            (int otherWatches, double otherMs) = RunFrom(elsewhere);
            Assert.True(rootWatches <= 8, $"{rootWatches} inotify watches when started from /");
            Assert.True(otherWatches <= 8, $"{otherWatches} inotify watches when started from {elsewhere}");
            Assert.True(rootMs < otherMs * 3 + 5, $"median scrape {rootMs:F1} ms from /, {otherMs:F1} ms from {elsewhere}");
        }
        finally
        {
            Directory.Delete(elsewhere);
        }
    }
}
