using KvmObserve.Aggregation.Discovery;

namespace KvmObserve.Tests;

/// <summary>VM discovery on procfs trees laid out as each VMM leaves them: command line, thread names, cgroup, fds.</summary>
public sealed class DiscoveryTests : IDisposable
{
    private readonly FakeProc _proc = new();

    public void Dispose() => _proc.Dispose();

    private VmRegistry Scan()
    {
        var registry = new VmRegistry(_proc.Root);
        registry.Scan();
        return registry;
    }

    [Fact]
    public void Each_vmm_is_named_from_its_command_line_and_its_vcpu_threads_from_their_names()
    {
        _proc.Vm(100, "qemu-system-x86", "/usr/bin/qemu-system-x86_64\0-name\0guest=db,debug-threads=on\0-uuid\0c0ffee00-0000-4000-8000-000000000001\0",
            threads: [(100, "qemu-system-x86"), (101, "CPU 0/KVM"), (102, "CPU 1/KVM")]);
        _proc.Vm(200, "firecracker", "/usr/bin/firecracker\0--id\0fn-7\0--api-sock\0/run/fc.sock\0",
            threads: [(200, "firecracker"), (201, "fc_vcpu 0")]);
        _proc.Vm(300, "cloud-hyperviso", "/usr/bin/cloud-hypervisor\0--api-socket\0path=/run/ch/web.sock\0",
            threads: [(300, "cloud-hyperviso"), (301, "vcpu0"), (302, "vcpu1")]);
        _proc.Vm(400, "crosvm", "/usr/bin/crosvm\0run\0--socket\0/run/crosvm/ci.sock\0bzImage\0",
            threads: [(400, "crosvm"), (401, "crosvm_vcpu3")]);
        _proc.Vm(500, "myvmm", "/opt/myvmm\0--fast\0", threads: [(500, "myvmm"), (501, "worker")]);
        _proc.Vm(600, "bash", "bash\0", vmFd: false); // no VM fd: not a VM
        VmRegistry registry = Scan();

        Assert.Equal(["ci", "db", "fn-7", "myvmm-500", "web"], registry.Vms().Select(v => v.Name).Order().ToArray());
        Assert.Equal(("db", 1), Who(registry, 102));
        Assert.Equal("c0ffee00-0000-4000-8000-000000000001", registry.Vms().Single(v => v.Name == "db").Uuid);
        Assert.Equal(("fn-7", 0), Who(registry, 201));
        Assert.Equal(("web", 1), Who(registry, 302));
        Assert.Equal(("ci", 3), Who(registry, 401));
        Assert.Equal(("myvmm-500", -1), Who(registry, 501)); // any process with a kvm-vm fd: comm-pid
        Assert.Equal(["qemu", "firecracker", "cloud-hypervisor", "crosvm", "myvmm"], registry.Vms().OrderBy(v => v.Pid).Select(v => v.Vmm));
    }

    private static (string, int) Who(VmRegistry registry, int tid)
    {
        ThreadIdentity who = registry.Resolve(tid);
        return (who.Vm.Name, who.Vcpu);
    }

    /// <summary>A VM learnt at its creation whose vCPU threads came and went before anything looked at procfs: the
    /// process a record named is enough. A thread no record named stays unknown.</summary>
    [Fact]
    public void A_thread_gone_before_it_was_named_goes_to_the_vm_its_records_named()
    {
        _proc.Vm(700, "dotnet", "dotnet\0kvmobserve.dll\0load\0--vm-child\0--name\0short-1\0");
        var registry = new VmRegistry(_proc.Root);
        Assert.Equal("short-1", registry.Learn(700)!.Name);
        _proc.Thread(700, 701, "vcpu-0");
        _proc.Thread(700, 702, "vcpu-1");
        registry.NoteProcess(701, 700);
        _proc.Exit(700);

        Assert.Equal(("short-1", -1), Who(registry, 701));
        Assert.Equal(("unknown", -1), Who(registry, 702));
    }

