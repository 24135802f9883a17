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
/// counter-virtio-v1.hyvesnap and counter-virtio-v2.hyvesnap: the same machine (2 MiB) with virtio-rnd (slot 2),
/// virtio-blk on a 1 MiB zero-filled image (slot 3), virtio-net on slirp (slot 4) and virtio-console on a file (slot 5),
/// which the ROM never drives; v1 taken with virtio-pci section version 1 (format 1.0), v2 with version 2 (the device's
/// own state: libslirp's) and vhpet section version 2 (matches due but not yet delivered), format 1.1 (the disk's
/// identity and the guest's CPUID words in the manifest).
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

    private static List<int> Counts(string text) => [.. CountLine().Matches(text).Select(m => Convert.ToInt32(m.Groups[1].Value, 16))];

    [Theory, KvmData, SoftData]
    public void The_committed_virtio_snapshots_restore_with_their_disk_repointed_and_go_on_counting(string accel)
    {
        string dir = Directory.CreateTempSubdirectory("hyve-compat").FullName;
        string disk = Path.Combine(dir, "disk.img"), again = Path.Combine(dir, "again.hyvesnap");
        using (var f = File.Create(disk)) f.SetLength(1 << 20);
        foreach (var file in new[] { "counter-virtio-v1.hyvesnap", "counter-virtio-v2.hyvesnap" })
        {
            string name = "c" + Guid.NewGuid().ToString("N")[..10];
            using var r = HyveProcess.Start(Backends.Args(accel, "-r", Committed(file), "-s", $"3,virtio-blk,{disk}",
                "-s", $"5,virtio-console,con={Path.Combine(dir, "hvc.txt")}", "-l", "com1,stdio", name));
            r.WaitForSocket(name);
            r.WaitForOutput("\n", 30);
            var first = Counts(r.Stdout);
            r.WaitForOutput($"c={first[0] + 5:x4}\n", 30);
            var counts = Counts(r.Stdout);
            Assert.True(counts[0] > 0x10, $"{file}: the count restarted at {counts[0]}");
            for (int i = 1; i < counts.Count; i++) Assert.Equal(counts[i - 1] + 1, counts[i]);
            if (file.EndsWith("v2.hyvesnap", StringComparison.Ordinal))
            {
                var c = r.Ctl($"--vm={name}", $"--suspend={again}");
                Assert.True(c.Status == 0, c.Err);
                r.WaitForExit(30);
            }
            else
            {
                Assert.True(r.Ctl($"--vm={name}", "--force-poweroff").Status == 0);
                r.WaitForExit(30);
            }
            Assert.DoesNotContain("hyve:", r.Stderr, StringComparison.Ordinal);
        }
        AssertEveryLoadableVersionIsCommitted(again);
        Directory.Delete(dir, true);
    }

    // A disk is identified by its size and sampled contents: a copy works (above), another size or other contents do not.
    [Fact]
    public void A_restore_with_a_resized_or_rewritten_disk_is_refused_naming_the_disk()
    {
        string dir = Directory.CreateTempSubdirectory("hyve-compat").FullName;
        string big = Path.Combine(dir, "big.img"), changed = Path.Combine(dir, "changed.img");
        using (var f = File.Create(big)) f.SetLength(2 << 20);
        var bytes = new byte[1 << 20];
        bytes[1024] = 0x53; // where an ext4 superblock would be
        File.WriteAllBytes(changed, bytes);
        SnapshotRefusalTests.AssertRefused(["-r", Committed("counter-virtio-v2.hyvesnap"), "-s", $"3,virtio-blk,{big}", "x"],
            $"disk pci.0.3.0 ({big}) is not the one the snapshot was taken with: its size is 2097152 bytes, the snapshot's disk had 1048576");
        SnapshotRefusalTests.AssertRefused(["-r", Committed("counter-virtio-v2.hyvesnap"), "-s", $"3,virtio-blk,{changed}", "x"],
            $"disk pci.0.3.0 ({changed}) is not the one the snapshot was taken with: its contents differ");
        Directory.Delete(dir, true);
    }

    private static void AssertEveryLoadableVersionIsCommitted(string snapshot)
    {
        var committed = new HashSet<(string, int)>();
        foreach (var f in Directory.GetFiles(Path.Combine(HyveProcess.RepoRoot, "tests", "snapshots"), "*.hyvesnap"))
        {
            using var old = SnapshotReader.Open(f);
            foreach (var s in old.Manifest.Sections) committed.Add((s.Name, s.Version));
        }
        using var now = SnapshotReader.Open(snapshot);
        foreach (var s in now.Manifest.Sections)
            for (int v = s.Oldest; v <= s.Version; v++)
                Assert.True(committed.Contains((s.Name, v)),
                    $"section {s.Name} claims to load version {v}, which no snapshot under tests/snapshots holds: commit one taken with that version");
    }
}
