using System.Globalization;
using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace KvmObserve.KernelTests.VmHost;

/// <summary>What one test did in the test VM.</summary>
public sealed record GuestResult(string? Failure, string? StackTrace, string? SkipReason, decimal Seconds, string Output)
{
    public static GuestResult Failed(string why) => new(why, null, null, 0, "");
}

/// <summary>
/// Runs, in the test VM, every VM test this run selected: those that need nested paging (or any) with kvm_amd npt=1,
/// then kvm_amd reloaded with npt=0 for those that need shadow paging. Each batch is `dotnet test` of this very assembly
/// in the guest; its TRX file, on the share, says what each test did. A test that hangs is ended by vstest's blame; a
/// guest that hangs (its kernel locked up under QEMU: no test ends or starts for <see cref="Stall"/>) is killed. Either
/// way the test that was running fails with what the guest said, and the tests not run yet get a fresh batch (a fresh
/// boot after a hung guest), <see cref="Retries"/> times at most: one hang costs one test, not the whole run.
/// </summary>
public static partial class GuestTestRun
{
    /// <summary>Set in the guest: the file each VM test appends its name to as it starts.</summary>
    public const string StartedVariable = "KVMOBSERVE_TEST_VM_STARTED";

    /// <summary>The longest a test may run in the guest (blame ends it): the slowest take ~3 minutes there.</summary>
    private static readonly TimeSpan TestLimit = TimeSpan.FromMinutes(6);

    /// <summary>No test ended or started for this long: the guest is hung (it outlasts <see cref="TestLimit"/>).</summary>
    private static readonly TimeSpan Stall = TimeSpan.FromMinutes(8);

    /// <summary>The most all batches of one paging may take, however many retries: CI's whole run must stay well
    /// under 90 minutes (the shadow-paging tests are few). A CI-like run's VM tests took 31 minutes with 5 retries.</summary>
    private static TimeSpan PagingLimit(bool nested) => TimeSpan.FromMinutes(nested ? 45 : 15);

    private const int Retries = 6; // batches after the first: each may hold the retries of several tests

    /// <summary>How often each test was running when the guest died.</summary>
    private static readonly Dictionary<string, int> GuestDeaths = new(StringComparer.Ordinal);

    /// <summary>Tries more a test gets after QEMU's emulation of SVM failed under it (a guest panic or hang, a
    /// workload guest derailed; all of them count). They come at random: a CI-like run saw 5 in 30 minutes, and one
    /// test, a long PIO loop, derailed twice in a row.</summary>
    private const int DeathRetries = 3;

    private static readonly object Gate = new();
    private static readonly List<VmTestCase> Planned = new();
    private static Dictionary<string, GuestResult>? _results;
    private static string? _failure;
    private static bool _freshBoot; // the batch's hung test gets its next try in a new guest

    /// <summary>VM tests run in the test VM: this host has no /dev/kvm of kvm_amd or kvm_intel.</summary>
    public static bool RunsHere => !HostPaging.HasHardwareKvm;

    /// <summary>The VM tests this run will run (the executor says so before it starts any).</summary>
    public static void Plan(IEnumerable<VmTestCase> cases)
    {
        lock (Gate)
            Planned.AddRange(cases);
    }

    public static GuestResult ResultOf(VmTestCase test)
    {
        lock (Gate)
        {
            if (_results is null && _failure is null)
                RunAll();
            if (_failure is not null)
                return GuestResult.Failed(_failure);
            return _results!.TryGetValue(test.DisplayName, out GuestResult? r) ? r
                : GuestResult.Failed($"the test VM reported no result for {test.DisplayName}");
        }
    }

    private static void RunAll()
    {
        var cases = Planned.Count > 0 ? Planned.ToList() : [];
        _results = new Dictionary<string, GuestResult>(StringComparer.Ordinal);
        TestVm? vm = null;
        try
        {
            if (TestVm.CannotBoot() is string why)
                throw new InvalidOperationException($"no /dev/kvm here, and the test VM cannot boot: needs {why}");
            foreach (bool nested in new[] { true, false })
            {
                var batch = cases.Where(c => (c.Paging != KvmPaging.Shadow) == nested).ToList();
                if (batch.Count > 0)
                    RunPaging(ref vm, batch, nested);
            }
        }
        catch (Exception e)
        {
            _failure = e.Message;
        }
        finally
        {
            vm?.Dispose();
        }
    }

