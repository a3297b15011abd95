namespace KvmObserve.Decoding.Format;

/// <summary>One __print_symbolic(EXPR, { value, "name" }, ...) of a print fmt: the value → name table.</summary>
public sealed class SymbolicTable
{
    public SymbolicTable(string expression, IReadOnlyDictionary<long, string> names)
    {
        Expression = expression;
        Names = names;
    }

    /// <summary>The first argument, e.g. "REC->exit_reason & 0xffff".</summary>
    public string Expression { get; }

    public IReadOnlyDictionary<long, string> Names { get; }

    public bool ContainsName(string name)
    {
        foreach (string n in Names.Values)
        {
            if (n == name)
                return true;
        }
        return false;
    }
}
