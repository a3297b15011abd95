using System.CommandLine;
using KvmObserve.Aggregation;
using KvmObserve.Agent.Hosting;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Exposition;
using KvmObserve.Sources;
using KvmObserve.Sources.Recording;

namespace KvmObserve.Agent.Commands;

/// <summary>
/// `kvmobserve replay FILE`: reads a flight recording back through the same decoders and aggregator as the live agent,
/// as fast as it goes, and prints what it counted as Prometheus text (what /metrics would have said had the agent seen
/// only these records). To serve a recording at its own pace instead: `kvmobserve run --replay FILE`.
/// </summary>
internal static class ReplayCommand
{
    public static Command Create()
    {
        var file = new Argument<string>("file") { Description = "a flight recording (.kvmrec)" };
        var command = new Command("replay", "Replay a flight recording through the pipeline; print its metrics") { file };
        command.SetAction(parse =>
        {
            string path = parse.GetValue(file)!;
            try
            {
                (RecordingHeader header, ExpositionContext context) = Replay(path);
                Console.Error.WriteLine($"kvmobserve: replayed {header.Records} records of VM {header.Vm} recorded on {header.Host} " +
                    $"by the {header.Source} source ({header.Reason}{(header.Complete ? "" : "; the recorder had already lost the start")})");
                var output = new System.Buffers.ArrayBufferWriter<byte>();
                MetricsRenderer.Render(output, context);
                using Stream stdout = Console.OpenStandardOutput();
                stdout.Write(output.WrittenSpan);
                return 0;
            }
            catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"kvmobserve replay: {path}: {e.Message}");
                return 1;
            }
        });
        return command;
    }

    /// <summary>Replays <paramref name="path"/> once into a fresh aggregator (one shard per recorded CPU).</summary>
    public static (RecordingHeader Header, ExpositionContext Context) Replay(string path)
    {
        VmRegistry registry = VmRegistry.WithoutProcfs();
        var schedstat = new SchedstatCollector(registry, registry.ProcRoot);
        int shards = CpuTopology.PossibleCpus();
        var aggregator = new Aggregator(Math.Max(shards, 1), registry);
        using var source = new ReplaySource(path, aggregator, schedstat, speed: 0, loop: false);
        source.RunOnce();
        return (source.Header, SourceService.ContextFor(source, aggregator, "replay", path, schedstat, storms: null));
    }
}
