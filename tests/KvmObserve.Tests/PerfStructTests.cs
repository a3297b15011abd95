using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using KvmObserve.Native.Perf;

namespace KvmObserve.Tests;

/// <summary>The perf structs and numbers must match include/uapi/linux/perf_event.h.</summary>
public class PerfStructTests
{
    [Fact]
    public void Perf_event_attr_matches_the_header_at_PERF_ATTR_SIZE_VER7()
    {
        Assert.Equal(128, Unsafe.SizeOf<PerfEventAttr>());
        Assert.Equal(24, (int)Marshal.OffsetOf<PerfEventAttr>(nameof(PerfEventAttr.SampleType)));
        Assert.Equal(32, (int)Marshal.OffsetOf<PerfEventAttr>(nameof(PerfEventAttr.ReadFormat)));
        Assert.Equal(48, (int)Marshal.OffsetOf<PerfEventAttr>(nameof(PerfEventAttr.WakeupWatermark)));
        Assert.Equal(56, (int)Marshal.OffsetOf<PerfEventAttr>(nameof(PerfEventAttr.Config1)));
        Assert.Equal(120, (int)Marshal.OffsetOf<PerfEventAttr>(nameof(PerfEventAttr.SigData)));
        Assert.Equal(1UL << 14, (ulong)PerfAttrFlags.Watermark);
    }

    [Fact]
    public void Ioctl_numbers_match_the_header()
    {
        Assert.Equal(0x2400UL, PerfConstants.IocEnable);
        Assert.Equal(0x2401UL, PerfConstants.IocDisable);
        Assert.Equal(0x2405UL, PerfConstants.IocSetOutput);
        Assert.Equal(0x40082406UL, PerfConstants.IocSetFilter);
    }

    /// <summary>Compiles the header's own sizeof/offsetof and compares: what the constants above were read from.</summary>
    [Fact]
    public void The_installed_header_agrees()
    {
        const string header = "/usr/include/linux/perf_event.h";
        string? gcc = new[] { "/usr/bin/gcc", "/usr/bin/cc" }.FirstOrDefault(File.Exists);
        if (gcc is null || !File.Exists(header))
        {
            Assert.True(Environment.GetEnvironmentVariable("CI") != "true", "gcc and linux-libc-dev are needed to check perf_event.h");
            return;
        }
        string dir = Directory.CreateTempSubdirectory("kvmobserve-perf-h").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "p.c"), """
                #include <linux/perf_event.h>
                #include <stddef.h>
                #include <stdio.h>
                int main(void) {
                    printf("%zu %zu %zu %zu %zu %zu %zu %zu %lu %lu\n", sizeof(struct perf_event_attr),
                        offsetof(struct perf_event_attr, sample_type), offsetof(struct perf_event_attr, read_format),
                        offsetof(struct perf_event_attr, wakeup_watermark), offsetof(struct perf_event_mmap_page, data_head),
                        offsetof(struct perf_event_mmap_page, data_tail), offsetof(struct perf_event_mmap_page, data_offset),
                        offsetof(struct perf_event_mmap_page, data_size), (unsigned long)PERF_EVENT_IOC_SET_FILTER,
                        (unsigned long)PERF_EVENT_IOC_SET_OUTPUT);
                    return 0;
                }
                """);
            Run(gcc, $"-o {dir}/p {dir}/p.c");
            string[] v = Run(Path.Combine(dir, "p"), "").Split(' ', StringSplitOptions.TrimEntries);
            Assert.True(int.Parse(v[0]) >= PerfEventAttr.Size, $"the header's perf_event_attr ({v[0]}) is older than VER7");
            Assert.Equal(["24", "32", "48"], v[1..4]);
            Assert.Equal([PerfMmapPage.DataHeadOffset, PerfMmapPage.DataTailOffset, PerfMmapPage.DataOffsetOffset, PerfMmapPage.DataSizeOffset],
                v[4..8].Select(int.Parse).ToArray());
            Assert.Equal(PerfConstants.IocSetFilter, ulong.Parse(v[8]));
            Assert.Equal(PerfConstants.IocSetOutput, ulong.Parse(v[9]));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string Run(string file, string arguments)
    {
        var psi = new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        using Process p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {arguments}: {output}");
        return output.Trim();
    }
}
