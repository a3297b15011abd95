using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// HTTP basic auth against bcrypt hashes (web config basic_auth_users), as Prometheus' exporter-toolkit does it:
/// <list type="bullet">
/// <item>An unknown user is checked against a dummy hash of the users' cost, so the answer takes as long as for a
/// known user with a wrong password: timing does not tell which names exist.</item>
/// <item>Prometheus sends the same credentials every scrape and bcrypt takes tens of ms, so verified pairs are
/// remembered by their SHA-256 (never the password), a bounded number. Failures are never remembered, so they cannot
/// evict a success.</item>
/// <item>One bcrypt runs at a time and a request waits at most <see cref="QueueLimit"/> for its turn: failed attempts
/// cost the host at most one core, and a remembered scrape needs no bcrypt at all.</item>
/// </list>
/// </summary>
public sealed class BasicAuth
{
    private const int MaxRemembered = 64;
    private readonly IReadOnlyDictionary<string, string> _users;
    private readonly string _dummyHash = "";
    private readonly ConcurrentDictionary<string, byte> _verified = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _bcrypt = new(1, 1);
    private long _bcryptRuns;

    public BasicAuth(IReadOnlyDictionary<string, string> users)
    {
        _users = users;
        if (users.Count > 0)
            _dummyHash = BCrypt.Net.BCrypt.HashPassword(Convert.ToHexString(RandomNumberGenerator.GetBytes(16)), users.Values.Max(CostOf));
    }

    public static TimeSpan QueueLimit { get; } = TimeSpan.FromSeconds(5);

    public bool Enabled => _users.Count > 0;

    /// <summary>bcrypt verifications run so far (the work failed attempts cost).</summary>
    public long BcryptRuns => Interlocked.Read(ref _bcryptRuns);

    /// <summary>The cost of the dummy hash an unknown user is checked against.</summary>
    public int DummyCost => _dummyHash.Length == 0 ? 0 : CostOf(_dummyHash);

    public Task<bool> AllowsAsync(HttpRequest request) => AllowsAsync(request.Headers.Authorization.ToString());

    public async Task<bool> AllowsAsync(string? header)
    {
        if (string.IsNullOrEmpty(header) || !header.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase))
            return false;
        string decoded;
        try
        {
            decoded = Encoding.UTF8.GetString(Convert.FromBase64String(header["Basic ".Length..].Trim()));
        }
        catch (FormatException)
        {
            return false;
        }
        int colon = decoded.IndexOf(':');
        if (colon < 0)
            return false;
        string user = decoded[..colon], password = decoded[(colon + 1)..];
        bool known = _users.TryGetValue(user, out string? hash);
        hash ??= _dummyHash;
        string key = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(user + "\n" + hash + "\n" + password)));
        if (known && _verified.ContainsKey(key))
            return true;
        if (!await _bcrypt.WaitAsync(QueueLimit))
            return false;
        bool ok;
        try
        {
            Interlocked.Increment(ref _bcryptRuns);
            ok = BCrypt.Net.BCrypt.Verify(password, hash) && known;
        }
        catch (BCrypt.Net.SaltParseException)
        {
            ok = false; // WebConfig admits only well-formed hashes; this is a second line
        }
        finally
        {
            _bcrypt.Release();
        }
        if (ok)
        {
            if (_verified.Count >= MaxRemembered)
                _verified.Clear();
            _verified[key] = 0;
        }
        return ok;
    }

    /// <summary>The cost of a "$2y$NN$..." hash (WebConfig accepts only such).</summary>
    private static int CostOf(string hash) =>
        int.TryParse(hash.AsSpan(4, 2), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int cost)
            ? Math.Clamp(cost, 4, 31) : 10;
}