    /// <summary>Runs <paramref name="cases"/> until each has a result, or the retries or the time are spent.</summary>
    private static void RunPaging(ref TestVm? vm, List<VmTestCase> cases, bool nested)
    {
        string paging = nested ? "nested" : "shadow";
        DateTime deadline = DateTime.UtcNow + PagingLimit(nested);
        var left = cases;
        for (int attempt = 0; ; attempt++)
        {
            if (vm is null)
                vm = TestVm.Boot(nested);
            else if (vm.NestedPaging != nested)
                vm.SetNestedPaging(nested);
            string tag = $"{paging}{attempt}";
            _freshBoot = false;
            string? trouble = RunBatch(vm, left, tag, deadline);
            if (trouble is not null && (vm.Stalled || _freshBoot))
            {
                vm.Dispose();
                vm = null;
            }
            left = left.Where(c => !_results!.ContainsKey(c.DisplayName)).ToList();
            if (left.Count == 0)
                return;
            if (attempt >= Retries || DateTime.UtcNow >= deadline)
            {
                foreach (VmTestCase c in left)
                    _results![c.DisplayName] = GuestResult.Failed($"not run in the test VM: {trouble ?? "its batch ended before it"} ({attempt + 1} batches)");
                return;
            }
        }
    }

    /// <summary>One `dotnet test` of <paramref name="cases"/> in the guest. Records each result it got; the test a hang
    /// ended fails with why. Returns what went wrong, or null when vstest ended on its own.</summary>
    private static string? RunBatch(TestVm vm, List<VmTestCase> cases, string tag, DateTime deadline)
    {
        string assembly = typeof(GuestTestRun).Assembly.Location;
        string filter = string.Join('|', cases.Select(c => $"FullyQualifiedName={c.TestMethod.TestClass.Class.Name}.{c.TestMethod.Method.Name}").Distinct());
        string ci = Environment.GetEnvironmentVariable("CI") ?? "";
        string started = Path.Combine(vm.Share, $"{tag}.started");
        // vstest starts its test host in the guest, which takes a minute there; --blame-hang-timeout ends a test
        // that hangs. No dumps: a full one of each dotnet process is ~300 MB, written over 9p for minutes.
        string script = $"""
            export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
            export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 VSTEST_CONNECTION_TIMEOUT=900 CI='{ci}'
            export {TestTime.ScaleVariable}={TestTime.GuestScale.ToString(CultureInfo.InvariantCulture)}
            export {StartedVariable}=/run/vmhost/{tag}.started
            cd '{Path.GetDirectoryName(assembly)}'
            dotnet test '{assembly}' --filter '{filter}' --results-directory /run/vmhost/{tag} \
              --logger 'trx;LogFileName={tag}.trx' --logger 'console;verbosity=normal' --blame-hang-timeout {(int)TestLimit.TotalMinutes}m --blame-hang-dump-type none
            """;
        int id = vm.NextCommand;
        long lastSize = -1;
        DateTime lastProgress = DateTime.UtcNow;
        string? Stalled()
        {
            long size = vm.OutputSoFar(id).Length + (File.Exists(started) ? new FileInfo(started).Length : 0);
            if (size != lastSize)
                (lastSize, lastProgress) = (size, DateTime.UtcNow);
            return DateTime.UtcNow - lastProgress > Stall ? $"no test ended or started in {Stall.TotalMinutes:0} minutes" : null;
        }
        string? trouble = null;
        string output;
        TimeSpan budget = deadline - DateTime.UtcNow;
        try
        {
            (int code, output) = vm.Run(script, budget > TimeSpan.FromMinutes(1) ? budget : TimeSpan.FromMinutes(1), Stalled);
            if (code != 0 && !File.Exists(Path.Combine(vm.Share, tag, $"{tag}.trx")))
                trouble = $"dotnet test exited {code} and wrote no results:\n{Tail(output)}";
        }
        catch (TestVmStalled stall)
        {
            output = vm.OutputSoFar(id);
            trouble = $"{stall.Message}; the guest's console ends:\n{stall.ConsoleTail}";
        }
        string trx = Path.Combine(vm.Share, tag, $"{tag}.trx");
        var got = File.Exists(trx) ? ParseTrx(File.ReadAllText(trx), vm.Description).ToList() : ParseConsole(output, vm.Description).ToList();
        var retried = new HashSet<string>(StringComparer.Ordinal);
        foreach ((string test, GuestResult result) in got)
        {
            // A workload VM whose nested guest went astray (load's own words) failed under QEMU's emulated SVM, as the
            // guest kernel's panics do: no agent runs in that guest. The test gets another try, as after a panic.
            if (result.Failure is string failure && WorkloadGuestFailed().IsMatch(failure) && cases.Any(c => c.DisplayName == test)
                && (GuestDeaths[test] = GuestDeaths.GetValueOrDefault(test) + 1) <= DeathRetries)
            {
                Console.Error.WriteLine($"test VM: {test} gets another try, its workload's guest failed under QEMU: {failure}");
                retried.Add(test);
                continue;
            }
            _results![test] = result;
        }
        // The test that was running when vstest's blame or the stall ended the batch: started, and no result.
        string[] begun = File.Exists(started) ? File.ReadAllLines(started) : [];
        // (Not one whose retry was just decided: it ended, with no result kept; one begun after it hung.)
        if (begun.LastOrDefault(t => !_results!.ContainsKey(t) && !retried.Contains(t)) is string hung && cases.Any(c => c.DisplayName == hung))
        {
            trouble ??= $"it ran past {TestLimit.TotalMinutes:0} minutes, and vstest's blame ended the batch:\n{Tail(output)}";
            // A guest kernel that hangs or panics (it has, in QEMU's emulation of SVM, at random) gets the test that
            // was running another try in a fresh boot, DeathRetries times; the same end once more is the test's. So
            // does a test that ran past its limit in a live guest: QEMU has hung load's nested guests for minutes
            // (twice a CI-like run's retried test hung so, after 20 minutes of that guest).
            int deaths = GuestDeaths[hung] = GuestDeaths.GetValueOrDefault(hung) + 1;
            if (deaths <= DeathRetries)
            {
                Console.Error.WriteLine($"test VM: {hung} gets another try in a fresh boot: {trouble}");
                _freshBoot = true;
            }
            else
            {
                _results![hung] = GuestResult.Failed($"in the test VM ({vm.Description}): {trouble}");
            }
        }
        return trouble;
    }

