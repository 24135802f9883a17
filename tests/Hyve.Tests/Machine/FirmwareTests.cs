// SPDX-License-Identifier: BSD-2-Clause
using Xunit;

namespace Hyve.Tests.Machine;

/// <summary>Real firmware and kernels from Debian's packages on the real ./hyve, on each CPU engine.</summary>
public class FirmwareTests
{
    private const string SeaBios = "/usr/share/seabios/bios.bin";

    [Theory, KvmData, SoftData]
    public void DebianSeabiosBootsToNoBootableDevice(string accel)
    {
        Assert.True(File.Exists(SeaBios), $"{SeaBios} is missing: scripts/test installs Debian's seabios package");
        string name = "sea" + Guid.NewGuid().ToString("N")[..8];
        using var vm = HyveProcess.Start(Backends.Args(accel, "-l", $"bootrom,{SeaBios}", "-l", "fwcfg,qemu", "-l", "com1,stdio",
            "-s", "0,hostbridge", "-s", "31,lpc", name));
        vm.WaitForOutput("No bootable device.", 180);
        Assert.Contains("SeaBIOS (version", vm.Stdout, StringComparison.Ordinal);
        vm.WaitForSocket(name);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-poweroff").Status);
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
    }

    private const string Ovmf = "/usr/share/ovmf/OVMF.fd";

    // Debian's OVMF on the software CPU (this host's KVM cannot run it: its emulator refuses x87). OVMF's timer
    // library knows only QEMU's chipsets, so the VM shows an i440FX host bridge and the PIIX4 PM function. About 35 s
    // here when the machine is quiet, including the shell's 5 s startup.nsh countdown.
    [Fact]
    public void DebianOvmfStartsTheUefiShellOnTheSoftwareCpu()
    {
        Assert.True(File.Exists(Ovmf), $"{Ovmf} is missing: scripts/test installs Debian's ovmf package");
        string name = "uefi" + Guid.NewGuid().ToString("N")[..8];
        using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M", "-l", $"bootrom,{Ovmf}", "-l", "fwcfg,qemu",
            "-l", "com1,stdio", "-s", "0,hostbridge,vendor=0x8086,devid=0x1237", "-s", "1:3,piix4-pm", "-s", "31,lpc", name));
        // The "Shell>" prompt ends no line (the output is read by lines); the shell's banner line does.
        vm.WaitForOutput("UEFI Interactive Shell", 420);
        Assert.Contains("BdsDxe: starting Boot0001 \"EFI Internal Shell\"", vm.Stdout, StringComparison.Ordinal);
        vm.WaitForSocket(name);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-poweroff").Status);
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
    }

    /// <summary>Builds tests/guests/busybox-initramfs into a new temporary file and returns its path (the caller deletes it).</summary>
    public static string BusyboxInitramfs()
    {
        string initrd = Path.Combine(Path.GetTempPath(), $"hyve-initrd-{Guid.NewGuid():N}.gz");
        var build = System.Diagnostics.Process.Start(Path.Combine(HyveProcess.RepoRoot, "tests", "guests", "busybox-initramfs"), initrd)!;
        build.WaitForExit();
        Assert.True(build.ExitCode == 0, "tests/guests/busybox-initramfs failed: scripts/test installs busybox-static");
        return initrd;
    }

    /// <summary>What Linux logs when it cannot calibrate its clocks or stops trusting the TSC (issue 17 item 9).</summary>
    public static readonly string[] ClockComplaints =
    [
        "Fast TSC calibration failed", "Unable to calibrate against PIT", "PIT calibration deviates", "APIC calibration not consistent",
        "Marking TSC unstable", "Marking clocksource 'tsc' as unstable", "TSC doesn't count with P0 frequency",
    ];

    /// <summary>The newest Debian cloud kernel under /boot, or null.</summary>
    public static string? CloudKernel()
    {
        if (!Directory.Exists("/boot")) return null;
        var k = Directory.GetFiles("/boot", "vmlinuz-*-cloud-amd64");
        Array.Sort(k, StringComparer.Ordinal);
        return k.Length == 0 ? null : k[^1];
    }

    [Theory, KvmData, SoftData]
    public void DebianCloudKernelPrintsItsBannerOnCom1(string accel)
    {
        string? kernel = CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        string name = "lnx" + Guid.NewGuid().ToString("N")[..8];
        using var vm = HyveProcess.Start(Backends.Args(accel, "-m", "512M", "-o", $"boot.kernel={kernel}",
            "-o", "boot.cmdline=console=ttyS0 earlyprintk=serial", "-l", "com1,stdio", name));
        // Measured on this machine's KVM (the kernel's instruction emulator): QEMU prints the banner after about
        // 90 s, mostly decompression; allow far more, since other tests run beside it.
        vm.WaitForOutput("Linux version 6.", 480);
        vm.WaitForSocket(name);
        vm.Ctl($"--vm={name}", "--force-poweroff");
        vm.WaitForExit(30);
    }

    // Debian's cloud kernel with a busybox initramfs (tests/guests/busybox-initramfs) on the software CPU, from the
    // kernel's entry to /init in user space and a power-off through ACPI: about 40 s here when the machine is quiet.
    // Its log must show the platform's devices found without complaint (the PS/2 controller among them), and /init reads
    // the SMBIOS UUID given with -U. Two vCPUs: the power-off waits for every device probe, so a keyboard whose
    // identify bytes never interrupted (atkbd retrying for a minute) once made this boot hang after /init.
    // Once with the binary translator (the default) and once with the interpreter alone (soft.jit=false).
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void DebianCloudKernelRunsBusyboxInitAndPowersOffOnTheSoftwareCpu(bool jit)
    {
        string? kernel = CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        string initrd = BusyboxInitramfs();
        try
        {
            string name = "bb" + Guid.NewGuid().ToString("N")[..8];
            const string uuid = "0badcafe-1234-4321-8765-0123456789ab";
            using var vm = HyveProcess.Start(Backends.Args("soft", "-o", $"soft.jit={(jit ? "true" : "false")}", "-c", "2", "-m", "512M", "-U", uuid, "-o", $"boot.kernel={kernel}",
                "-o", $"boot.initrd={initrd}", "-o", "boot.cmdline=console=ttyS0", "-l", "com1,stdio", name));
            vm.WaitForExit(600);
            Assert.Contains($"HYVE-INITRAMFS-OK {Path.GetFileName(kernel)["vmlinuz-".Length..]} cpus=2 uuid={uuid}", vm.Stdout, StringComparison.Ordinal);
            Assert.Contains("DMI: Hyve Hyve, BIOS 1.0 11/25/2026", vm.Stdout, StringComparison.Ordinal);
            Assert.Equal(1, vm.ExitCode); // powered off
            Assert.Contains("serio: i8042 KBD port at 0x60,0x64 irq 1", vm.Stdout, StringComparison.Ordinal);
            Assert.DoesNotContain("i8042: Can't", vm.Stdout, StringComparison.Ordinal);
            Assert.Contains("input: AT Translated Set 2 keyboard", vm.Stdout, StringComparison.Ordinal); // atkbd's identify answered
            // CPUID 0x15/0x16 give the TSC rate and the APIC timer's clock: Linux calibrates neither against the PIT,
            // and keeps the TSC as its clock source (issue 17 item 9).
            Assert.Contains("tsc: Detected 1000.000 MHz processor", vm.Stdout, StringComparison.Ordinal);
            foreach (var complaint in ClockComplaints) Assert.DoesNotContain(complaint, vm.Stdout, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(initrd);
        }
    }
}
