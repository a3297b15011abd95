using System.ComponentModel;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace KvmObserve.KernelTests.VmHost;

/// <summary>
/// A kernel test that needs a VM. Where this host has /dev/kvm it runs here; where it has none it runs in the test
/// VM (<see cref="GuestTestRun"/>, all such tests in one boot) and reports here what it did there: pass, failure with
/// the guest's message and stack, or skip with the guest's reason.
/// </summary>
public sealed class VmTestCase : XunitTestCase
{
    [EditorBrowsable(EditorBrowsableState.Never)]
    [Obsolete("Called by the de-serializer", error: true)]
    public VmTestCase() { }

    public VmTestCase(IMessageSink diagnosticMessageSink, TestMethodDisplay display, TestMethodDisplayOptions options,
        ITestMethod testMethod, KvmPaging paging, object[]? testMethodArguments = null)
        : base(diagnosticMessageSink, display, options, testMethod, testMethodArguments)
    {
        Paging = paging;
    }

    public KvmPaging Paging { get; private set; }

    public override void Serialize(IXunitSerializationInfo data)
    {
        base.Serialize(data);
        data.AddValue(nameof(Paging), Paging.ToString());
    }

    public override void Deserialize(IXunitSerializationInfo data)
    {
        base.Deserialize(data);
        Paging = Enum.Parse<KvmPaging>(data.GetValue<string>(nameof(Paging)));
    }

    public override async Task<RunSummary> RunAsync(IMessageSink diagnosticMessageSink, IMessageBus messageBus,
        object[] constructorArguments, ExceptionAggregator aggregator, CancellationTokenSource cancellationTokenSource)
    {
        if (SkipReason is not null || !GuestTestRun.RunsHere)
        {
            // In the test VM: which test runs now, for the host to name the one a hung guest was running.
            if (SkipReason is null && Environment.GetEnvironmentVariable(GuestTestRun.StartedVariable) is string started)
                File.AppendAllText(started, DisplayName + "\n");
            return await base.RunAsync(diagnosticMessageSink, messageBus, constructorArguments, aggregator, cancellationTokenSource);
        }
        GuestResult result = GuestTestRun.ResultOf(this);
        return await new GuestResultRunner(this, result, constructorArguments, messageBus, aggregator, cancellationTokenSource).RunAsync();
    }

    /// <summary>Reports <see cref="GuestResult"/> as this test's outcome, without constructing the test class here.</summary>
    private sealed class GuestResultRunner(VmTestCase testCase, GuestResult result, object[] constructorArguments,
        IMessageBus messageBus, ExceptionAggregator aggregator, CancellationTokenSource cts)
        : XunitTestCaseRunner(testCase, testCase.DisplayName, result.SkipReason, constructorArguments,
            testCase.TestMethodArguments, messageBus, aggregator, cts)
    {
        protected override XunitTestRunner CreateTestRunner(ITest test, IMessageBus bus, Type testClass,
            object[] ctorArguments, System.Reflection.MethodInfo testMethod, object[] testMethodArguments, string skipReason,
            IReadOnlyList<BeforeAfterTestAttribute> beforeAfterAttributes, ExceptionAggregator agg, CancellationTokenSource source)
            => new GuestResultTestRunner(result, test, bus, testClass, ctorArguments, testMethod, testMethodArguments,
                skipReason, beforeAfterAttributes, agg, source);
    }

    private sealed class GuestResultTestRunner(GuestResult result, ITest test, IMessageBus messageBus, Type testClass,
        object[] constructorArguments, System.Reflection.MethodInfo testMethod, object[] testMethodArguments,
        string skipReason, IReadOnlyList<BeforeAfterTestAttribute> beforeAfterAttributes, ExceptionAggregator aggregator,
        CancellationTokenSource cts)
        : XunitTestRunner(test, messageBus, testClass, constructorArguments, testMethod, testMethodArguments, skipReason,
            beforeAfterAttributes, aggregator, cts)
    {
        protected override Task<Tuple<decimal, string>> InvokeTestAsync(ExceptionAggregator aggregator)
        {
            if (result.Failure is not null)
                aggregator.Add(new GuestTestFailure(result.Failure, result.StackTrace));
            return Task.FromResult(Tuple.Create(result.Seconds, result.Output));
        }
    }
}

/// <summary>A failure in the test VM, with the guest's own message and stack trace.</summary>
public sealed class GuestTestFailure(string message, string? stackTrace) : Exception(message)
{
    public override string? StackTrace => stackTrace;
}
