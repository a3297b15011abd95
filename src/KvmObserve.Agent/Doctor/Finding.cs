namespace KvmObserve.Agent.Doctor;

public enum Verdict { Ok, Warn, Fail, Info }

/// <summary>One line of `doctor`: what was checked, what was found, and what it means for the user.</summary>
public sealed record Finding(Verdict Verdict, string Subject, string Found, string Meaning)
{
    public override string ToString()
    {
        string tag = Verdict switch { Verdict.Ok => "ok  ", Verdict.Warn => "warn", Verdict.Fail => "FAIL", _ => "info" };
        return Meaning.Length == 0 ? $"[{tag}] {Subject}: {Found}" : $"[{tag}] {Subject}: {Found} -- {Meaning}";
    }
}
