using System.Reflection;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace KvmObserve.KernelTests.VmHost;

/// <summary>xunit's own framework, but for one thing: before a run starts, the VM tests it will run are told to
/// <see cref="GuestTestRun"/>, so that one boot of the test VM runs exactly those.</summary>
public sealed class VmTestFramework(IMessageSink messageSink) : XunitTestFramework(messageSink)
{
    protected override ITestFrameworkExecutor CreateExecutor(AssemblyName assemblyName) =>
        new Executor(assemblyName, SourceInformationProvider, DiagnosticMessageSink);

    private sealed class Executor(AssemblyName assemblyName, ISourceInformationProvider sourceInformationProvider,
        IMessageSink diagnosticMessageSink) : XunitTestFrameworkExecutor(assemblyName, sourceInformationProvider, diagnosticMessageSink)
    {
        protected override void RunTestCases(IEnumerable<IXunitTestCase> testCases, IMessageSink executionMessageSink,
            ITestFrameworkExecutionOptions executionOptions)
        {
            var cases = testCases.ToList();
            GuestTestRun.Plan(cases.OfType<VmTestCase>().Where(c => c.SkipReason is null));
            base.RunTestCases(cases, executionMessageSink, executionOptions);
        }
    }
}
