namespace KvmObserve.Native.Perf;

/// <summary>
/// Closes perf event fds. Closing the last perf event of a tracepoint unregisters its probe, and the kernel waits for
/// an RCU grace period each time under event_mutex (perf_trace_destroy): about 35 ms per tracepoint here, so a source
/// of 24 tracepoints takes ~0.8 s to stop. Closing from several threads was tried and gains nothing: the mutex
/// serialises the waits.
/// </summary>
public static class PerfFds
{
    public static void DisposeAll(IEnumerable<SafeFd> fds)
    {
        foreach (SafeFd fd in fds)
            fd.Dispose();
    }
}
