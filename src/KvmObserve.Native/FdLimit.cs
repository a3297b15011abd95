using KvmObserve.Native.Interop;

namespace KvmObserve.Native;

/// <summary>RLIMIT_NOFILE: counting perf events per thread takes many fds, as kvm_stat's do.</summary>
public static unsafe class FdLimit
{
    public static (ulong Current, ulong Maximum) Get()
    {
        Libc.Rlimit limit;
        if (Libc.GetRlimit(Libc.RLIMIT_NOFILE, &limit) != 0)
            throw NativeErrorException.FromLastError("getrlimit(RLIMIT_NOFILE)");
        return (limit.Current, limit.Maximum);
    }

    /// <summary>Raises the soft limit to at least <paramref name="wanted"/>, up to the hard limit (and past it when
    /// privileged). Returns the limit now in force.</summary>
    public static ulong RaiseTo(ulong wanted)
    {
        (ulong current, ulong maximum) = Get();
        if (current >= wanted)
            return current;
        Libc.Rlimit limit = new() { Current = wanted, Maximum = Math.Max(maximum, wanted) };
        if (Libc.SetRlimit(Libc.RLIMIT_NOFILE, &limit) == 0)
            return wanted;
        limit = new Libc.Rlimit { Current = maximum, Maximum = maximum };
        return Libc.SetRlimit(Libc.RLIMIT_NOFILE, &limit) == 0 ? maximum : current;
    }
}
