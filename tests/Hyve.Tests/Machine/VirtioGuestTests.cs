// SPDX-License-Identifier: BSD-2-Clause
using System.Security.Cryptography;
using Xunit;

namespace Hyve.Tests.Machine;

/// <summary>
/// Debian's cloud kernel on the software CPU with virtio disks, entropy and console: one boot (about 40 s) checks
/// that root=/dev/vda mounts read-write from an ext4 image made with mkfs.ext4 -d, that a file the guest wrote and
/// synced is in the image afterwards (debugfs), that a second disk given with <c>ro</c> refuses writes and is unchanged,
/// that /dev/hwrng gives bytes, and that console=hvc0 shows the kernel log on the virtio console.
/// The initramfs (tests/guests/virtio-guest) carries the kernel's own virtio modules and busybox.
/// </summary>
public class VirtioGuestTests
{
    private static string? CloudKernel()
    {
        var k = Directory.GetFiles("/boot", "vmlinuz-*-cloud-amd64");
        Array.Sort(k, StringComparer.Ordinal);
        return k.Length == 0 ? null : k[^1];
    }

    private static string Run(string file, string args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {args} failed: {p.StandardError.ReadToEnd()}");
        return o;
    }

    [Fact]
    public void DebianKernelBootsFromVirtioBlkWithRngAndHvc0OnTheSoftwareCpu()
    {
        string? kernel = CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        string dir = Path.Combine(Path.GetTempPath(), $"hyve-virtio-{Guid.NewGuid():N}");
        try
        {
            Run(Path.Combine(HyveProcess.RepoRoot, "tests", "guests", "virtio-guest"), dir);
            string disk = Path.Combine(dir, "disk.img"), roDisk = Path.Combine(dir, "ro.img"), hvc = Path.Combine(dir, "hvc0.log");
            var roBytes = new byte[1 << 20];
            RandomNumberGenerator.Fill(roBytes);
            File.WriteAllBytes(roDisk, roBytes);
            string name = "vio" + Guid.NewGuid().ToString("N")[..8];
            using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M",
                "-s", "0,hostbridge", "-s", "1,lpc", "-s", $"3,virtio-blk,{disk}", "-s", $"4,virtio-blk,{roDisk},ro",
                "-s", "5,virtio-rnd", "-s", $"6,virtio-console,con={hvc}",
                "-o", $"boot.kernel={kernel}", "-o", $"boot.initrd={Path.Combine(dir, "initrd.gz")}",
                "-o", "boot.cmdline=console=ttyS0 console=hvc0 root=/dev/vda", "-l", "com1,stdio", name));
            vm.WaitForExit(300);
            string o = vm.Stdout;
            Assert.True(o.Contains("HYVE-DONE", StringComparison.Ordinal), o + vm.Stderr);
            Assert.Equal(1, vm.ExitCode); // powered off
            Assert.Contains("virtio_blk virtio0: [vda] 131072 512-byte logical blocks", o, StringComparison.Ordinal);
            Assert.Contains("HYVE-ROOT-UP ext4 rw", o, StringComparison.Ordinal);
            Assert.Contains("HYVE-WRITE-OK", o, StringComparison.Ordinal);
            Assert.Contains("HYVE-RO-WRITE-FAILED", o, StringComparison.Ordinal);
            Assert.Contains("HYVE-RO-SIZE 2048 ro=1", o, StringComparison.Ordinal);
            Assert.Matches("HYVE-RNG [0-9a-f]{32}\n", o);
            Assert.DoesNotContain("HYVE-RNG 00000000000000000000000000000000", o, StringComparison.Ordinal);
            Assert.DoesNotContain("needs reset", vm.Stderr, StringComparison.Ordinal);
            // What the guest wrote and synced is in the image.
            Assert.Equal("written by the guest through virtio-blk\n", Run("debugfs", $"-R \"cat /hello.txt\" {disk}"));
            Assert.Equal(roBytes, File.ReadAllBytes(roDisk));
            string console = File.ReadAllText(hvc);
            Assert.Contains("EXT4-fs (vda): mounted filesystem", console, StringComparison.Ordinal);
            Assert.Contains("HYVE-HVC0-OK", console, StringComparison.Ordinal);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
