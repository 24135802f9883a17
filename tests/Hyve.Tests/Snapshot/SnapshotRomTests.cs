// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text.RegularExpressions;
using Hyve.Vmm.State;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Snapshot;

/// <summary>
/// bhyve's checkpoint, suspend and restore with the real ./hyve and ./hyvectl: a boot ROM counts in guest memory and
/// prints the count on COM1; the count must go on across a checkpoint, a suspend and a restore in a new process, with
/// no number printed twice or skipped.
/// </summary>
public partial class SnapshotRomTests
{
    private static string Name() => "s" + Guid.NewGuid().ToString("N")[..10];

    /// <summary>A ROM that prints "c=NNNN" (hex, from 0001) about every few milliseconds, its count at 0x500.</summary>
    public static byte[] CounterRom() => GuestRom.RealMode(a =>
    {
        a.xor(ax, ax);
        a.mov(ds, ax);
        a.mov(ss, ax);
        a.mov(sp, 0x7000);
        a.mov(__word_ptr[0x500], 0);
        var top = a.CreateLabel();
        var delay = a.CreateLabel();
        a.Label(ref top);
        a.mov(ecx, 0x20000);
        a.Label(ref delay);
        a.dec(ecx);
        a.jnz(delay);
        a.inc(__word_ptr[0x500]);
        GuestRom.Print(a, "c=");
        a.mov(ax, __word_ptr[0x500]);
        GuestRom.PrintHexAx(a);
        GuestRom.Print(a, "\n");
        a.jmp(top);
    });

    [GeneratedRegex(@"c=([0-9a-f]{4})\n")]
    private static partial Regex CountLine();

    private static List<int> Counts(string text) => [.. CountLine().Matches(text).Select(m => Convert.ToInt32(m.Groups[1].Value, 16))];

    private static void AssertConsecutive(List<int> counts, int first)
    {
        Assert.NotEmpty(counts);
        Assert.Equal(first, counts[0]);
        for (int i = 1; i < counts.Count; i++) Assert.True(counts[i] == counts[i - 1] + 1, $"count {counts[i]} follows {counts[i - 1]}");
    }

    private static void WaitForCount(HyveProcess p, int count) => p.WaitForOutput($"c={count:x4}\n");

