using System.Diagnostics;

namespace KvmObserve.Fuzz;

/// <summary>A defect: an exception the reader does not document, or an input it did not finish.</summary>
public sealed record FuzzCrash(string Site, string Message, byte[] Input, long Count);

public sealed record FuzzResult(string Target, long Inputs, long Rejected, IReadOnlyList<FuzzCrash> Crashes, TimeSpan Elapsed, bool Hung);

/// <summary>
/// Feeds a target its seeds, then seeded mutations of them (and of mutants that got far enough to be accepted), and
/// groups what escapes by throw site. Runs on its own thread, watched: an input that takes longer than the hang limit
/// is reported with its bytes, since a reader that loops forever is as bad as one that throws.
/// </summary>
public static class FuzzRunner
{
    public static FuzzResult Run(FuzzTarget target, long inputs, ulong seed, TimeSpan hangLimit, string? crashDirectory = null,
        Action<long>? progress = null)
    {
        var crashes = new Dictionary<string, FuzzCrash>();
        long done = 0, rejected = 0;
        byte[] current = [];
        var clock = Stopwatch.StartNew();
        Exception? harnessError = null;
        var worker = new Thread(() =>
        {
            try
            {
                var mutator = new Mutator(seed ^ (ulong)target.Name.GetHashCode(StringComparison.Ordinal));
                var corpus = new List<byte[]>(target.Seeds);
                int seeds = corpus.Count;
                for (long i = 0; i < inputs; i++)
                {
                    byte[] input = i < seeds ? corpus[(int)i] : mutator.Mutate(corpus[mutator.Below(corpus.Count)], corpus, target.Tokens);
                    Volatile.Write(ref current, input);
                    bool accepted = true;
                    try
                    {
                        target.Run(input);
                    }
                    catch (Exception e) when (target.IsRejection(e))
                    {
                        rejected++;
                        accepted = false;
                    }
                    catch (Exception e)
                    {
                        accepted = false;
                        string site = SiteOf(e);
                        lock (crashes)
                            crashes[site] = crashes.TryGetValue(site, out FuzzCrash? known)
                                ? known with { Count = known.Count + 1 }
                                : new FuzzCrash(site, e.Message, input, 1);
                    }
                    // Accepted mutants go deeper when mutated again; a bounded pool keeps the seeds in play.
                    if (accepted && i >= seeds && mutator.Below(32) == 0)
                    {
                        if (corpus.Count < seeds + 256) corpus.Add(input);
                        else corpus[seeds + mutator.Below(256)] = input;
                    }
                    Interlocked.Increment(ref done);
                }
            }
            catch (Exception e)
            {
                harnessError = e;
            }
        }, 16 << 20) { IsBackground = true, Name = "fuzz " + target.Name };
        worker.Start();
        long seen = -1;
        var still = Stopwatch.StartNew();
        bool hung = false;
        while (!worker.Join(200))
        {
            long now = Interlocked.Read(ref done);
            progress?.Invoke(now);
            if (now != seen)
            {
                seen = now;
                still.Restart();
            }
            else if (still.Elapsed > hangLimit)
            {
                // The worker cannot be stopped; it is a background thread and dies with the process.
                lock (crashes)
                    crashes["hang"] = new FuzzCrash("hang", $"one input ran over {hangLimit.TotalSeconds} s", Volatile.Read(ref current), 1);
                hung = true;
                break;
            }
        }
        if (harnessError is not null)
            throw new InvalidOperationException($"the {target.Name} harness failed", harnessError);
        List<FuzzCrash> found;
        lock (crashes)
            found = crashes.Values.OrderBy(c => c.Site, StringComparer.Ordinal).ToList();
        if (crashDirectory is not null)
        {
            Directory.CreateDirectory(crashDirectory);
            foreach (FuzzCrash c in found)
                File.WriteAllBytes(Path.Combine(crashDirectory, $"{target.Name}-{Sanitize(c.Site)}.bin"), c.Input);
        }
        return new FuzzResult(target.Name, Interlocked.Read(ref done), rejected, found, clock.Elapsed, hung);
    }

    /// <summary>"ExceptionType at Type.Method" of the first frame in the agent's own code.</summary>
    public static string SiteOf(Exception e)
    {
        foreach (StackFrame frame in new StackTrace(e).GetFrames())
        {
            System.Reflection.MethodBase? method = frame.GetMethod();
            string? type = method?.DeclaringType?.FullName;
            if (type is not null && type.StartsWith("KvmObserve.", StringComparison.Ordinal) && !type.StartsWith("KvmObserve.Fuzz", StringComparison.Ordinal))
                return $"{e.GetType().Name} at {type}.{method!.Name}";
        }
        return $"{e.GetType().Name} at {new StackTrace(e).GetFrame(0)?.GetMethod()?.Name ?? "?"}";
    }

    private static string Sanitize(string s) => new(s.Select(c => char.IsAsciiLetterOrDigit(c) ? c : '_').ToArray());
}
