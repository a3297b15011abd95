using KvmObserve.Agent.Hosting;

namespace KvmObserve.Tests;

/// <summary>Which nice the agent's threads get (the threads themselves are checked on the real agent, in NiceTests).</summary>
public class ThreadNiceTests
{
    [Fact]
    public void Auto_is_19_for_a_counting_source_and_leaves_a_streaming_one_alone_and_a_setting_wins()
    {
        Assert.Equal(19, ThreadNice.For(null, sourceHasRecords: false).Nice);
        Assert.Null(ThreadNice.For(null, sourceHasRecords: true).Nice);
        Assert.Equal(5, ThreadNice.For(5, sourceHasRecords: true).Nice);
        Assert.Equal(0, ThreadNice.For(0, sourceHasRecords: false).Nice);
        Assert.Equal("--nice", ThreadNice.For(-3, sourceHasRecords: false).Reason);
    }

    [Theory]
    [InlineData("auto", null)]
    [InlineData("19", 19)]
    [InlineData("-20", -20)]
    public void The_setting_takes_auto_or_a_nice_value(string value, int? expected) =>
        Assert.Equal(expected, AgentOptions.From(LayeredSettings.Load(null, new Dictionary<string, string> { ["Nice"] = value })).Nice);
}
