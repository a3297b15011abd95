using BenchmarkDotNet.Attributes;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Tests;

namespace KvmObserve.Benchmarks;

/// <summary>
/// What finding VMs costs the agent: a procfs tree of 300 processes of 40 fds each (a busy host's userland) and 2
/// VMMs of 4 vCPUs. A full scan reads every process's fds (once a minute, and for each process whose fds changed);
/// a steady scan skips those that did not change (every 2 s, and every 40 ms while a counting source waits for a new
/// VM's vCPUs); a VM's fds are walked again when its threads or fds changed in number.
/// </summary>
[MemoryDiagnoser]
public class DiscoveryScanBenchmark
{
    public const int Processes = 300, FdsEach = 40;

    private FakeProc _proc = null!;
    private VmRegistry _steady = null!;
    private VmInfo _vm = null!;

    [GlobalSetup]
    public void Setup()
    {
        _proc = new FakeProc();
        for (int p = 0; p < Processes; p++)
        {
            int pid = 1000 + p;
            _proc.Write($"{pid}/stat", $"{pid} (worker-{p}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {500 + p} 0 0");
            _proc.Write($"{pid}/task/{pid}/comm", $"worker-{p}\n");
            Directory.CreateDirectory(Path.Combine(_proc.Root, $"{pid}/fd"));
            for (int fd = 0; fd < FdsEach; fd++)
                File.CreateSymbolicLink(Path.Combine(_proc.Root, $"{pid}/fd/{fd}"), fd % 2 == 0 ? $"socket:[{pid * 100 + fd}]" : $"/var/lib/worker/{p}/file-{fd}");
        }
        for (int v = 0; v < 2; v++)
        {
            int pid = 5000 + v * 100;
            _proc.Vm(pid, "qemu-system-x86", $"qemu-system-x86_64\0-name\0guest=vm-{v}\0", threads:
                [(pid, "qemu-system-x86"), (pid + 1, "CPU 0/KVM"), (pid + 2, "CPU 1/KVM"), (pid + 3, "CPU 2/KVM"), (pid + 4, "CPU 3/KVM")]);
            for (int vcpu = 0; vcpu < 4; vcpu++)
                _proc.VcpuFd(pid, 20 + vcpu, vcpu);
            for (int fd = 30; fd < 30 + FdsEach; fd++)
                File.CreateSymbolicLink(Path.Combine(_proc.Root, $"{pid}/fd/{fd}"), $"/var/lib/libvirt/images/vm-{v}-{fd}.qcow2");
        }
        _steady = new VmRegistry(_proc.Root);
        _steady.Scan(); // the full one
        _vm = _steady.Vms().First();
    }

    [GlobalCleanup]
    public void Cleanup() => _proc.Dispose();

    [Benchmark(Description = "full scan: every process's fds")]
    public int FullScan()
    {
        var registry = new VmRegistry(_proc.Root); // a registry's first scan walks everything
        registry.Scan();
        return registry.Vms().Count;
    }

    [Benchmark(Description = "steady scan: unchanged processes skipped")]
    public int SteadyScan()
    {
        _steady.Scan();
        return _steady.Vms().Count;
    }
}
