using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace KvmObserve.Agent.Hosting;

/// <summary>
/// /metrics security from a web config file in the format of Prometheus's exporter-toolkit (web-config.yml):
/// tls_server_config (cert_file, key_file; paths relative to the file) and basic_auth_users (user: bcrypt hash).
/// Keys the agent does not implement are refused by name rather than silently ignored.
/// </summary>
public sealed class WebConfig
{
    public X509Certificate2? Certificate { get; private init; }
    public string? CertFile { get; private init; }
    public IReadOnlyDictionary<string, string> Users { get; private init; } = new Dictionary<string, string>();

    public static WebConfig Load(string path)
    {
        YamlMappingNode root;
        try
        {
            var yaml = new YamlStream();
            using (var reader = new StreamReader(path))
                yaml.Load(reader);
            root = yaml.Documents.Count == 0 ? new YamlMappingNode()
                : yaml.Documents[0].RootNode as YamlMappingNode ?? throw new OptionException($"{path}: the top level is not a mapping");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OptionException($"cannot read '{path}': {e.Message}");
        }
        catch (Exception e) when (e is YamlException or InvalidOperationException or ArgumentException)
        {
            // YamlDotNet reports some malformed documents as the latter two, not as YamlException.
            throw new OptionException($"{path}: not YAML: {e.Message.Split('\n')[0]}");
        }
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        X509Certificate2? certificate = null;
        string? certFile = null;
        var users = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach ((YamlNode keyNode, YamlNode value) in root.Children)
        {
            string key = Scalar(path, "a top-level key", keyNode);
            switch (key)
            {
                case "tls_server_config":
                    (certificate, certFile) = LoadTls(path, dir, Mapping(path, key, value));
                    break;
                case "basic_auth_users":
                    foreach ((YamlNode user, YamlNode hash) in Mapping(path, key, value).Children)
                    {
                        string name = Scalar(path, key, user), h = Scalar(path, $"{key}.{name}", hash);
                        if (!IsBcrypt(h))
                            throw new OptionException($"{path}: basic_auth_users.{name}: not a bcrypt hash ($2a$, $2b$ or $2y$, e.g. from htpasswd -nB)");
                        users[name] = h;
                    }
                    break;
                default:
                    throw new OptionException($"{path}: '{key}' is not supported (supported: tls_server_config, basic_auth_users)");
            }
        }
        return new WebConfig { Certificate = certificate, CertFile = certFile, Users = users };
    }

    private static (X509Certificate2, string) LoadTls(string path, string dir, YamlMappingNode tls)
    {
        string? cert = null, key = null;
        foreach ((YamlNode k, YamlNode v) in tls.Children)
        {
            string name = Scalar(path, "a key of tls_server_config", k);
            switch (name)
            {
                case "cert_file": cert = Path.Combine(dir, Scalar(path, "tls_server_config.cert_file", v)); break;
                case "key_file": key = Path.Combine(dir, Scalar(path, "tls_server_config.key_file", v)); break;
                default:
                    throw new OptionException($"{path}: tls_server_config.{name} is not supported (supported: cert_file, key_file)");
            }
        }
        if (cert is null || key is null)
            throw new OptionException($"{path}: tls_server_config needs both cert_file and key_file");
        try
        {
            // Loaded once at startup from PEM; re-exported so Kestrel gets a certificate with a usable private key.
            using var pem = X509Certificate2.CreateFromPemFile(cert, key);
            return (X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null), cert);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new OptionException($"{path}: cannot load the TLS certificate {cert} with key {key}: {e.Message}");
        }
    }

    private static YamlMappingNode Mapping(string path, string key, YamlNode node) =>
        node as YamlMappingNode ?? throw new OptionException($"{path}: {key} is not a mapping");

    private static string Scalar(string path, string key, YamlNode node) =>
        (node as YamlScalarNode)?.Value ?? throw new OptionException($"{path}: {key} is not a single value");

    /// <summary>"$2a$", "$2b$" or "$2y$", a cost of 04..31, then 53 characters of bcrypt's base64 (salt and hash).</summary>
    private static bool IsBcrypt(string hash) =>
        System.Text.RegularExpressions.Regex.IsMatch(hash, @"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$");
}
