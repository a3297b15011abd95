using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using KvmObserve.Native;
using KvmObserve.Native.Kvm;

namespace KvmObserve.Workload;

/// <summary>`kvmobserve load`: one child process per VM (one VM per process, as QEMU and Firecracker run), each
/// named with --name so the agent can label it; the parent gathers their reports into one JSON document.</summary>
public static class LoadRunner
{
    public const string ChildFlag = "--vm-child";

    /// <summary>Runs the VMs and returns the combined JSON report.</summary>
    public static string RunParent(LoadOptions options, TextWriter log)
    {
        KvmDevice.ThrowIfMissing(); // said once, not by each VM's process
        var vms = new List<JsonElement>();
        for (int cycle = 0; cycle < options.Cycles; cycle++)
            vms.AddRange(RunVms(options, cycle, log));
        return LoadReportJson.Serialize(vms);
    }

    private static List<JsonElement> RunVms(LoadOptions options, int cycle, TextWriter log)
    {
        var children = new List<Process>();
        var outputs = new List<Task<string>>();
        var errors = new List<Task<string>>();
        var cgroups = new List<string>();
        try
        {
            for (int i = 0; i < options.Vms; i++)
            {
                string name = options.Vms == 1 ? options.Name : $"{options.Name}-{i}";
                if (options.Cycles > 1)
                    name += $"-c{cycle}";
                string? cgroup = null;
                if (options.Cgroup is string parent)
                    cgroups.Add(cgroup = VmCgroup.Create(parent, name));
                Process child = Process.Start(ChildStartInfo(options, name, cgroup))
                    ?? throw new InvalidOperationException("could not start a VM process");
                children.Add(child);
                outputs.Add(child.StandardOutput.ReadToEndAsync());
                errors.Add(child.StandardError.ReadToEndAsync());
            }
            var vms = new List<JsonElement>();
            for (int i = 0; i < children.Count; i++)
            {
                children[i].WaitForExit();
                string stderr = errors[i].Result;
                if (stderr.Length > 0)
                    log.Write(stderr);
                if (children[i].ExitCode != 0)
                    throw new InvalidOperationException($"VM process {i} failed with exit code {children[i].ExitCode}");
                vms.Add(JsonDocument.Parse(outputs[i].Result).RootElement.Clone());
            }
            return vms;
        }
        finally
        {
            foreach (Process p in children)
            {
                if (!p.HasExited)
                    p.Kill();
                p.WaitForExit();
                p.Dispose();
            }
            foreach (string cgroup in cgroups)
                VmCgroup.Remove(cgroup);
        }
    }

    /// <summary>The child's side: one VM in this process, its report as JSON on stdout.</summary>
    public static string RunChild(LoadOptions options)
    {
        Sys.SetParentDeathSignal(9); // SIGKILL: a VM never outlives its `load`
        if (options.Cgroup is string cgroup)
            VmCgroup.Enter(cgroup); // before /dev/kvm is opened: the VM's every thread is born in it
        return LoadReportJson.Serialize(VmRunner.Run(options, options.Name));
    }

    private static ProcessStartInfo ChildStartInfo(LoadOptions o, string name, string? cgroup)
    {
        var psi = new ProcessStartInfo
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("no process path");
        string arg0 = Environment.GetCommandLineArgs()[0];
        psi.FileName = process;
        if (Path.GetFileNameWithoutExtension(process) == "dotnet" && arg0.EndsWith(".dll", StringComparison.Ordinal))
            psi.ArgumentList.Add(arg0);
        psi.ArgumentList.Add("load");
        psi.ArgumentList.Add(ChildFlag);
        Add(psi, "--name", name);
        Add(psi, "--mode", string.Join(',', Enum.GetValues<LoadMode>().Where(m => m != LoadMode.None && o.Modes.HasFlag(m))
            .Select(m => m.ToString().ToLowerInvariant())));
        Add(psi, "--vcpus", o.Vcpus.ToString(CultureInfo.InvariantCulture));
        Add(psi, "--vms", o.Vms.ToString(CultureInfo.InvariantCulture)); // how many share the CPUs: its watchdog's limit
        Add(psi, "--count", o.Count.ToString(CultureInfo.InvariantCulture));
        Add(psi, "--timer-ns", o.TimerPeriodNs.ToString(CultureInfo.InvariantCulture));
        if (o.Duration is TimeSpan d)
            Add(psi, "--duration", d.TotalSeconds.ToString(CultureInfo.InvariantCulture));
        if (o.StartDelay > TimeSpan.Zero)
            Add(psi, "--start-delay-ms", ((long)o.StartDelay.TotalMilliseconds).ToString(CultureInfo.InvariantCulture));
        if (o.Pin)
            psi.ArgumentList.Add("--pin");
        if (cgroup is not null)
            Add(psi, "--cgroup", cgroup);
        return psi;
    }

    private static void Add(ProcessStartInfo psi, string option, string value)
    {
        psi.ArgumentList.Add(option);
        psi.ArgumentList.Add(value);
    }
}