    /// <summary>A thread gone from a VM that still runs, named by its record's process, though no scan saw the VM.</summary>
    [Fact]
    public void A_gone_thread_of_a_running_vm_no_scan_saw_is_given_to_it()
    {
        _proc.Vm(800, "qemu-system-x86", "/usr/bin/qemu-system-x86_64\0-name\0guest=late\0");
        var registry = new VmRegistry(_proc.Root);
        registry.NoteProcess(801, 800); // 801 exited before anything read procfs
        Assert.Equal(("late", -1), Who(registry, 801));
    }

    /// <summary>tracefs records name no process: a gone thread is given to the process of the thread that created it,
    /// followed through threads that created threads, up to one the registry knows or that still runs.</summary>
    [Fact]
    public void A_gone_thread_goes_to_the_process_of_the_threads_that_created_it()
    {
        _proc.Vm(900, "dotnet", "dotnet\0kvmobserve.dll\0load\0--vm-child\0--name\0chain\0");
        _proc.Vm(950, "bash", "bash\0", vmFd: false);
        var registry = new VmRegistry(_proc.Root);
        registry.Learn(900);
        registry.NoteThreadCreated(901, 900); // the main thread made a worker
        registry.NoteThreadCreated(902, 901); // which made the vCPU thread
        registry.NoteThreadCreated(951, 950); // a thread of a process that still runs, unseen so far
        _proc.Exit(900);

        Assert.Equal(("chain", -1), Who(registry, 902));
        Assert.Equal(("chain", -1), Who(registry, 901));
        Assert.Equal(("bash-950", -1), Who(registry, 951));
    }

    [Theory]
    [InlineData("change@/devices/virtual/misc/kvm\0ACTION=change\0DEVPATH=/devices/virtual/misc/kvm\0SUBSYSTEM=misc\0CREATED=3\0COUNT=1\0EVENT=create\0PID=4242\0STATS_PATH=/sys/kernel/debug/kvm/4242-11\0", 4242)]
    [InlineData("change@/devices/virtual/misc/kvm\0ACTION=change\0DEVPATH=/devices/virtual/misc/kvm\0SUBSYSTEM=misc\0CREATED=3\0COUNT=0\0EVENT=destroy\0PID=4242\0", null)]
    [InlineData("add@/devices/virtual/net/tap0\0ACTION=add\0DEVPATH=/devices/virtual/net/tap0\0EVENT=create\0PID=7\0", null)]
    [InlineData("change@/devices/virtual/misc/kvm\0DEVPATH=/devices/virtual/misc/kvm\0EVENT=create\0PID=x\0", null)]
    [InlineData("", null)]
    public void A_vm_creation_uevent_gives_its_process(string message, int? pid) =>
        Assert.Equal(pid, KvmObserve.Native.Kvm.KvmUevents.TryParseCreated(System.Text.Encoding.ASCII.GetBytes(message)));

    [Theory]
    [InlineData("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f3e8a2c_1b2d_4e6f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-0a1b2c.scope\n",
        "5f3e8a2c-1b2d-4e6f-8a9b-0c1d2e3f4a5b")]
    [InlineData("0::/kubepods/burstable/pod5f3e8a2c-1b2d-4e6f-8a9b-0c1d2e3f4a5b/0a1b2c3d4e\n", "5f3e8a2c-1b2d-4e6f-8a9b-0c1d2e3f4a5b")]
    [InlineData("0::/kubepods.slice/kubepods-pod5f3e8a2c_1b2d_4e6f_8a9b_0c1d2e3f4a5b.slice/crio-0a1b.scope\n", "5f3e8a2c-1b2d-4e6f-8a9b-0c1d2e3f4a5b")]
    [InlineData("12:memory:/kubepods/besteffort/pod5f3e8a2c-1b2d-4e6f-8a9b-0c1d2e3f4a5b/0a1b\n11:cpu:/\n", "5f3e8a2c-1b2d-4e6f-8a9b-0c1d2e3f4a5b")]
    [InlineData("0::/system.slice/libvirtd.service\n", null)]
    [InlineData("0::/machine.slice/machine-qemu\\x2d1\\x2dweb.scope/libvirt/vcpu0\n", null)]
    public void Pod_uids_from_cgroup_paths(string cgroup, string? uid) => Assert.Equal(uid, ProcfsParsers.KubernetesPodUid(cgroup));

