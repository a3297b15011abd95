using System.Collections.Concurrent;
using System.Diagnostics;

namespace KvmObserve.KernelTests.VmHost;

/// <summary>
/// A real KVM hypervisor for tests on a host without one: Debian's kernel with kvm_amd, in QEMU's software emulation
/// of AMD SVM (tests/vmhost/). The host's root is the guest's, read-only over 9p under a tmpfs overlay, so this very
/// build runs there unchanged. One boot serves many commands; kvm_amd can be reloaded between them.
/// </summary>
public sealed class TestVm : IDisposable
{
    /// <summary>Where tests/vmhost/prepare.sh keeps the kernel and initramfs between runs.</summary>
    public const string Cache = "/var/cache/kvmobserve/vmhost";

    private readonly string _dir;
    private readonly Process _qemu;
    private readonly StreamWriter _control;
    private readonly FileStream _fromVm;
    private readonly BlockingCollection<string> _replies = new();
    private volatile bool _closing;
    private volatile bool _stalled; // a stalled guest is killed, not asked to power off
    private int _commands;

    private TestVm(string dir, Process qemu, FileStream fromVm, StreamWriter control)
    {
        _dir = dir;
        _qemu = qemu;
        _fromVm = fromVm;
        _control = control;
    }

    /// <summary>The repository's tests/vmhost, found upward from the test assembly.</summary>
    public static string? ScriptsDir()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "tests", "vmhost");
            if (File.Exists(Path.Combine(candidate, "boot.sh")))
                return candidate;
        }
        return null;
    }

    /// <summary>Null when the test VM can boot here, else why not.</summary>
    public static string? CannotBoot()
    {
        if (Environment.UserName != "root")
            return "root (the test VM shares the host's root with its own root user)";
        if (ScriptsDir() is null)
            return "tests/vmhost/ (the test VM's scripts) above the test assembly";
        if (!OnPath("qemu-system-x86_64"))
            return "qemu-system-x86_64 (apt-get install qemu-system-x86)";
        if (!File.Exists("/bin/busybox"))
            return "a static busybox (apt-get install busybox-static)";
        if (!Directory.Exists(Cache) && !OnPath("apt-get"))
            return "apt-get, to download Debian's linux-image-amd64 for the test VM";
        return null;
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Any(d => File.Exists(Path.Combine(d, program)));

    /// <summary>Boots the VM with kvm_amd's nested paging on or off (npt=1 or npt=0); waits until it is ready.</summary>
    public static TestVm Boot(bool nestedPaging = true)
    {
        string scripts = ScriptsDir() ?? throw new InvalidOperationException("tests/vmhost/ not found");
        string dir = Directory.CreateTempSubdirectory("kvmobserve-vmhost.").FullName;
        var psi = new ProcessStartInfo(Path.Combine(scripts, "boot.sh")) { RedirectStandardError = true, RedirectStandardOutput = true };
        psi.ArgumentList.Add(dir);
        psi.ArgumentList.Add(nestedPaging ? "npt=1" : "npt=0");
        psi.ArgumentList.Add(Cache);
        psi.Environment["VMHOST_OWNER"] = Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture);
        Process qemu = Process.Start(psi)!;
        var errors = new ConcurrentQueue<string>();
        qemu.ErrorDataReceived += (_, e) => { if (e.Data is not null) errors.Enqueue(e.Data); };
        qemu.OutputDataReceived += (_, e) => { if (e.Data is not null) errors.Enqueue(e.Data); };
        qemu.BeginErrorReadLine();
        qemu.BeginOutputReadLine();

        // boot.sh makes the FIFOs after preparing the kernel (a download on a fresh machine): wait for them.
        string fromVm = Path.Combine(dir, "ctl.out"), toVm = Path.Combine(dir, "ctl.in");
        var deadline = DateTime.UtcNow.AddMinutes(5);
        while (!(File.Exists(fromVm) && File.Exists(toVm)))
        {
            if (qemu.HasExited || DateTime.UtcNow > deadline)
                throw BootFailure(dir, qemu, errors, "boot.sh ended before the VM started");
            Thread.Sleep(100);
        }
        // Opened read-write: the open of a FIFO never blocks then, whether or not QEMU holds its end yet.
        var fromStream = new FileStream(fromVm, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 1);
        var reader = new StreamReader(fromStream);
        var writer = new StreamWriter(new FileStream(toVm, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 1)) { AutoFlush = true, NewLine = "\n" };
        var vm = new TestVm(dir, qemu, fromStream, writer);
        var thread = new Thread(() =>
        {
            try
            {
                while (reader.ReadLine() is string line && !vm._closing)
                    vm._replies.Add(line);
            }
            catch (IOException) { }
            catch (ObjectDisposedException) { }
        }) { IsBackground = true, Name = "test VM control" };
        thread.Start();

        string ready = vm.NextReply(TimeSpan.FromMinutes(3), "the VM's first line");
        if (!ready.StartsWith("ready ", StringComparison.Ordinal))
        {
            vm.Dispose();
            throw BootFailure(dir, qemu, errors, ready);
        }
        vm.Description = ready["ready ".Length..];
        return vm;
    }

    private static InvalidOperationException BootFailure(string dir, Process qemu, IEnumerable<string> errors, string what)
    {
        string console = File.Exists(Path.Combine(dir, "console.log")) ? File.ReadAllText(Path.Combine(dir, "console.log")) : "";
        if (!qemu.HasExited)
            qemu.Kill(entireProcessTree: true);
        return new InvalidOperationException(
            $"the test VM did not boot: {what}\n{string.Join('\n', errors)}\nconsole:\n{Tail(console, 4000)}");
    }

    /// <summary>"6.1.0-57-amd64 npt=Y": the guest's kernel and whether kvm_amd uses nested paging.</summary>
    public string Description { get; private set; } = "";

    /// <summary>Whether kvm_amd runs with nested paging (npt=Y), as the guest said at boot or at the last reload.</summary>
    public bool NestedPaging => Description.EndsWith("npt=Y", StringComparison.Ordinal) || Description.EndsWith("npt=1", StringComparison.Ordinal);

    /// <summary>A command stalled or ran out of time: the guest is of no more use.</summary>
    public bool Stalled => _stalled;

    /// <summary>The share the guest sees as /run/vmhost: commands and their results.</summary>
    public string Share => Path.Combine(_dir, "share");

    public string Console => File.Exists(Path.Combine(_dir, "console.log")) ? File.ReadAllText(Path.Combine(_dir, "console.log")) : "";

    /// <summary>Runs <paramref name="script"/> (sh) in the guest, in the host's root with the guest's kernel; returns
    /// its exit code and everything it wrote to stdout and stderr. <paramref name="stalled"/>, asked every half second,
    /// says when the guest has stopped making progress (a hung guest kernel answers nothing, ever): the command is then
    /// given up with <see cref="TestVmStalled"/>, as it is past <paramref name="timeout"/>.</summary>
    public (int ExitCode, string Output) Run(string script, TimeSpan timeout, Func<string?>? stalled = null) =>
        Command("run", script, timeout, stalled);

    /// <summary>What command <paramref name="id"/> has written so far (the guest writes it to the share as it runs).</summary>
    public string OutputSoFar(int id)
    {
        try
        {
            using var f = new FileStream(Path.Combine(Share, $"{id}.out"), FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            return new StreamReader(f).ReadToEnd();
        }
        catch (IOException)
        {
            return "";
        }
    }

    /// <summary>The id the next command will get.</summary>
    public int NextCommand => Volatile.Read(ref _commands) + 1;

    /// <summary>Reloads kvm_amd with nested paging on (npt=1) or off (npt=0, shadow paging). No VM may run.</summary>
    public void SetNestedPaging(bool on)
    {
        (int code, string output) = Command("init",
            $"rmmod kvm_amd && insmod /modules/kvm-amd.ko npt={(on ? 1 : 0)} && cat /sys/module/kvm_amd/parameters/npt",
            TimeSpan.FromMinutes(1));
        if (code != 0)
            throw new InvalidOperationException($"reloading kvm_amd with npt={(on ? 1 : 0)} failed ({code}): {output}");
        Description = $"{Description.Split(' ')[0]} npt={output.Trim()}";
    }

    private (int, string) Command(string verb, string script, TimeSpan timeout, Func<string?>? stalled = null)
    {
        int id = Interlocked.Increment(ref _commands);
        File.WriteAllText(Path.Combine(Share, $"{id}.sh"), script);
        _control.WriteLine($"{verb} {id}");
        string reply = NextReply(timeout, $"command {id}", stalled);
        string[] parts = reply.Split(' ');
        if (parts.Length != 2 || parts[0] != id.ToString(System.Globalization.CultureInfo.InvariantCulture))
            throw new InvalidOperationException($"the test VM answered '{reply}' to command {id}");
        string output = File.ReadAllText(Path.Combine(Share, $"{id}.out"));
        return (int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture), output);
    }

    private string NextReply(TimeSpan timeout, string what, Func<string?>? stalled = null)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            if (_replies.TryTake(out string? line, TimeSpan.FromMilliseconds(500)))
                return line;
            if (_qemu.HasExited)
            {
                _stalled = true; // its kernel panicked (QEMU runs with -no-reboot), or QEMU itself failed
                throw new TestVmStalled($"the test VM stopped while waiting for {what}", ConsoleSummary());
            }
            if (DateTime.UtcNow > deadline)
            {
                _stalled = true;
                throw new TestVmStalled($"the test VM gave no answer to {what} in {timeout.TotalSeconds:0} s", ConsoleSummary());
            }
            if (stalled?.Invoke() is string why)
            {
                _stalled = true;
                throw new TestVmStalled($"the test VM stalled during {what}: {why}", ConsoleSummary());
            }
        }
    }

    private static string Tail(string s, int n) => s.Length <= n ? s : s[^n..];

    /// <summary>What a dying guest kernel said first (panic, BUG, lockup, stall: later lines repeat or trace it), then
    /// the end of its console.</summary>
    private string ConsoleSummary()
    {
        string console = Console;
        var first = console.Split('\n').Where(l => l.Contains("Kernel panic", StringComparison.Ordinal) || l.Contains("BUG:", StringComparison.Ordinal)
            || l.Contains("Oops", StringComparison.Ordinal) || l.Contains("stall", StringComparison.Ordinal)).Take(3);
        return string.Join('\n', first) + "\n...\n" + Tail(console, 2000);
    }

    /// <summary>Powers the VM off (QEMU is killed if it does not stop within 30 s) and removes its files.</summary>
    public void Dispose()
    {
        try
        {
            if (!_qemu.HasExited && !_stalled)
                _control.WriteLine("off 0");
        }
        catch (IOException) { }
        if (!_qemu.WaitForExit(_stalled ? 0 : 30_000))
            _qemu.Kill(entireProcessTree: true);
        _qemu.WaitForExit();
        _qemu.Dispose();
        // The reader holds the FIFO open for writing too, so it never sees EOF: a line of our own ends its loop.
        _closing = true;
        _fromVm.Write("\n"u8);
        _fromVm.Dispose();
        _control.Dispose();
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException) { }
    }
}

/// <summary>A command the test VM stopped making progress on, did not finish in its time, or died during: the VM is of
/// no more use (its kernel hung or panicked) and is killed.</summary>
public sealed class TestVmStalled(string message, string console) : TimeoutException(message)
{
    /// <summary>The end of the guest's console: a hung kernel says why there (soft lockup, RCU stall).</summary>
    public string ConsoleTail { get; } = console;
}
