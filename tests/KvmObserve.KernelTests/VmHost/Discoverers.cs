using Xunit.Abstractions;
using Xunit.Sdk;

namespace KvmObserve.KernelTests.VmHost;

/// <summary>[KernelFact]: a test that needs a VM becomes a <see cref="VmTestCase"/>; one that does not, a plain one.</summary>
public sealed class KernelFactDiscoverer(IMessageSink diagnosticMessageSink) : FactDiscoverer(diagnosticMessageSink)
{
    protected override IXunitTestCase CreateTestCase(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo factAttribute) =>
        factAttribute.GetNamedArgument<bool>("Kvm")
            ? new VmTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(),
                testMethod, factAttribute.GetNamedArgument<KvmPaging>("Paging"))
            : base.CreateTestCase(discoveryOptions, testMethod, factAttribute);
}

/// <summary>[KernelTheory]: each data row of a test that needs a VM becomes a <see cref="VmTestCase"/>.</summary>
public sealed class KernelTheoryDiscoverer(IMessageSink diagnosticMessageSink) : TheoryDiscoverer(diagnosticMessageSink)
{
    protected override IEnumerable<IXunitTestCase> CreateTestCasesForDataRow(ITestFrameworkDiscoveryOptions discoveryOptions,
        ITestMethod testMethod, IAttributeInfo theoryAttribute, object[] dataRow) =>
        theoryAttribute.GetNamedArgument<bool>("Kvm")
            ? [new VmTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(),
                testMethod, theoryAttribute.GetNamedArgument<KvmPaging>("Paging"), dataRow)]
            : base.CreateTestCasesForDataRow(discoveryOptions, testMethod, theoryAttribute, dataRow);
}
