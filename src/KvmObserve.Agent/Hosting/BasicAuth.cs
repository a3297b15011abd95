using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// HTTP basic auth against bcrypt hashes (web config basic_auth_users). bcrypt is slow by design (tens of ms), and
/// Prometheus sends the same credentials every scrape, so a verified pair is remembered by its SHA-256 (never the
/// password itself), a bounded number of them.
/// </summary>
public sealed class BasicAuth(IReadOnlyDictionary<string, string> users)
{
    private const int MaxRemembered = 64;
    private readonly ConcurrentDictionary<string, bool> _verified = new(StringComparer.Ordinal);

    public bool Enabled => users.Count > 0;

    public bool Allows(HttpRequest request)
    {
        string? header = request.Headers.Authorization;
        if (header is null || !header.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase))
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
        if (!users.TryGetValue(user, out string? hash))
            return false;
        string key = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(hash + "\n" + password)));
        if (_verified.TryGetValue(key, out bool ok))
            return ok;
        ok = BCrypt.Net.BCrypt.Verify(password, hash);
        if (_verified.Count >= MaxRemembered)
            _verified.Clear();
        _verified[key] = ok;
        return ok;
    }
}
