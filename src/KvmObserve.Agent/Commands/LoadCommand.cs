using System.CommandLine;
using System.Globalization;
using KvmObserve.Workload;

namespace KvmObserve.Agent.Commands;

/// <summary>`kvmobserve load`: the built-in micro-VM workload; prints as JSON exactly what it drove.</summary>
internal static class LoadCommand
{
    public static Command Create()
    {
        var mode = new Option<string[]>("--mode") { Description = "pio, mmio, msr, cpuid, hlt, touch or all (repeat or comma-separate)", AllowMultipleArgumentsPerToken = true };
        var vms = new Option<int>("--vms") { Description = "VMs, one process each", DefaultValueFactory = _ => 1 };
        var vcpus = new Option<int>("--vcpus") { Description = "vCPUs per VM", DefaultValueFactory = _ => 1 };
        var count = new Option<long>("--count") { Description = "operations per mode per vCPU", DefaultValueFactory = _ => 10_000 };
        var duration = new Option<double?>("--duration") { Description = "seconds: repeat rounds of --count until then" };
        var name = new Option<string>("--name") { Description = "VM name (with --vms N: NAME-0 ... NAME-N-1)", DefaultValueFactory = _ => "load" };
        var timer = new Option<long>("--timer-ns") { Description = "hlt mode: APIC timer period", DefaultValueFactory = _ => 200_000 };
        var delay = new Option<long>("--start-delay-ms") { Description = "wait this long after the vCPU threads are created and named, before the guest runs (lets per-thread observers attach)" };
        var pin = new Option<bool>("--pin") { Description = "pin vCPU N to CPU N % nproc" };
        var cycles = new Option<long>("--cycles") { Description = "start and stop the VMs this many times, one after the other (names get -cN)", DefaultValueFactory = _ => 1 };
        var cgroup = new Option<string?>("--cgroup") { Description = "a cgroup v2 directory: each VM in a cgroup of its own below it (kvmobserve-load-NAME), as libvirt does; removed after" };
        var child = new Option<bool>(Workload.LoadRunner.ChildFlag) { Hidden = true };

        var command = new Command("load", "Run micro-VMs that drive kvm events; print what was driven as JSON")
        {
            mode, vms, vcpus, count, duration, name, timer, delay, pin, cycles, cgroup, child,
        };
        command.SetAction(parse =>
        {
            LoadOptions options;
            try
            {
                options = new LoadOptions
                {
                    Modes = LoadOptions.ParseModes(parse.GetValue(mode) ?? []),
                    Vms = (int)InRange("--vms", parse.GetValue(vms), 1, 64),
                    Vcpus = (int)InRange("--vcpus", parse.GetValue(vcpus), 1, 64),
                    Count = (uint)InRange("--count", parse.GetValue(count), 1, 10_000_000),
                    Duration = parse.GetValue(duration) is double s ? s > 0 ? TimeSpan.FromSeconds(s)
                        : throw new ArgumentException("--duration: must be a positive number of seconds") : null,
                    Name = parse.GetValue(name) is { Length: > 0 } n ? n : throw new ArgumentException("--name: must not be empty"),
                    TimerPeriodNs = (uint)InRange("--timer-ns", parse.GetValue(timer), 10_000, 1_000_000_000),
                    StartDelay = TimeSpan.FromMilliseconds(InRange("--start-delay-ms", parse.GetValue(delay), 0, 600_000)),
                    Pin = parse.GetValue(pin),
                    Cycles = (int)InRange("--cycles", parse.GetValue(cycles), 1, 100_000),
                    Cgroup = parse.GetValue(cgroup) is { Length: > 0 } g ? Path.GetFullPath(g) : null,
                };
            }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"kvmobserve load: {e.Message}");
                return 2;
            }
            try
            {
                Console.Out.WriteLine(parse.GetValue(child) ? LoadRunner.RunChild(options) : LoadRunner.RunParent(options, Console.Error));
                return 0;
            }
            catch (Exception e) when (e is InvalidOperationException or IOException or NotSupportedException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"kvmobserve load: {e.Message}");
                return 1;
            }
        });
        return command;
    }

    private static long InRange(string option, long value, long min, long max) =>
        value >= min && value <= max ? value
            : throw new ArgumentException($"{option}: {value.ToString(CultureInfo.InvariantCulture)} is outside {min}..{max}");
}
