using KvmObserve.Agent.Hosting;
using KvmObserve.Exposition;

namespace KvmObserve.Tests;

/// <summary>README documents every setting of `run` and the OTLP name of every kvm family.</summary>
public sealed class ReadmeTests
{
    private static readonly string Readme = File.ReadAllText(Path.Combine(FindRepo(), "README.md"));

    private static string FindRepo()
    {
        string? dir = AppContext.BaseDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "KvmObserve.sln")))
            dir = Path.GetDirectoryName(dir);
        return dir ?? throw new InvalidOperationException("KvmObserve.sln not found");
    }

    [Fact]
    public void Every_setting_is_in_the_options_table_and_the_config_key_list()
    {
        foreach (Setting setting in Settings.All)
        {
            Assert.Contains($"| `{setting.Flag}", Readme);
            Assert.Contains($"`{setting.Key.Split(':')[^1]}`", Readme);
        }
    }

    [Fact]
    public void Every_kvm_family_has_its_otlp_name_in_the_mapping_table()
    {
        foreach ((string name, string type, _) in OtelNames.Families.Where(f => f.Name.StartsWith("kvm_", StringComparison.Ordinal)))
        {
            string otel = OtelNames.Of(name, type).Name;
            string row = type == "histogram" ? $"| `{name}` | `{otel}.count`, `.sum` |" : $"| `{name}` | `{otel}` |";
            Assert.Contains(row, Readme);
        }
    }
}
