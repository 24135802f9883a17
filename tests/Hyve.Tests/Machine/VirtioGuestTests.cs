// SPDX-License-Identifier: BSD-2-Clause
using System.Security.Cryptography;
using Xunit;

namespace Hyve.Tests.Machine;

/// <summary>
/// Debian's cloud kernel on the software CPU with virtio disks, entropy and console: one boot (about 40 s) checks
/// that root=/dev/vda mounts read-write from an ext4 image made with mkfs.ext4 -d, that a file the guest wrote and
/// synced is in the image afterwards (debugfs), that a second disk given with <c>ro</c> refuses writes and is unchanged,
/// that /dev/hwrng gives bytes, that console=hvc0 shows the kernel log on the virtio console, and that a second, named
/// console port (MULTIPORT) shows its name in sysfs and carries a line each way to a UNIX socket on the host.
/// The initramfs (tests/guests/virtio-guest) carries the kernel's own virtio modules and busybox.
/// </summary>
public class VirtioGuestTests
{
    private static string? CloudKernel() => FirmwareTests.CloudKernel();

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
            string agent = Path.Combine(dir, "agent.sock");
            var roBytes = new byte[1 << 20];
            RandomNumberGenerator.Fill(roBytes);
            File.WriteAllBytes(roDisk, roBytes);
            string name = "vio" + Guid.NewGuid().ToString("N")[..8];
            using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M",
                "-s", "0,hostbridge", "-s", "1,lpc", "-s", $"3,virtio-blk,{disk}", "-s", $"4,virtio-blk,{roDisk},ro",
                "-s", "5,virtio-rnd", "-s", $"6,virtio-console,con={hvc},org.hyve.agent={agent}",
                "-o", $"boot.kernel={kernel}", "-o", $"boot.initrd={Path.Combine(dir, "initrd.gz")}",
                "-o", "boot.cmdline=console=ttyS0 console=hvc0 root=/dev/vda", "-l", "com1,stdio", name));
            // The host end of the second console port: wait for the guest's line, answer it.
            var fromGuest = new System.Text.StringBuilder();
            var host = new Thread(() => AnswerOnPort(agent, fromGuest)) { IsBackground = true };
            host.Start();
            vm.WaitForExit(300);
            string o = vm.Stdout;
            Assert.True(o.Contains("HYVE-DONE", StringComparison.Ordinal), o + vm.Stderr);
            Assert.True(host.Join(10_000), "the port's host end did not finish");
            Assert.Contains("HYVE-VPORT-NAME org.hyve.agent\n", o.Replace("\r", ""), StringComparison.Ordinal);
            Assert.Contains("HYVE-VPORT-GOT hello from the host", o, StringComparison.Ordinal);
            lock (fromGuest) Assert.Contains("HYVE-VPORT-READY\n", fromGuest.ToString(), StringComparison.Ordinal);
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

    // Connects to the port's socket once hyve has made it, reads until the guest's READY line, answers, reads to the end.
    private static void AnswerOnPort(string path, System.Text.StringBuilder received)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (!File.Exists(path) && sw.Elapsed.TotalSeconds < 60) Thread.Sleep(20);
        using var s = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        s.Connect(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
        var buf = new byte[256];
        bool answered = false;
        while (true)
        {
            int n;
            try { n = s.Receive(buf); }
            catch (System.Net.Sockets.SocketException) { break; }
            if (n <= 0) break;
            lock (received)
            {
                received.Append(System.Text.Encoding.ASCII.GetString(buf, 0, n));
                if (!answered && received.ToString().Contains("HYVE-VPORT-READY\n", StringComparison.Ordinal))
                {
                    s.Send("hello from the host\n"u8);
                    answered = true;
                }
            }
        }
    }

    // A boot sector that writes HYVE-MBR-OK to COM1 and halts with interrupts off (hyve's status 2): 16-bit code at 0x7C00.
    private static byte[] BootSector()
    {
        byte[] msg = "HYVE-MBR-OK\r\n\0"u8.ToArray();
        byte[] code =
        [
            0xfa, 0x31, 0xc0, 0x8e, 0xd8,       // cli; xor ax,ax; mov ds,ax
            0xbe, 0x16, 0x7c,                   // mov si,0x7c16 (the message)
            0xba, 0xf8, 0x03,                   // mov dx,0x3f8
            0xac, 0x84, 0xc0, 0x74, 0x03,       // next: lodsb; test al,al; jz done
            0xee, 0xeb, 0xf8,                   // out dx,al; jmp next
            0xf4, 0xeb, 0xfd,                   // done: hlt; jmp done
        ];
        var sector = new byte[512];
        code.CopyTo(sector, 0);
        msg.CopyTo(sector, code.Length);
        sector[510] = 0x55;
        sector[511] = 0xaa;
        return sector;
    }

    // Debian's SeaBIOS finds the virtio-blk disk (its virtio driver, through the modern interface) and runs its boot sector.
    [Fact]
    public void DebianSeabiosBootsFromVirtioBlk()
    {
        const string seabios = "/usr/share/seabios/bios.bin";
        Assert.True(File.Exists(seabios), $"{seabios} is missing: scripts/test installs Debian's seabios package");
        string disk = Path.Combine(Path.GetTempPath(), $"hyve-mbr-{Guid.NewGuid():N}.img");
        try
        {
            var image = new byte[1 << 20];
            BootSector().CopyTo(image, 0);
            File.WriteAllBytes(disk, image);
            using var vm = HyveProcess.Start(Backends.Args("soft", "-l", $"bootrom,{seabios}", "-l", "fwcfg,qemu", "-l", "com1,stdio",
                "-s", "0,hostbridge", "-s", "31,lpc", "-s", $"3,virtio-blk,{disk}", "sbv" + Guid.NewGuid().ToString("N")[..8]));
            vm.WaitForExit(180);
            Assert.Contains("Booting from Hard Disk..HYVE-MBR-OK", vm.Stdout, StringComparison.Ordinal);
            Assert.Equal(2, vm.ExitCode); // halted
        }
        finally
        {
            File.Delete(disk);
        }
    }

    // Debian's OVMF finds the FAT file system on a virtio-blk disk (mapped FS0: by its shell) and runs startup.nsh, which
    // starts the cloud kernel's EFI stub from the disk with an initrd from the same disk, to the busybox initramfs's
    // marker. The kernel is not \EFI\BOOT\BOOTX64.EFI: OVMF would boot that path first, without a command line, and the
    // kernel would have neither console= nor initrd=. About 90 s on the software CPU.
    [Fact]
    public void DebianOvmfBootsTheKernelFromAVirtioBlkFatDisk()
    {
        const string ovmf = "/usr/share/ovmf/OVMF.fd";
        Assert.True(File.Exists(ovmf), $"{ovmf} is missing: scripts/test installs Debian's ovmf package");
        string? kernel = CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        string dir = Path.Combine(Path.GetTempPath(), $"hyve-efi-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string initrd = Path.Combine(dir, "initrd.gz"), fat = Path.Combine(dir, "esp.img"), nsh = Path.Combine(dir, "startup.nsh");
            Run(Path.Combine(HyveProcess.RepoRoot, "tests", "guests", "busybox-initramfs"), initrd);
            using (var f = File.Create(fat)) f.SetLength(64 << 20);
            File.WriteAllText(nsh, "fs0:\r\n\\EFI\\hyve\\vmlinuz.efi initrd=\\initrd.gz console=ttyS0\r\n");
            Run("mformat", $"-i {fat} -F -v HYVEEFI ::");
            Run("mmd", $"-i {fat} ::/EFI ::/EFI/hyve");
            Run("mcopy", $"-i {fat} {kernel} ::/EFI/hyve/vmlinuz.efi");
            Run("mcopy", $"-i {fat} {initrd} ::/initrd.gz");
            Run("mcopy", $"-i {fat} {nsh} ::/startup.nsh");
            using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M", "-l", $"bootrom,{ovmf}", "-l", "fwcfg,qemu",
                "-l", "com1,stdio", "-s", "0,hostbridge,vendor=0x8086,devid=0x1237", "-s", "1:3,piix4-pm", "-s", "31,lpc",
                "-s", $"4,virtio-blk,{fat}", "efi" + Guid.NewGuid().ToString("N")[..8]));
            vm.WaitForExit(420);
            Assert.Contains("FS0:", vm.Stdout, StringComparison.Ordinal);
            Assert.Contains("EFI stub: Loaded initrd from command line option", vm.Stdout, StringComparison.Ordinal);
            Assert.Contains("HYVE-INITRAMFS-OK", vm.Stdout, StringComparison.Ordinal);
            Assert.Equal(1, vm.ExitCode);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