    /// <summary>A QEMU of one vCPU (thread 101, fd 10), plus <paramref name="others"/>, scanned.</summary>
    private (VmRegistry, VmInfo) QemuWithVcpu0(params (int Tid, string Comm)[] others)
    {
        _proc.Vm(100, "qemu-system-x86", "qemu-system-x86_64\0-name\0db\0", threads: [(100, "qemu-system-x86"), (101, "CPU 0/KVM"), .. others]);
        _proc.VcpuFd(100, 10, 0);
        VmRegistry registry = Scan();
        return (registry, registry.Vms().Single());
    }

    /// <summary>A VM's vCPU fds are walked once and then trusted while its thread and fd counts stand (the counting
    /// source asks every poll); a new vCPU comes with a new thread, and is seen at once.</summary>
    [Fact]
    public void A_vms_vcpu_fds_are_walked_again_when_it_gains_a_thread()
    {
        (VmRegistry registry, VmInfo vm) = QemuWithVcpu0();
        IReadOnlyList<int> first = registry.VcpuFds(vm);
        Assert.Equal([0], first);
        Assert.Same(first, registry.VcpuFds(vm)); // nothing changed: not walked again

        _proc.Thread(100, 102, "CPU 1/KVM"); // a vCPU added to the running VM: its thread, its fd
        _proc.VcpuFd(100, 11, 1);
        Assert.Equal([0, 1], registry.VcpuFds(vm));

        _proc.Exit(100);
        Assert.Empty(registry.VcpuFds(vm));
    }

    /// <summary>Counts alone can come back to a pair the registry has walked: a thread exits as a new vCPU's thread
    /// starts, a socket closes as its fd opens. The new thread's tid is new to the process, so its fds are walked
    /// again. (A stale "no vCPU fd" would let perf-count close a window on a VM about to run. The losses `overhead`
    /// saw had another cause, the wait on an open of /dev/kvm: see PerfCountWindowTests.)</summary>
    [Fact]
    public void A_vcpu_thread_that_starts_as_another_thread_exits_is_seen_though_the_counts_stand()
    {
        (VmRegistry registry, VmInfo vm) = QemuWithVcpu0((102, "worker"));
        Assert.Equal([0], registry.VcpuFds(vm));

        Directory.Delete(Path.Combine(_proc.Root, "100/task/102"), recursive: true); // the worker exits...
        Directory.Delete(Path.Combine(_proc.Root, "102"), recursive: true);
        _proc.Thread(100, 103, "CPU 1/KVM"); // ...as vCPU 1's thread starts: three threads still
        _proc.VcpuFd(100, 11, 1);
        Assert.Equal([0, 1], registry.VcpuFds(vm));
        Assert.True(registry.HoldsVmFd(vm));
    }

    /// <summary>A fresh walk does not trust the counts: what a counting source closes its window on.</summary>
    [Fact]
    public void A_fresh_walk_sees_an_fd_the_counts_do_not_tell_of()
    {
        (VmRegistry registry, VmInfo vm) = QemuWithVcpu0();
        IReadOnlyList<int> first = registry.VcpuFds(vm);
        Assert.Equal([0], first);

        _proc.VcpuFd(100, 11, 1); // no new thread (yet), and this tree's fd directory keeps its size
        Assert.Same(first, registry.VcpuFds(vm)); // a poll trusts the counts
        Assert.Equal([0, 1], registry.VcpuFds(vm, fresh: true));
        Assert.Equal([0, 1], registry.VcpuFds(vm)); // and the cache has the fresh walk
    }

