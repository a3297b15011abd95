using KvmObserve.Aggregation.Discovery;

namespace KvmObserve.Tests;

public class ProcfsParserTests
{
    [Fact]
    public void Tgid_and_start_time()
    {
        Assert.Equal(4612, ProcfsParsers.ParseTgid("Name:\tCPU 0/KVM\nUmask:\t0022\nState:\tR (running)\nTgid:\t4612\nNgid:\t0\nPid:\t4620\n"));
        Assert.Null(ProcfsParsers.ParseTgid("Name:\tx\n"));
        // comm may hold spaces and parentheses: fields are counted from the last ')'
        string stat = "4620 (CPU 0/KVM) (x)) R 1 4612 4612 0 -1 4194624 26 0 0 0 0 0 0 0 20 0 3 0 987654 1000 10";
        Assert.Equal(987654UL, ProcfsParsers.ParseStartTime(stat));
        // utime (14) + stime (15), what `overhead` charges an observer's process with
        string busy = "4620 (CPU 0/KVM) (x)) R 1 4612 4612 0 -1 4194624 26 0 0 0 1234 56 0 0 20 0 3 0 987654 1000 10";
        Assert.Equal(1290UL, ProcfsParsers.ParseCpuTicks(busy));
        Assert.Null(ProcfsParsers.ParseCpuTicks("4620 (truncated) R 1"));
    }

    [Theory]
    [InlineData("4620 (CPU 0/KVM) (x)) R 1 4612 4612 0 -1 4194624 26 0 0 0 0 0 0 0 20 0 3 0 987654 1000 10\n", 987654UL)]
    [InlineData("1 (systemd) S 0 1 1 0 -1 4194560 71290 3436469 129 2207 263 383 9079 3137 20 0 1 0 15 22495232", 15UL)]
    [InlineData("7 (a b) S 0 1 1 0 -1 4194560 71290 3436469 129 2207 263 383 9079 3137 20 0 1 0 42 1\n", 42UL)]
    [InlineData("4620 (truncated) R 1 4612", null)]
    [InlineData("no parenthesis 1 2 3", null)]
    [InlineData("9 (x) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5 1", null)]
    public void Start_time_from_the_bytes_read_is_what_the_string_parser_reads(string stat, ulong? start)
    {
        Assert.Equal(start, ProcfsParsers.ParseStartTime(stat));
        Assert.Equal(start, ProcfsParsers.ParseStartTime(System.Text.Encoding.UTF8.GetBytes(stat)));
    }

    [Theory]
    [InlineData("123456789 4567 89\n", 123456789UL, 4567UL)]
    [InlineData("0 0 0", 0UL, 0UL)]
    [InlineData("18446744073709551615 1 2\n", 18446744073709551615UL, 1UL)]
    [InlineData("12 x 3\n", null, null)]
    [InlineData("12\n", null, null)]
    [InlineData("-1 2 3", null, null)]
    [InlineData("", null, null)]
    public void Schedstat_from_the_bytes_read_is_what_the_string_parser_reads(string schedstat, ulong? run, ulong? wait)
    {
        (ulong, ulong)? expected = run is ulong r && wait is ulong w ? (r, w) : null;
        Assert.Equal(expected, ProcfsParsers.ParseSchedstat(schedstat));
        Assert.Equal(expected, ProcfsParsers.ParseSchedstat(System.Text.Encoding.UTF8.GetBytes(schedstat)));
    }

    [Theory]
    [InlineData("anon_inode:kvm-vcpu:0", 0)]
    [InlineData("anon_inode:kvm-vcpu:17", 17)]
    [InlineData("anon_inode:kvm-vcpu:", null)]
    [InlineData("anon_inode:kvm-vcpu:+1", null)]
    [InlineData("anon_inode:kvm-vcpu:-1", null)]
    [InlineData("anon_inode:kvm-vcpu:1 ", null)]
    [InlineData("anon_inode:kvm-vm", null)]
    [InlineData("/dev/kvm", null)]
    public void Vcpu_index_from_an_fd_target_as_bytes_and_as_a_string(string target, int? vcpu)
    {
        Assert.Equal(vcpu, ProcfsParsers.VcpuFromFdTarget(target));
        Assert.Equal(vcpu, ProcfsParsers.VcpuFromFdTarget(System.Text.Encoding.UTF8.GetBytes(target)));
        Assert.Equal(target == ProcfsParsers.KvmVmFdTarget, ProcfsParsers.IsVmFdTarget(System.Text.Encoding.UTF8.GetBytes(target)));
    }

    [Theory]
    [InlineData("CPU 0/KVM", 0)]
    [InlineData("CPU 12/KVM\n", 12)]
    [InlineData("worker", null)]
    [InlineData("CPU x/KVM", null)]
    [InlineData("CPU 3/TCG", null)]
    [InlineData("fc_vcpu 2", 2)]
    [InlineData("crosvm_vcpu7", 7)]
    [InlineData("vcpu15", 15)]
    [InlineData("vcpu-helper", null)]
    [InlineData("fc_api", null)]
    public void Vcpu_index_from_qemu_thread_names(string comm, int? vcpu) =>
        Assert.Equal(vcpu, ProcfsParsers.VcpuFromThreadName(comm));

    [Theory]
    [InlineData("qemu-system-x86_64\0-name\0guest=web-1,debug-threads=on\0-uuid\0abcd\0", "web-1", "qemu", "abcd")]
    [InlineData("/usr/bin/qemu-system-x86_64\0-name\0db,,primary,process=x\0", "db,primary", "qemu", "")]
    [InlineData("/opt/kvmobserve\0load\0--vm-child\0--name\0t-0\0", "t-0", "kvmobserve-load", "")]
    [InlineData("/usr/bin/dotnet\0/x/kvmobserve.dll\0load\0--name=t-1\0", "t-1", "kvmobserve-load", "")]
    [InlineData("/usr/bin/firecracker\0--api-sock\0/tmp/s\0", "firecracker-77", "firecracker", "")]
    [InlineData("/usr/bin/firecracker\0--id\0fn-42\0--api-sock\0/tmp/s\0", "fn-42", "firecracker", "")]
    [InlineData("firecracker\0--id\0anonymous-instance\0", "firecracker-77", "firecracker", "")]
    [InlineData("/usr/bin/cloud-hypervisor\0--api-socket\0path=/run/ch/web-2.sock\0--cpus\0boot=2\0", "web-2", "cloud-hypervisor", "")]
    [InlineData("/usr/bin/cloud-hypervisor\0--api-socket\0fd=3\0", "cloud-hyperviso-77", "cloud-hypervisor", "")]
    [InlineData("/usr/bin/crosvm\0run\0--socket\0/run/crosvm/db.sock\0vmlinux\0", "db", "crosvm", "")]
    public void Vm_names_from_command_lines(string cmdline, string name, string vmm, string uuid)
    {
        string comm = cmdline.Contains("firecracker") ? "firecracker" : cmdline.Contains("qemu") ? "qemu-system-x86"
            : cmdline.Contains("cloud-hypervisor") ? "cloud-hyperviso" : cmdline.Contains("crosvm") ? "crosvm" : "kvmobserve";
        (string n, string v, string u) = ProcfsParsers.IdentifyVm(ProcfsParsers.SplitCmdline(cmdline), comm, 77);
        Assert.Equal((name, vmm, uuid), (n, v, u));
    }
}
