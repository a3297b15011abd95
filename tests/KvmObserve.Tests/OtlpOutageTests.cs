using System.Net;
using System.Net.Sockets;
using KvmObserve.Agent.Hosting;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Format;
using KvmObserve.Exposition;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Exporter;
using Xunit.Abstractions;

namespace KvmObserve.Tests;

/// <summary>
/// The OTLP receiver absent for a while, then back: exports fail without memory growing, /metrics keeps rendering,
/// one warning says the outage began and one line says it ended, and exports resume.
/// </summary>
[Collection("otlp")] // one MeterProvider at a time: each listens to every meter named KvmObserve in the process
public sealed class OtlpOutageTests(ITestOutputHelper output)
{
    private sealed class Lines : ILogger<OtlpService>
    {
        public List<(LogLevel Level, string Text)> All { get; } = [];
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (All)
                All.Add((logLevel, formatter(state, exception)));
        }
    }

    /// <summary>What an agent with no VMs yet exports.</summary>
    private static ExpositionContext EmptyContext() => new()
    {
        Aggregator = new Aggregator(2, VmRegistry.WithoutProcfs()),
        SourceName = "tracefs",
        Tracepoints = [],
        ExitReasons = ExitReasonTables.BuiltIn,
        UserspaceExitReasons = new Dictionary<long, string>(),
    };

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    [Fact]
    public async Task An_absent_receiver_costs_no_memory_and_exports_resume_when_it_is_back()
    {
        ExpositionContext context = EmptyContext();
        int port = FreePort();
        var lines = new Lines();
        var service = new OtlpService(new OtlpOptions(new Uri($"http://127.0.0.1:{port}/v1/metrics"), OtlpExportProtocol.HttpProtobuf, "",
            TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(1)), () => context, lines);
        await service.StartAsync(CancellationToken.None);
        try
        {
            // Outage: nothing listens. Memory is read once the failures have begun, and again after many more.
            SpinWait.SpinUntil(() => service.FailedExports >= 3, TimeSpan.FromSeconds(30));
            long heapEarly = Heap(), rssEarly = Environment.WorkingSet;
            long failedEarly = service.FailedExports;
            var renders = new List<double>();
            DateTime until = DateTime.UtcNow.AddSeconds(12);
            while (DateTime.UtcNow < until)
            {
                var sw = System.Diagnostics.Stopwatch.StartNew();
                MetricsRenderer.Render(new System.Buffers.ArrayBufferWriter<byte>(), context);
                renders.Add(sw.Elapsed.TotalMilliseconds);
                Thread.Sleep(100);
            }
            long heapLate = Heap(), rssLate = Environment.WorkingSet;
            long failed = service.FailedExports - failedEarly;
            output.WriteLine($"outage: {failed} more failed exports over 12 s; managed heap {heapEarly / 1024} -> {heapLate / 1024} KiB, " +
                $"working set {rssEarly / 1048576} -> {rssLate / 1048576} MiB; /metrics render max {renders.Max():F1} ms");
            Assert.True(failed >= 3, $"only {failed} exports were tried during the outage");
            Assert.True(heapLate - heapEarly < 2 * 1024 * 1024, $"managed heap grew {heapEarly} -> {heapLate} during the outage");
            Assert.Equal(0, service.Exports);

            // Back: the next export goes through.
            await using OtlpReceiver receiver = await OtlpReceiver.StartAsync(httpPort: port);
            receiver.WaitFor(e => e.Points.Count > 0, TimeSpan.FromSeconds(30));
            SpinWait.SpinUntil(() => service.Exports > 0, TimeSpan.FromSeconds(10));
            await service.StopAsync(CancellationToken.None); // its last export still reaches the receiver
        }
        finally
        {
            await service.StopAsync(CancellationToken.None);
        }
        List<(LogLevel Level, string Text)> all;
        lock (lines.All)
            all = [.. lines.All];
        foreach ((LogLevel level, string text) in all)
            output.WriteLine($"{level}: {text}");
        Assert.Single(all, l => l.Level == LogLevel.Warning);
        Assert.Contains(all, l => l.Level == LogLevel.Warning && l.Text.Contains("failing") && l.Text.Contains($":{port}/"));
        Assert.Single(all, l => l.Text.Contains("works again"));
    }

    /// <summary>A receiver that accepts connections and never answers: the export in flight would hang for the export
    /// timeout (30 s here). The stop gives the last export 2 s and returns (2.0 s measured); before, a 2 s flush and then
    /// the provider's Dispose waiting for the hanging export took 7.0 s, and the agent's whole stop 9 s.</summary>
    [Fact]
    public async Task A_receiver_that_never_answers_does_not_hold_the_stop()
    {
        ExpositionContext context = EmptyContext();
        using var silent = new TcpListener(IPAddress.Loopback, 0);
        silent.Start();
        int port = ((IPEndPoint)silent.LocalEndpoint).Port;
        var accepted = new List<Socket>();
        var acceptor = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    Socket a = await silent.AcceptSocketAsync();
                    lock (accepted)
                        accepted.Add(a);
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        });
        var service = new OtlpService(new OtlpOptions(new Uri($"http://127.0.0.1:{port}/v1/metrics"), OtlpExportProtocol.HttpProtobuf, "",
            TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(30)), () => context, new Lines());
        await service.StartAsync(CancellationToken.None);
        Assert.True(SpinWait.SpinUntil(() => { lock (accepted) return accepted.Count > 0; }, TimeSpan.FromSeconds(10)), "no export reached the silent receiver");
        Thread.Sleep(500); // the export is now waiting for an answer

        var stop = System.Diagnostics.Stopwatch.StartNew();
        await service.StopAsync(CancellationToken.None);
        stop.Stop();
        output.WriteLine($"stop took {stop.ElapsedMilliseconds} ms with an export hanging");
        Assert.True(stop.Elapsed < TimeSpan.FromSeconds(4), $"the stop took {stop.Elapsed.TotalSeconds:F1} s: it waited for the hanging export");
        Assert.Equal(0, service.Exports);
        silent.Stop();
        lock (accepted)
            accepted.ForEach(a => a.Dispose());
        await acceptor;
    }

    private static long Heap()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return GC.GetTotalMemory(forceFullCollection: true);
    }
}

/// <summary>The OTLP tests, one at a time and alone: the outage test measures the whole process's managed heap, which
/// other tests running beside it would grow.</summary>
[CollectionDefinition("otlp", DisableParallelization = true)]
public sealed class OtlpCollection;
