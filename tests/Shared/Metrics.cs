using System.Globalization;
using System.Text.RegularExpressions;
using Xunit;

namespace KvmObserve.Testing;

/// <summary>A parsed scrape: samples keyed by name and label set.</summary>
public sealed partial class Metrics(List<(string Name, Dictionary<string, string> Labels, double Value)> samples)
{
    public List<(string Name, Dictionary<string, string> Labels, double Value)> Samples { get; } = samples;

    public static Metrics Parse(string text)
    {
        var samples = new List<(string, Dictionary<string, string>, double)>();
        foreach (string line in text.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#')
                continue;
            Match m = SampleLine().Match(line);
            Assert.True(m.Success, $"unparsable line: {line}");
            var labels = new Dictionary<string, string>();
            foreach (Match l in LabelPair().Matches(m.Groups[2].Value))
                labels[l.Groups[1].Value] = Regex.Unescape(l.Groups[2].Value);
            samples.Add((m.Groups[1].Value, labels, double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture)));
        }
        return new Metrics(samples);
    }

    /// <summary>Sum of a family's samples whose labels include every given pair.</summary>
    public double Sum(string name, params (string Label, string Value)[] match) =>
        Samples.Where(s => s.Name == name && match.All(p => s.Labels.GetValueOrDefault(p.Label) == p.Value)).Sum(s => s.Value);

    [GeneratedRegex(@"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")]
    private static partial Regex SampleLine();

    [GeneratedRegex(@"([a-zA-Z_][a-zA-Z0-9_]*)=""((?:[^""\\]|\\.)*)""")]
    private static partial Regex LabelPair();
}
