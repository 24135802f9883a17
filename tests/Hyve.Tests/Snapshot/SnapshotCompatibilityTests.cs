// SPDX-License-Identifier: BSD-2-Clause
using System.Text.RegularExpressions;
using Hyve.Vmm.State;
using Xunit;

namespace Hyve.Tests.Snapshot;

/// <summary>
/// The compatibility promise: snapshots committed under tests/snapshots restore with this and every later Hyve, and
/// every section version a loader claims to read (oldest to newest) appears in one of them, so it is exercised here.
/// counter-v1.hyvesnap: format 1.0, the counter ROM of <see cref="SnapshotRomTests"/> on the software CPU with 2 MiB,
/// a host bridge, the PIIX4 PM function, the LPC bridge and fw_cfg, suspended right after it printed "c=00a3".
/// counter-i8042v2.hyvesnap: the same machine restored from counter-v1 and suspended again once the 8042's section went
/// to version 2 (the keyboard layout and typematic state of the VNC input path).
/// </summary>
public partial class SnapshotCompatibilityTests
{
    private static string Committed(string name) => Path.Combine(HyveProcess.RepoRoot, "tests", "snapshots", name);

    [GeneratedRegex(@"c=([0-9a-f]{4})\n")]
    private static partial Regex CountLine();

    [Theory, KvmData, SoftData]
    public void The_committed_v1_snapshot_restores_and_goes_on_counting(string accel)
    {
        string name = "c" + Guid.NewGuid().ToString("N")[..10];
        string dir = Directory.CreateTempSubdirectory("hyve-compat").FullName;
        string again = Path.Combine(dir, "again.hyvesnap");
        using (var r = HyveProcess.Start(Backends.Args(accel, "-r", Committed("counter-v1.hyvesnap"), "-l", "com1,stdio", name)))
        {
            r.WaitForSocket(name);
            r.WaitForOutput("c=00a8\n", 30);
            var counts = CountLine().Matches(r.Stdout).Select(m => Convert.ToInt32(m.Groups[1].Value, 16)).ToList();
            Assert.Equal(0xa4, counts[0]);
            for (int i = 1; i < counts.Count; i++) Assert.Equal(counts[i - 1] + 1, counts[i]);
            // What this Hyve writes now, to compare its section versions with what the committed files hold.
            var c = r.Ctl($"--vm={name}", $"--suspend={again}");
            Assert.True(c.Status == 0, c.Err);
            r.WaitForExit(30);
        }
        var committed = new HashSet<(string, int)>();
        foreach (var f in Directory.GetFiles(Path.Combine(HyveProcess.RepoRoot, "tests", "snapshots"), "*.hyvesnap"))
        {
            using var old = SnapshotReader.Open(f);
            foreach (var s in old.Manifest.Sections) committed.Add((s.Name, s.Version));
        }
        using var now = SnapshotReader.Open(again);
        foreach (var s in now.Manifest.Sections)
            for (int v = s.Oldest; v <= s.Version; v++)
                Assert.True(committed.Contains((s.Name, v)),
                    $"section {s.Name} claims to load version {v}, which no snapshot under tests/snapshots holds: commit one taken with that version");
        Directory.Delete(dir, true);
    }
}
