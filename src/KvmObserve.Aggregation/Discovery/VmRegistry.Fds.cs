using System.Globalization;

namespace KvmObserve.Aggregation.Discovery;

/// <summary>Which processes hold KVM fds, and which vCPUs: walks of /proc/PID/fd, cached while nothing about the
/// process changed.</summary>
public sealed partial class VmRegistry
{
    private readonly Dictionary<int, (long Threads, int NewestTid, long Fds, int[] Vcpus, bool HoldsVm)> _vcpuFds = new();

    /// <summary>The vCPU indexes of the anon_inode:kvm-vcpu:N fds <paramref name="vm"/> holds now (empty once it has
    /// exited). Its fds are walked again only when its threads or its fd count changed: a new vCPU comes with a new
    /// thread in every VMM we know, and a new thread has a tid its process has not had (an fd directory's mtime does
    /// not change in procfs, and counts alone can come back to a cached pair: a thread that exits as the vCPU's
    /// starts, a socket closed as the VM fd opens). Until then the same array is returned, for one stat(2) and one
    /// read of the task directory. <paramref name="fresh"/> walks them whatever the counts say: for a decision that
    /// stops counting (a counting source closing its window), not for a poll.</summary>
    public IReadOnlyList<int> VcpuFds(VmInfo vm, bool fresh = false) => KvmFds(vm, fresh).Vcpus;

    /// <summary>Whether <paramref name="vm"/>'s process holds an anon_inode:kvm-vm fd now: a VMM without one has
    /// closed its VM (or not created it yet), one with it and no vCPU fd is setting a VM up. Walked with
    /// <see cref="VcpuFds"/>, on the same terms.</summary>
    public bool HoldsVmFd(VmInfo vm, bool fresh = false) => KvmFds(vm, fresh).HoldsVm;

    private (int[] Vcpus, bool HoldsVm) KvmFds(VmInfo vm, bool fresh)
    {
        string procDir = Path.Combine(_procRoot, vm.Pid.ToString(CultureInfo.InvariantCulture));
        if (Tasks(Path.Combine(procDir, "task")) is not (long threads, int newest)
            || KvmObserve.Native.Sys.TryStat(Path.Combine(procDir, "fd")) is not (long fds, _, _))
            return ([], false);
        lock (_gate)
        {
            // fds is 0 before Linux 6.2 (no count of open fds): then nothing tells of a new fd, and each call walks.
            if (!fresh && fds > 0 && _vcpuFds.TryGetValue(vm.Pid, out var known) && known.Threads == threads && known.NewestTid == newest && known.Fds == fds)
                return (known.Vcpus, known.HoldsVm); // the same array while nothing changed: callers may compare references
        }
        if (!ProcessAlive(vm))
            return ([], false);
        var vcpus = new List<int>();
        bool holdsVm = WalkFds(vm.Pid, vcpus);
        int[] sorted = vcpus.Distinct().Order().ToArray();
        lock (_gate)
        {
            if (_vcpuFds.TryGetValue(vm.Pid, out var known) && known.Vcpus.AsSpan().SequenceEqual(sorted) && known.HoldsVm == holdsVm)
                sorted = known.Vcpus; // unchanged: the same array, as callers compare references
            _vcpuFds[vm.Pid] = (threads, newest, fds, sorted, holdsVm);
        }
        return (sorted, holdsVm);
    }

    /// <summary>How many threads a process has and its newest (highest) tid, from one read of /proc/PID/task; null
    /// when it is gone.</summary>
    private static (long Threads, int NewestTid)? Tasks(string taskDir)
    {
        var tasks = new KvmObserve.Native.DirectoryEntries(taskDir, stackalloc byte[DirentBufferSize]);
        try
        {
            long threads = 0;
            int newest = 0;
            while (tasks.MoveNext())
            {
                if (ProcfsParsers.Index(tasks.Name) is int tid)
                {
                    threads++;
                    newest = Math.Max(newest, tid);
                }
            }
            return tasks.Opened && threads > 0 ? (threads, newest) : null;
        }
        finally
        {
            tasks.Dispose();
        }
    }

    /// <summary>Processes found holding no VM fd, by pid: their start time and their fd directory's size (open fds)
    /// and mtime then. Until one of those changes, or the next full scan, they are not walked again: walking every
    /// fd of every process (a readlink each) was most of what an idle agent cost.</summary>
    private readonly Dictionary<int, (ulong Start, long Size, long MtimeNs)> _notVmm = new();
    private int _scans;

    /// <summary>Every this many scans (a minute at the default interval), every process is walked again.</summary>
    internal const int FullScanEvery = 30;

    private bool HoldsVmFdCached(int pid, bool full)
    {
        string procDir = Path.Combine(_procRoot, pid.ToString(CultureInfo.InvariantCulture));
        if (KvmObserve.Native.Sys.TryStat(Path.Combine(procDir, "fd")) is not (long size, long mtime, _)
            || StartTime(procDir) is not ulong start
            || size == 0) // before 6.2 the directory's size is 0 and its mtime fixed: nothing tells an fd was opened
            return HoldsVmFd(pid);
        if (!full && _notVmm.TryGetValue(pid, out var known) && known == (start, size, mtime))
            return false;
        bool holds = HoldsVmFd(pid);
        if (holds)
            _notVmm.Remove(pid);
        else
            _notVmm[pid] = (start, size, mtime);
        return holds;
    }

    private bool HoldsVmFd(int pid) => WalkFds(pid, vcpus: null);

    /// <summary>getdents64 batches: a VMM's few hundred fds in one or two reads.</summary>
    private const int DirentBufferSize = 8192;

    /// <summary>
    /// Reads where each of a process's fds points (/proc/PID/fd/N, one readlinkat each, nothing allocated per fd):
    /// whether one is a VM fd, and, when <paramref name="vcpus"/> is given, the index of each vCPU fd into it. Without
    /// it the walk stops at the first VM fd. An fd closed meanwhile is skipped; a process gone has none.
    /// </summary>
    private bool WalkFds(int pid, List<int>? vcpus)
    {
        var fds = new KvmObserve.Native.DirectoryEntries(
            Path.Combine(_procRoot, pid.ToString(CultureInfo.InvariantCulture), "fd"), stackalloc byte[DirentBufferSize]);
        try
        {
            Span<byte> target = stackalloc byte[64]; // anon_inode:kvm-vcpu:N fits; a longer path is no KVM fd
            bool holdsVm = false;
            while (fds.MoveNext())
            {
                int n = fds.ReadLink(target);
                if (n < 0)
                    continue;
                if (ProcfsParsers.IsVmFdTarget(target[..n]))
                {
                    holdsVm = true;
                    if (vcpus is null)
                        break;
                }
                else if (vcpus is not null && ProcfsParsers.VcpuFromFdTarget(target[..n]) is int vcpu)
                {
                    vcpus.Add(vcpu);
                }
            }
            return holdsVm;
        }
        finally
        {
            fds.Dispose();
        }
    }
}