    /// <summary>The results vstest's console logger printed ("  Passed NAME [2 s]", "  Failed NAME [1 m 3 s]" then its
    /// "Error Message:" lines): what a batch that never finished its TRX file still tells.</summary>
    public static IEnumerable<(string Test, GuestResult Result)> ParseConsole(string output, string where)
    {
        string[] lines = output.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            Match m = ResultLine().Match(lines[i].TrimEnd('\r'));
            if (!m.Success)
                continue;
            string said = $"[in the test VM: {where}]";
            if (m.Groups[1].Value == "Passed")
            {
                yield return (m.Groups[2].Value, new GuestResult(null, null, null, 0, said));
                continue;
            }
            var message = new List<string>();
            for (int j = i + 1; j < lines.Length && !ResultLine().IsMatch(lines[j].TrimEnd('\r')) && !lines[j].StartsWith("  Stack Trace:", StringComparison.Ordinal); j++)
            {
                if (!lines[j].StartsWith("  Error Message:", StringComparison.Ordinal))
                    message.Add(lines[j].Trim());
            }
            string text = string.Join('\n', message).Trim();
            yield return (m.Groups[2].Value, m.Groups[1].Value == "Skipped"
                ? new GuestResult(null, null, $"in the test VM ({where}): {text}", 0, said)
                : new GuestResult($"in the test VM ({where}): {text}", null, null, 0, said));
        }
    }

    /// <summary>MicroVcpu's words for a nested guest that left its program: an exception it has no handler for, a
    /// triple fault, or no exit for far longer than its phase takes.</summary>
    [GeneratedRegex(@"vCPU \d+: (guest exception |the guest shut down \(triple fault\)|its guest went astray)")]
    internal static partial Regex WorkloadGuestFailed();

    [GeneratedRegex(@"^  (Passed|Failed|Skipped) (.+) \[[^\]]*\]$")]
    private static partial Regex ResultLine();

    /// <summary>TRX (Visual Studio's test results XML): UnitTestResult elements, each with testName (the display
    /// name), outcome, duration, and Output with StdOut and ErrorInfo (Message, StackTrace).</summary>
    public static IEnumerable<(string Test, GuestResult Result)> ParseTrx(string xml, string where)
    {
        XNamespace ns = "http://microsoft.com/schemas/VisualStudio/TeamTest/2010";
        foreach (XElement r in XDocument.Parse(xml).Descendants(ns + "UnitTestResult"))
        {
            string test = (string?)r.Attribute("testName") ?? "";
            string outcome = (string?)r.Attribute("outcome") ?? "";
            decimal seconds = TimeSpan.TryParse((string?)r.Attribute("duration"), CultureInfo.InvariantCulture, out TimeSpan d) ? (decimal)d.TotalSeconds : 0;
            XElement? output = r.Element(ns + "Output");
            string stdout = output?.Element(ns + "StdOut")?.Value ?? "";
            string? message = output?.Element(ns + "ErrorInfo")?.Element(ns + "Message")?.Value;
            string? stack = output?.Element(ns + "ErrorInfo")?.Element(ns + "StackTrace")?.Value;
            string said = $"[in the test VM: {where}]\n{stdout}";
            yield return (test, outcome switch
            {
                "Passed" => new GuestResult(null, null, null, seconds, said),
                "NotExecuted" => new GuestResult(null, null, $"in the test VM ({where}): {message ?? stdout}", seconds, said),
                _ => new GuestResult($"in the test VM ({where}): {message ?? outcome}", stack, null, seconds, said),
            });
        }
    }

    private static string Tail(string s) => s.Length <= 6000 ? s : s[^6000..];
}