    /// <summary>A process once found to hold no VM fd is not walked again until its fd directory changes: one that
    /// opens a VM afterwards is found at the next scan, and one that exits and whose pid comes back as a VMM too.</summary>
    [Fact]
    public void A_process_that_opens_a_vm_after_a_scan_is_found_at_the_next()
    {
        _proc.Vm(600, "bash", "bash\0", vmFd: false);
        _proc.Vm(700, "myvmm", "/opt/myvmm\0", vmFd: false, start: 7000);
        VmRegistry registry = Scan();
        Assert.Empty(registry.Vms());
        registry.Scan(); // a scan that trusts what it learnt: nothing changed
        Assert.Empty(registry.Vms());

        Thread.Sleep(20); // a later mtime on file systems with coarse timestamps
        File.CreateSymbolicLink(Path.Combine(_proc.Root, "700/fd/7"), ProcfsParsers.KvmVmFdTarget);
        registry.Scan();
        Assert.Equal([700], registry.Vms().Select(v => v.Pid));

        _proc.Exit(600);
        _proc.Vm(600, "qemu-system-x86", "qemu-system-x86_64\0-name\0back\0", start: 9000); // the pid, reused
        registry.Scan();
        Assert.Equal("back", registry.Vms().Single(v => v.Pid == 600).Name);
    }

    [Fact]
    public void A_kubevirt_vm_is_named_namespace_slash_vmi_with_its_pod()
    {
        _proc.Vm(700, "qemu-kvm", "/usr/libexec/qemu-kvm\0-name\0guest=prod_billing-db,debug-threads=on\0",
            cgroup: "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f3e8a2c_1b2d_4e6f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-0a1b.scope\n",
            threads: [(700, "qemu-kvm"), (701, "CPU 0/KVM")]);
        VmInfo vm = Scan().Vms().Single();
        Assert.Equal(("prod/billing-db", "prod", "5f3e8a2c-1b2d-4e6f-8a9b-0c1d2e3f4a5b", "kubevirt"), (vm.Name, vm.Namespace, vm.PodUid, vm.Vmm));
    }

    [Fact]
    public void Vms_named_alike_are_made_unique_and_a_restart_takes_its_name_back()
    {
        _proc.Vm(100, "qemu-system-x86", "qemu-system-x86_64\0-name\0web\0", start: 5000);
        _proc.Vm(200, "qemu-system-x86", "qemu-system-x86_64\0-name\0web\0", start: 5001);
        _proc.Vm(300, "qemu-system-x86", "qemu-system-x86_64\0-name\0web\0", start: 5002);
        VmRegistry registry = Scan();
        Assert.Equal(["web", "web-200", "web-300"], registry.Vms().Select(v => v.Name).Order().ToArray());
        _proc.Exit(100);
        registry.Scan();
        _proc.Vm(400, "qemu-system-x86", "qemu-system-x86_64\0-name\0web\0", start: 6000);
        registry.Scan();
        Assert.Equal("web", registry.Vms().Single(v => v.Pid == 400).Name); // the exited one's name, continued
    }

    [Theory]
    [InlineData("16 0x12 0xae80 0x0 0x0 0x0 0x0 0x7ffd1c5e0a38 0x7f2b8c11b94f\n", 18)]
    [InlineData("16 0x5 0xc008aeba 0x7f00 0x0 0x0 0x0 0x7ffd 0x7f2b\n", 5)]
    [InlineData("running\n", null)]
    [InlineData("-1 0x7ffd1c5e0a38 0x7f2b8c11b94f\n", null)]
    [InlineData("7 0x55d 0x1 0xffffffff 0x0 0x0 0x0 0x7ffd 0x7f2b\n", null)] // poll, not ioctl
    public void The_fd_of_a_blocking_ioctl_from_the_syscall_file(string syscall, int? fd) => Assert.Equal(fd, ProcfsParsers.IoctlFd(syscall));

