using Microsoft.Extensions.Logging;

namespace KvmObserve.Agent.Hosting;

/// <summary>The agent's log lines, with stable event ids (source-generated).</summary>
internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Information, "Source {Source} started: {Enabled} of {Known} tracepoints enabled on {Cpus} CPUs (tracefs at {Root})")]
    public static partial void SourceStarted(ILogger logger, string source, int enabled, int known, int cpus, string root);

    [LoggerMessage(2, LogLevel.Warning, "Removed tracefs instance {Instance} left behind by an earlier run that did not stop cleanly")]
    public static partial void StaleInstanceRemoved(ILogger logger, string instance);

    [LoggerMessage(3, LogLevel.Information, "Tracepoint {Tracepoint} not used: {Reason}")]
    public static partial void TracepointUnavailable(ILogger logger, string tracepoint, string reason);

    [LoggerMessage(4, LogLevel.Information, "Source {Source} stopped; kernel state removed")]
    public static partial void SourceStopped(ILogger logger, string source);

    [LoggerMessage(5, LogLevel.Error, "Reader of cpu{Cpu} failed: {Message}")]
    public static partial void ReaderFailed(ILogger logger, int cpu, string message);

    [LoggerMessage(6, LogLevel.Information, "Serving /metrics on {Endpoint}/metrics ({Auth})")]
    public static partial void Listening(ILogger logger, string endpoint, string auth);

    [LoggerMessage(7, LogLevel.Warning, "Exit reason names come from the built-in table: this kernel's kvm_exit format has none")]
    public static partial void BuiltInExitReasons(ILogger logger);

    [LoggerMessage(8, LogLevel.Information, "Source {Source} picked (asked for {Requested}): {Reason}")]
    public static partial void SourcePicked(ILogger logger, string source, string requested, string reason);

    [LoggerMessage(18, LogLevel.Information, "Threads at nice {Nice} ({Reason})")]
    public static partial void NiceSet(ILogger logger, int nice, string reason);

    [LoggerMessage(19, LogLevel.Warning, "No VM can run on this host: {Problem}. The agent runs, and has no kvm series until a KVM device appears and a VM runs")]
    public static partial void NoKvmDevice(ILogger logger, string problem);

    [LoggerMessage(20, LogLevel.Warning, "KVM's VM-creation uevents cannot be read (errno {Errno}): VMs are found by procfs scans only, and the counts of one that lives less than --discovery-interval-ms may go to vm=\"unknown\"")]
    public static partial void NoVmUevents(ILogger logger, int errno);

    [LoggerMessage(9, LogLevel.Warning, "{Message}")]
    public static partial void SourceWarning(ILogger logger, string message);

    [LoggerMessage(10, LogLevel.Information, "VM {Vm} gone for longer than --vm-grace: its series are removed")]
    public static partial void VmExpired(ILogger logger, string vm);

    [LoggerMessage(11, LogLevel.Information, "Exporting OTLP metrics: {Target}")]
    public static partial void OtlpExporting(ILogger logger, string target);

    [LoggerMessage(12, LogLevel.Warning, "OTLP export to {Endpoint} failing; retrying with backoff, /metrics unaffected (one line per outage)")]
    public static partial void OtlpFailing(ILogger logger, string endpoint);

    [LoggerMessage(13, LogLevel.Information, "OTLP export to {Endpoint} works again after {Failed} failed exports over {Seconds:F0}s")]
    public static partial void OtlpResumed(ILogger logger, string endpoint, long failed, double seconds);

    [LoggerMessage(14, LogLevel.Warning, "Exit storm on VM {Vm}: {Rate:F0} exits/s against a baseline of {Baseline:F0}/s{Vcpus}; top: {Reasons}")]
    public static partial void StormStarted(ILogger logger, string vm, double rate, double baseline, string vcpus, string reasons);

    [LoggerMessage(15, LogLevel.Information, "Exit storm on VM {Vm} over after {Seconds:F1}s: peak {Peak:F0} exits/s, {Exits} exits")]
    public static partial void StormEnded(ILogger logger, string vm, double seconds, double peak, long exits);

    [LoggerMessage(16, LogLevel.Information, "Flight recording of the storm on VM {Vm} written: {Path}")]
    public static partial void RecordingWritten(ILogger logger, string vm, string path);

    [LoggerMessage(17, LogLevel.Information, "Replaying {Path} in a loop: {Records} records of VM {Vm}, recorded on {Host}")]
    public static partial void ReplayStarted(ILogger logger, string path, long records, string vm, string host);
}