    [Theory, KvmData, SoftData]
    public void Checkpoint_keeps_the_vm_running_and_suspend_and_restore_continue_the_count(string accel)
    {
        string rom = GuestRom.ToFile(CounterRom());
        string name = Name();
        string dir = Directory.CreateTempSubdirectory("hyve-snap").FullName;
        string cp = Path.Combine(dir, "checkpoint.hyvesnap"), sus = Path.Combine(dir, "suspend.hyvesnap");
        int beforeCheckpoint, afterCheckpoint;
        using (var p = HyveProcess.Start(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", name)))
        {
            p.WaitForSocket(name);
            WaitForCount(p, 3);
            beforeCheckpoint = Counts(p.Stdout)[^1];
            var c = p.Ctl($"--vm={name}", $"--checkpoint={cp}");
            Assert.True(c.Status == 0, c.Err);
            afterCheckpoint = Counts(p.Stdout)[^1];
            // The VM goes on after a checkpoint.
            WaitForCount(p, afterCheckpoint + 3);
            Assert.False(p.HasExited);
            c = p.Ctl($"--vm={name}", $"--suspend={sus}");
            Assert.True(c.Status == 0, c.Err);
            p.WaitForExit(30);
            Assert.True(p.ExitCode == 0, $"status {p.ExitCode}: {p.Stderr}");
            var before = Counts(p.Stdout);
            AssertConsecutive(before, 1);

            // The file describes itself without a running VM.
            var d = HyveProcess.CtlAlone($"--describe-snapshot={sus}");
            Assert.True(d.Status == 0, d.Err);
            Assert.Contains("arch:\t\tx86_64", d.Out, StringComparison.Ordinal);
            Assert.Contains($"\"vm\": \"{name}\"", d.Out, StringComparison.Ordinal);
            foreach (var section in new[] { "vatpic", "vioapic", "vatpit", "vhpet", "vrtc", "uart16550", "vcpu" })
                Assert.Contains($"\"name\": \"{section}\"", d.Out, StringComparison.Ordinal);
            Assert.Contains("\"lpc.bootrom\"", d.Out, StringComparison.Ordinal);

            // Restored in a new process with no options but the file and a name, the count goes on where it stopped.
            using var r = HyveProcess.Start(Backends.Args(accel, "-r", sus, name));
            r.WaitForSocket(name);
            WaitForCount(r, before[^1] + 5);
            Assert.True(r.Ctl($"--vm={name}", "--force-poweroff").Status == 0);
            r.WaitForExit(30);
            // The UART's output may have stopped mid-line: the restored VM prints the rest of it.
            AssertConsecutive(Counts(p.Stdout + r.Stdout), 1);
            Assert.Equal(1, r.ExitCode);
        }
        // The checkpoint restores too, to the count it was taken at (the VM went on afterwards, the file did not).
        using (var r = HyveProcess.Start(Backends.Args(accel, "-r", cp, Name())))
        {
            r.WaitForOutput($"c={afterCheckpoint + 2:x4}\n", 30);
            Assert.InRange(Counts(r.Stdout)[0], beforeCheckpoint, afterCheckpoint + 1);
        }
        Directory.Delete(dir, true);
    }

    /// <summary>Hyve's vCPU state is engine-neutral (the in-kernel LAPIC converts to Hyve's Vlapic and back, the TSC
    /// continues from its saved value): a snapshot taken on KVM resumes on the software CPU and the reverse.</summary>
    [SkippableKvmFact]
    public void A_snapshot_moves_between_KVM_and_the_software_CPU()
    {
        string rom = GuestRom.ToFile(CounterRom());
        string dir = Directory.CreateTempSubdirectory("hyve-snap").FullName;
        foreach (var (from, to) in new[] { ("kvm", "soft"), ("soft", "kvm") })
        {
            string name = Name(), file = Path.Combine(dir, $"{from}.hyvesnap");
            using var p = HyveProcess.Start(Backends.Args(from, "-l", $"bootrom,{rom}", "-l", "com1,stdio", name));
            p.WaitForSocket(name);
            WaitForCount(p, 3);
            var c = p.Ctl($"--vm={name}", $"--suspend={file}");
            Assert.True(c.Status == 0, c.Err);
            p.WaitForExit(30);
            var d = HyveProcess.CtlAlone($"--describe-snapshot={file}");
            Assert.Contains($"engine:\t\t{from}", d.Out, StringComparison.Ordinal);
            // KVM offers guests features the software CPU's model lacks (SSE3 and up, say): such a restore is refused
            // naming them, unless the user vouches that the guest does not use them, as this ROM does not.
            string[] vouch = [];
            if (from == "kvm")
            {
                using var refused = HyveProcess.Run([.. Backends.Args(to, "-r", file, name)]);
                if (refused.ExitCode == 4)
                {
                    Assert.Contains("CPU features that this host's soft engine lacks", refused.Stderr, StringComparison.Ordinal);
                    vouch = ["-o", "snapshot.check_cpuid=false"];
                }
            }
            using var r = HyveProcess.Start(Backends.Args(to, ["-r", file, .. vouch, name]));
            r.WaitForSocket(name);
            WaitForCount(r, Counts(p.Stdout)[^1] + 3);
            Assert.True(r.Ctl($"--vm={name}", "--force-poweroff").Status == 0);
            r.WaitForExit(30);
            AssertConsecutive(Counts(p.Stdout + r.Stdout), 1);
        }
        Directory.Delete(dir, true);
    }

    /// <summary>A checkpoint that cannot be written (no such directory; a full file system) says why, leaves the previous
    /// file as it was and no temporary file behind, and the VM goes on.</summary>
    [Fact]
    public void A_failed_checkpoint_reports_why_keeps_the_previous_file_and_the_vm_goes_on()
    {
        string rom = GuestRom.ToFile(CounterRom());
        string name = Name();
        string dir = Directory.CreateTempSubdirectory("hyve-snapfull").FullName;
        // A 256 KiB tmpfs holding a 200 KiB "previous snapshot": the new one (sections and the guest's touched pages) does not fit.
        var mount = System.Diagnostics.Process.Start("mount", $"-t tmpfs -o size=256k tmpfs {dir}")!;
        mount.WaitForExit();
        bool mounted = mount.ExitCode == 0;
        try
        {
            string target = Path.Combine(dir, "vm.hyvesnap");
            var previous = new byte[200 << 10];
            new Random(5).NextBytes(previous);
            File.WriteAllBytes(target, previous);
            using var p = HyveProcess.Start(Backends.Args("soft", "-m", "64M", "-l", $"bootrom,{rom}", "-l", "com1,stdio", name));
            p.WaitForSocket(name);
            WaitForCount(p, 2);
            var c = p.Ctl($"--vm={name}", "--checkpoint=/nonexistent-hyve-dir/vm.hyvesnap");
            Assert.NotEqual(0, c.Status);
            Assert.Contains("/nonexistent-hyve-dir/vm.hyvesnap", c.Err, StringComparison.Ordinal);
            if (mounted)
            {
                c = p.Ctl($"--vm={name}", $"--checkpoint={target}");
                Assert.NotEqual(0, c.Status);
                Assert.Contains("space", c.Err, StringComparison.OrdinalIgnoreCase);
                Assert.Equal(previous, File.ReadAllBytes(target));
                Assert.Equal([target], Directory.GetFiles(dir));
            }
            int at = Counts(p.Stdout)[^1];
            WaitForCount(p, at + 3);
            Assert.True(p.Ctl($"--vm={name}", "--force-poweroff").Status == 0);
            p.WaitForExit(30);
            AssertConsecutive(Counts(p.Stdout), 1);
            Assert.True(mounted, "mount -t tmpfs failed (not root?): the full-disk half of this test did not run");
        }
        finally
        {
            if (mounted) System.Diagnostics.Process.Start("umount", dir)!.WaitForExit();
            Directory.Delete(dir, true);
        }
    }
}
