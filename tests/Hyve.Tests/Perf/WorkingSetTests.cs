// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Perf;

/// <summary>The start-up working-set trim: it lowers the resident set and the process keeps running.</summary>
public class WorkingSetTests
{
    private static long StatusKb(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line[(key.Length)..].Trim().Split(' ')[0]);
        return -1;
    }

    [Fact]
    public void TrimDropsResidentFilePagesAndCodeStillRuns()
    {
        // Other tests run in parallel and fault pages back in, so the drop is shown by what was unmapped, not by a
        // second reading of RssFile.
        long before = StatusKb("RssFile:");
        long trimmed = Hyve.WorkingSet.TrimReadOnlyFileMappings();
        Assert.True(trimmed > 0, $"nothing was trimmed (RssFile {before} KiB)");
        Assert.True(trimmed <= before + 1024, $"trimmed {trimmed} KiB of {before} KiB resident");
        // Code that was just unmapped comes back on use.
        Assert.Equal("4", (2 + 2).ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    [SkippableKvmFact]
    public void HyveKeepsServingExitsAcrossTheTrim()
    {
        // Port reads for longer than the trim delay (300 ms), then debug-exit with value 3: status (3 << 1) | 1.
        string rom = GuestRom.ToFile(GuestRom.RealMode(a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 150_000);
            a.mov(dx, 0x3fd);
            a.Label(ref loop);
            a.@in(al, dx);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(al, 3);
            a.@out(0xf4, al);
            a.cli();
            a.hlt();
        }));
        var sw = Stopwatch.StartNew();
        using var p = HyveProcess.Run("-l", $"bootrom,{rom}", "-l", "debug-exit,iobase=0xf4,iosize=4", "t" + Guid.NewGuid().ToString("N")[..10]);
        Assert.True(p.ExitCode == 7, $"status {p.ExitCode}, stderr: {p.Stderr}");
        Assert.True(sw.ElapsedMilliseconds > 300, $"the guest finished in {sw.ElapsedMilliseconds} ms, before the trim");
    }
}
