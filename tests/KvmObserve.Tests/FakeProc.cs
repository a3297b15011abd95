using KvmObserve.Aggregation.Discovery;

namespace KvmObserve.Tests;

/// <summary>A procfs tree on disk, as VmRegistry reads it: /PID/{stat,comm,cmdline,cgroup,fd/N,task/TID/...} and
/// /TID/status. Lines are the kernel's formats (fs/proc/array.c, base.c).</summary>
internal sealed class FakeProc : IDisposable
{
    public string Root { get; } = Directory.CreateTempSubdirectory("kvmobserve-proc").FullName;

    public FakeProc(ulong agentStart = 1000) => Write("self/stat", Stat(1, "kvmobserve", agentStart));

    public void Dispose() => Directory.Delete(Root, recursive: true);

    public void Write(string relative, string text)
    {
        string path = Path.Combine(Root, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
    }

    private static string Stat(int pid, string comm, ulong start) =>
        $"{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 {start} 0 0";

    /// <summary>A VMM process holding a VM fd (fd 7) with the given threads; vCPU fds are 10+N.</summary>
    public void Vm(int pid, string comm, string cmdline, ulong start = 4242, string cgroup = "0::/user.slice\n",
        bool vmFd = true, params (int Tid, string Comm)[] threads)
    {
        Write($"{pid}/stat", Stat(pid, comm, start));
        Write($"{pid}/comm", comm + "\n");
        Write($"{pid}/cmdline", cmdline);
        Write($"{pid}/cgroup", cgroup);
        Directory.CreateDirectory(Path.Combine(Root, $"{pid}/fd"));
        if (vmFd)
            File.CreateSymbolicLink(Path.Combine(Root, $"{pid}/fd/7"), ProcfsParsers.KvmVmFdTarget);
        foreach ((int tid, string threadComm) in threads.Length > 0 ? threads : [(pid, comm)])
            Thread(pid, tid, threadComm);
    }

    public void Thread(int pid, int tid, string comm)
    {
        Write($"{pid}/task/{tid}/comm", comm + "\n");
        Write($"{pid}/task/{tid}/schedstat", "0 0 0\n");
        Write($"{tid}/status", $"Name:\t{comm}\nTgid:\t{pid}\nPid:\t{tid}\n");
    }

    public void VcpuFd(int pid, int fd, int vcpu) =>
        File.CreateSymbolicLink(Path.Combine(Root, $"{pid}/fd/{fd}"), ProcfsParsers.KvmVcpuFdPrefix + vcpu);

    /// <summary>The process and its threads are gone.</summary>
    public void Exit(int pid)
    {
        foreach (string task in Directory.GetDirectories(Path.Combine(Root, $"{pid}/task")))
        {
            string tidDir = Path.Combine(Root, Path.GetFileName(task));
            if (Directory.Exists(tidDir) && Path.GetFileName(task) != pid.ToString())
                Directory.Delete(tidDir, recursive: true);
        }
        Directory.Delete(Path.Combine(Root, pid.ToString()), recursive: true);
    }
}
