using KvmObserve.Decoding.Format;

namespace KvmObserve.Tests;

/// <summary>Format files recorded on this project's machines (Linux 6.18), plus hand-made older layouts.</summary>
internal static class Fixture
{
    public static string Text(string name) => File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Fixtures", name));

    public static EventFormat Format(string name, string system = "kvm") => EventFormatParser.Parse(system, Text(name));

    public static PageHeaderFormat PageHeader => PageHeaderFormat.Parse(Text("header_page"));
}