    [Fact]
    public void A_vcpu_thread_with_a_plain_name_gets_its_index_from_the_kvm_vcpu_fd_it_blocks_on()
    {
        _proc.Vm(100, "myvmm", "/opt/myvmm\0", threads: [(100, "myvmm"), (101, "worker"), (102, "worker")]);
        _proc.VcpuFd(100, 12, 0);
        _proc.VcpuFd(100, 13, 1);
        _proc.Write("100/task/101/syscall", "16 0xd 0xae80 0x0 0x0 0x0 0x0 0x7ffd 0x7f2b\n"); // KVM_RUN on fd 13
        _proc.Write("100/task/102/syscall", "running\n");
        VmRegistry registry = Scan();
        Assert.Equal(1, registry.VcpuFromFd(101, DateTime.UtcNow));
        Assert.Equal(("myvmm-100", 1), Who(registry, 101));
        Assert.Null(registry.VcpuFromFd(102, DateTime.UtcNow)); // in guest mode now: tried again later
        _proc.Write("100/task/102/syscall", "16 0xc 0xae80 0x0 0x0 0x0 0x0 0x7ffd 0x7f2b\n");
        Assert.Null(registry.VcpuFromFd(102, DateTime.UtcNow)); // not before a second has passed
        Assert.Equal(0, registry.VcpuFromFd(102, DateTime.UtcNow.AddSeconds(2)));
    }

    /// <summary>Two threads keep the registry fresh (the discovery thread; perf-count in its windows): a scan asked for
    /// within a while of the last one is skipped, and a reader can tell from ScansDone whether anything was learnt.</summary>
    [Fact]
    public void A_scan_soon_after_another_is_skipped_when_asked_and_each_scan_done_is_counted()
    {
        var registry = new VmRegistry(_proc.Root);
        Assert.Equal(DateTime.MinValue, registry.LastScanAt);
        Assert.True(registry.Scan(unlessWithin: TimeSpan.FromMinutes(1))); // never scanned: scans
        DateTime first = registry.LastScanAt;
        Assert.InRange(DateTime.UtcNow - first, TimeSpan.Zero, TimeSpan.FromMinutes(1));

        _proc.Vm(100, "myvmm", "/opt/myvmm\0", threads: [(100, "myvmm")]);
        Assert.False(registry.Scan(unlessWithin: TimeSpan.FromMinutes(1)));
        Assert.Empty(registry.Vms()); // not scanned: not learnt
        Assert.Equal((1L, first), (registry.ScansDone, registry.LastScanAt));

        registry.Scan(); // a plain scan always scans
        Assert.Equal(2, registry.ScansDone);
        Assert.True(registry.LastScanAt >= first);
        Assert.Single(registry.Vms());
        Thread.Sleep(20);
        Assert.True(registry.Scan(unlessWithin: TimeSpan.FromMilliseconds(10)));
        Assert.Equal(3, registry.ScansDone);
    }

    /// <summary>A thread of a running VM not named for a vCPU is looked at again by its name alone (it may name itself
    /// later), and until it does its first identity stands, with the time it was learnt.</summary>
    [Fact]
    public void A_thread_not_named_for_a_vcpu_is_looked_at_again_by_its_name_alone_and_keeps_when_it_was_learnt()
    {
        _proc.Vm(100, "myvmm", "/opt/myvmm\0", threads: [(100, "myvmm"), (101, "worker")]);
        VmRegistry registry = Scan();
        ThreadIdentity first = registry.Resolve(101);
        Assert.Equal(-1, first.Vcpu);
        Thread.Sleep(20);
        Assert.Same(first, registry.Resolve(101)); // not a fresh identity at each look: the fold's grace runs from the first

        File.Delete(Path.Combine(_proc.Root, "101", "status")); // a second look reads /proc/PID/task/TID/comm only
        _proc.Write("100/task/101/comm", "CPU 2/KVM\n");
        ThreadIdentity named = registry.Resolve(101);
        Assert.Equal((first.Vm, 2), (named.Vm, named.Vcpu));
    }
}
