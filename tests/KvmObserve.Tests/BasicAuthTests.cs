using System.Diagnostics;
using System.Text;
using KvmObserve.Agent.Hosting;

namespace KvmObserve.Tests;

public sealed class BasicAuthTests
{
    private static readonly string AliceHash = BCrypt.Net.BCrypt.HashPassword("secret", 8);
    private static readonly string BobHash = BCrypt.Net.BCrypt.HashPassword("hunter2", 6);

    private static string Header(string user, string password) =>
        "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes($"{user}:{password}"));

    private static BasicAuth Auth() => new(new Dictionary<string, string> { ["alice"] = AliceHash, ["bob"] = BobHash });

    [Fact]
    public async Task Right_credentials_pass_and_wrong_or_malformed_ones_do_not()
    {
        BasicAuth auth = Auth();
        Assert.True(await auth.AllowsAsync(Header("alice", "secret")));
        Assert.True(await auth.AllowsAsync(Header("bob", "hunter2")));
        Assert.False(await auth.AllowsAsync(Header("alice", "hunter2")));
        Assert.False(await auth.AllowsAsync(Header("carol", "secret")));
        Assert.False(await auth.AllowsAsync("Basic !!!"));
        Assert.False(await auth.AllowsAsync("Bearer x"));
        Assert.False(await auth.AllowsAsync((string?)null));
        Assert.False(await auth.AllowsAsync(Header("alice", "secret").Replace(":", "")[..^2]));
    }

    [Fact]
    public async Task An_unknown_user_costs_one_bcrypt_at_the_users_highest_cost_as_a_wrong_password_does()
    {
        BasicAuth auth = Auth();
        Assert.Equal(8, auth.DummyCost);
        long before = auth.BcryptRuns;
        Assert.False(await auth.AllowsAsync(Header("mallory", "x")));
        Assert.Equal(before + 1, auth.BcryptRuns);
        Assert.False(await auth.AllowsAsync(Header("alice", "x")));
        Assert.Equal(before + 2, auth.BcryptRuns);
    }

    [Fact]
    public async Task Wrong_password_and_unknown_user_take_about_as_long()
    {
        BasicAuth auth = Auth();
        double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
        var wrong = new List<double>();
        var unknown = new List<double>();
        for (int i = 0; i < 7; i++)
        {
            var clock = Stopwatch.StartNew();
            await auth.AllowsAsync(Header("alice", "wrong" + i));
            wrong.Add(clock.Elapsed.TotalMilliseconds);
            clock.Restart();
            await auth.AllowsAsync(Header("nobody" + i, "wrong"));
            unknown.Add(clock.Elapsed.TotalMilliseconds);
        }
        double ratio = Median(wrong) / Median(unknown);
        Assert.True(ratio is > 0.5 and < 2, $"wrong password {Median(wrong):F1} ms, unknown user {Median(unknown):F1} ms");
    }

    [Fact]
    public async Task Failures_never_evict_a_remembered_success()
    {
        BasicAuth auth = Auth();
        Assert.True(await auth.AllowsAsync(Header("bob", "hunter2")));
        for (int i = 0; i < 100; i++)
            Assert.False(await auth.AllowsAsync(Header("bob", "wrong" + i)));
        long before = auth.BcryptRuns;
        Assert.True(await auth.AllowsAsync(Header("bob", "hunter2")));
        Assert.Equal(before, auth.BcryptRuns); // remembered: no bcrypt
    }

    [Fact]
    public async Task Concurrent_failures_do_not_hold_up_a_remembered_scrape()
    {
        BasicAuth auth = Auth();
        Assert.True(await auth.AllowsAsync(Header("bob", "hunter2")));
        Task<bool>[] attack = Enumerable.Range(0, 16).Select(i => Task.Run(() => auth.AllowsAsync(Header("alice", "guess" + i)))).ToArray();
        var clock = Stopwatch.StartNew();
        Assert.True(await auth.AllowsAsync(Header("bob", "hunter2")));
        TimeSpan scrape = clock.Elapsed;
        bool[] results = await Task.WhenAll(attack);
        TimeSpan attackTime = clock.Elapsed;
        Assert.All(results, Assert.False);
        // The 16 bcrypts queue on one another; the remembered scrape waits on none of them.
        Assert.True(scrape < attackTime / 4, $"the remembered scrape took {scrape.TotalMilliseconds:F0} ms while the attack took {attackTime.TotalMilliseconds:F0} ms");
    }
}
