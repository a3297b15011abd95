using System.Text;
using KvmObserve.Native;

namespace KvmObserve.Tests;

/// <summary>The getdents64/readlinkat walk discovery reads /proc/PID/fd with, on a real directory of symlinks.</summary>
public sealed class DirectoryEntriesTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kvmobserve-dirents-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Every_entry_and_link_target_is_read_across_many_batches_of_a_small_buffer()
    {
        var expected = new Dictionary<string, string>();
        for (int i = 0; i < 300; i++)
        {
            string link = i % 3 == 0 ? $"anon_inode:kvm-vcpu:{i}" : $"/some/longer/path/to/file-{i}";
            File.CreateSymbolicLink(Path.Combine(_dir, i.ToString()), link);
            expected[i.ToString()] = link;
        }
        File.WriteAllText(Path.Combine(_dir, "plain"), "not a link");

        var seen = new Dictionary<string, string?>();
        var entries = new DirectoryEntries(_dir, stackalloc byte[256]); // a dozen entries per getdents64
        Span<byte> target = stackalloc byte[128];
        try
        {
            Assert.True(entries.Opened);
            while (entries.MoveNext())
            {
                int n = entries.ReadLink(target);
                seen.Add(Encoding.UTF8.GetString(entries.Name), n < 0 ? null : Encoding.UTF8.GetString(target[..n]));
            }
        }
        finally
        {
            entries.Dispose();
        }

        Assert.Equal(301, seen.Count); // no "." or ".."
        Assert.Null(seen["plain"]);    // not a symlink: no target
        foreach ((string name, string link) in expected)
            Assert.Equal(link, seen[name]);
    }

    [Fact]
    public void A_directory_that_is_gone_has_no_entries()
    {
        var entries = new DirectoryEntries(Path.Combine(_dir, "missing"), stackalloc byte[256]);
        Assert.False(entries.Opened);
        Assert.False(entries.MoveNext());
        entries.Dispose();
        entries.Dispose(); // twice is harmless
    }

    [Fact]
    public void A_small_file_is_read_whole_and_a_missing_one_says_so()
    {
        string file = Path.Combine(_dir, "stat");
        File.WriteAllText(file, "4620 (CPU 0/KVM) R 1");
        Span<byte> buffer = stackalloc byte[64];
        int n = Sys.TryReadSmallFile(file, buffer);
        Assert.Equal("4620 (CPU 0/KVM) R 1", Encoding.UTF8.GetString(buffer[..n]));
        Assert.Equal(-1, Sys.TryReadSmallFile(Path.Combine(_dir, "none"), buffer));
    }

    /// <summary>On procfs itself, as discovery reads it: this process's fd directory gives the file it just opened,
    /// and its own thread's schedstat parses from one read.</summary>
    [Fact]
    public void Procfs_fds_and_schedstat_read_as_discovery_reads_them()
    {
        string file = Path.Combine(_dir, "held-open");
        using FileStream held = File.Create(file);
        var fds = new DirectoryEntries("/proc/self/fd", stackalloc byte[512]);
        Span<byte> target = stackalloc byte[4096];
        var targets = new List<string>();
        try
        {
            while (fds.MoveNext())
            {
                int n = fds.ReadLink(target);
                if (n > 0)
                    targets.Add(Encoding.UTF8.GetString(target[..n]));
            }
        }
        finally
        {
            fds.Dispose();
        }
        Assert.Contains(file, targets);

        Span<byte> schedstat = stackalloc byte[128];
        int length = Sys.TryReadSmallFile($"/proc/self/task/{Sys.Gettid()}/schedstat", schedstat);
        Assert.True(length > 0);
        Assert.NotNull(KvmObserve.Aggregation.Discovery.ProcfsParsers.ParseSchedstat(schedstat[..length]));
    }
}
