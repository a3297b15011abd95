using KvmObserve.Fuzz;

// kvmobserve-fuzz [--inputs N per target] [--seed S] [--target NAME] [--crashes DIR]
// Prints one line per target: inputs, rejected (the reader's documented error), distinct crash sites, rate.
long inputs = 100_000;
ulong seed = 1;
string? only = null, crashDir = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--inputs": inputs = long.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
        case "--seed": seed = ulong.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
        case "--target": only = args[++i]; break;
        case "--crashes": crashDir = args[++i]; break;
        default:
            Console.Error.WriteLine($"kvmobserve-fuzz: unknown argument '{args[i]}' (--inputs N, --seed S, --target NAME, --crashes DIR)");
            return 2;
    }
}
int failed = 0;
long total = 0;
foreach (FuzzTarget target in FuzzTarget.All().Where(t => only is null || t.Name == only))
{
    FuzzResult r = FuzzRunner.Run(target, inputs, seed, TimeSpan.FromSeconds(30), crashDir);
    total += r.Inputs;
    Console.WriteLine($"{r.Target,-15} {r.Inputs,10:N0} inputs  {r.Rejected,10:N0} rejected  {r.Crashes.Sum(c => c.Count),6:N0} unhandled " +
        $"at {r.Crashes.Count} sites  {r.Inputs / Math.Max(r.Elapsed.TotalSeconds, 1e-3),9:N0}/s");
    foreach (FuzzCrash c in r.Crashes)
        Console.WriteLine($"    {c.Count,8:N0} x {c.Site}: {c.Message.Split('\n')[0]}");
    if (r.Crashes.Count > 0)
        failed++;
    if (r.Hung)
        break;
}
Console.WriteLine($"total {total:N0} inputs, {failed} targets with unhandled exceptions");
return failed == 0 ? 0 : 1;
