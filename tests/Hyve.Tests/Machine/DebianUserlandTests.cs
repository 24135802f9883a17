// SPDX-License-Identifier: BSD-2-Clause
using Xunit;

namespace Hyve.Tests.Machine;

/// <summary>
/// Issue 13's stock Debian userland on the software CPU (it needs MMX in CPUID: Debian 12's glibc refuses a CPU below the
/// x86-64 baseline with "CPU ISA level is lower than required"). Debian's cloud kernel mounts root=/dev/vda, an ext4 image
/// (tests/guests/glibc-guest) holding Debian's own dynamically linked bash and ls with their glibc; PID 1 is bash
/// (#!/bin/bash /sbin/init), which runs ls and powers off. The initramfs is the busybox one of tests/guests/virtio-guest,
/// which loads the kernel's virtio modules and switch_roots (Debian's own initrd boots the same disk, in minutes).
/// </summary>
public class DebianUserlandTests
{
    private static void Run(string file, string args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {args} failed: {p.StandardError.ReadToEnd()}");
    }

    [Fact]
    public void DebianGlibcBashAndLsRunAsInitFromAVirtioDiskOnTheSoftwareCpu()
    {
        string? kernel = FirmwareTests.CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        string dir = Path.Combine(Path.GetTempPath(), $"hyve-glibc-{Guid.NewGuid():N}");
        try
        {
            Run(Path.Combine(HyveProcess.RepoRoot, "tests", "guests", "glibc-guest"), dir);
            string name = "glc" + Guid.NewGuid().ToString("N")[..8];
            using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M",
                "-s", "0,hostbridge", "-s", "1,lpc", "-s", $"3,virtio-blk,{Path.Combine(dir, "glibc.img")}",
                "-o", $"boot.kernel={kernel}", "-o", $"boot.initrd={Path.Combine(dir, "initrd.gz")}",
                "-o", "boot.cmdline=console=ttyS0 root=/dev/vda rw panic=-1", "-o", "exit_on_reboot=true", "-l", "com1,stdio", name));
            vm.WaitForExit(600); // about a minute of CPU; the wall-clock bound allows for a loaded host
            string o = vm.Stdout;
            Assert.DoesNotContain("CPU ISA level is lower than required", o, StringComparison.Ordinal);
            Assert.True(o.Contains("HYVE-GLIBC-INIT pid 1", StringComparison.Ordinal), o + vm.Stderr);
            Assert.Contains("HYVE-GLIBC-LS bin dev etc lib lib64 lost+found proc run sbin sys tmp", o, StringComparison.Ordinal);
            Assert.Contains("HYVE-GLIBC-BASH 42", o, StringComparison.Ordinal);
            Assert.DoesNotContain("Kernel panic", o, StringComparison.Ordinal);
            Assert.DoesNotContain("traps:", o, StringComparison.Ordinal); // no user-space #UD/#GP reported by the kernel
            Assert.Equal(1, vm.ExitCode); // powered off (a panic reboots, status 0)
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
