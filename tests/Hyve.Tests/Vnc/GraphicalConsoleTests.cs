// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Hyve.Vnc;
using Xunit;
using Xunit.Abstractions;

namespace Hyve.Tests.Vnc;

/// <summary>
/// The graphical console with real firmware and real clients: Debian's OVMF drives the standard VGA (its QemuVideoDxe
/// GOP), Debian's vncsnapshot takes the screen over RFB, tesseract reads it, and keys typed through an RFB client reach
/// the UEFI shell through the 8042. QEMU (-vga std -vnc) runs the same firmware in the same test, and both screens are
/// saved side by side under <see cref="ScreenDir"/>.
/// </summary>
public class GraphicalConsoleTests(ITestOutputHelper output)
{
    private const string Ovmf = "/usr/share/ovmf/OVMF.fd";

    /// <summary>Where the screenshots go.</summary>
    public static readonly string ScreenDir = Path.Combine(Path.GetTempPath(), "hyve-vnc-screens");

    internal static int FreeVncDisplay()
    {
        for (int d = 40 + Random.Shared.Next(50); ; d++)
        {
            try
            {
                using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                s.Bind(new IPEndPoint(IPAddress.Loopback, 5900 + d));
                return d;
            }
            catch (SocketException) { }
        }
    }

    private static (int Status, string Out) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd();
        p.StandardError.ReadToEnd();
        if (!p.WaitForExit(60_000)) { p.Kill(); return (-1, o); }
        return (p.ExitCode, o);
    }

    // vncsnapshot writes JPEG; ImageMagick makes the PNG kept for the lead; tesseract reads the PNG.
    internal static string Snapshot(int display, string png, string? passwdFile = null, bool border = false)
    {
        string jpg = Path.ChangeExtension(png, ".jpg");
        File.Delete(jpg);
        string[] args = passwdFile is null ? ["-quiet", $"127.0.0.1:{display}", jpg] : ["-quiet", "-passwd", passwdFile, $"127.0.0.1:{display}", jpg];
        var (st, _) = Run("vncsnapshot", args);
        Assert.True(st == 0 && File.Exists(jpg), $"vncsnapshot of display {display} failed ({st})");
        // A margin helps tesseract with text that starts at the picture's left edge (VGA text mode has none).
        Assert.Equal(0, (border ? Run("convert", jpg, "-bordercolor", "black", "-border", "16", png) : Run("convert", jpg, png)).Status);
        File.Delete(jpg);
        return Run("tesseract", png, "-").Out;
    }

    private static int Count(string text, string what)
    {
        int n = 0;
        for (int i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + 1, StringComparison.Ordinal)) n++;
        return n;
    }

    // A vncpasswd file: the password's 8 bytes DES-encrypted under VNC's fixed key (given in d3des' mirrored bit order).
    private static string PasswdFile(string password)
    {
        byte[] fixedKey = [23, 82, 107, 6, 35, 78, 88, 7];
        var key = new byte[8];
        for (int i = 0; i < 8; i++)
        {
            byte b = fixedKey[i], m = 0;
            for (int bit = 0; bit < 8; bit++) m |= (byte)((b >> bit & 1) << (7 - bit));
            key[i] = m;
        }
        var block = new byte[8];
        System.Text.Encoding.ASCII.GetBytes(password).AsSpan(0, Math.Min(8, password.Length)).CopyTo(block);
        var enc = new byte[8];
        VncDes.EncryptBlock(key, block, enc);
        string path = Path.Combine(Path.GetTempPath(), $"hyve-vncpasswd-{Guid.NewGuid():N}");
        File.WriteAllBytes(path, enc);
        return path;
    }

    [Fact]
    public void OvmfDrawsTheUefiShellOnTheFramebufferAndVncKeysReachIt()
    {
        Assert.True(File.Exists(Ovmf), $"{Ovmf} is missing: scripts/test installs Debian's ovmf package");
        Directory.CreateDirectory(ScreenDir);
        int hyveDisplay = FreeVncDisplay(), qemuDisplay = FreeVncDisplay();
        if (qemuDisplay == hyveDisplay) qemuDisplay++;
        string name = "vnc" + Guid.NewGuid().ToString("N")[..8];
        string passwd = PasswdFile("hyvepass");
        string qemuSerial = Path.Combine(Path.GetTempPath(), $"hyve-qemu-serial-{name}.log");
        using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M", "-l", $"bootrom,{Ovmf}", "-l", "fwcfg,qemu",
            "-l", "com1,stdio", "-s", "0,hostbridge,vendor=0x8086,devid=0x1237", "-s", "1:3,piix4-pm",
            "-s", $"2,fbuf,tcp=127.0.0.1:{5900 + hyveDisplay},w=1024,h=768,password=hyvepass", "-s", "31,lpc", name));
        var qemu = Process.Start(new ProcessStartInfo("qemu-system-x86_64")
        {
            ArgumentList = { "-accel", "tcg", "-m", "512", "-bios", Ovmf, "-vga", "std", "-display", "none", "-vnc", $"127.0.0.1:{qemuDisplay}",
                "-serial", $"file:{qemuSerial}", "-net", "none", "-no-reboot" },
            RedirectStandardError = true, RedirectStandardOutput = true,
        })!;
        try
        {
            vm.WaitForOutput("UEFI Interactive Shell", 420);
            vm.WaitForSocket(name);
            var (_, memseg, _) = vm.Ctl($"--vm={name}", "--get-memseg");
            Assert.Contains("framebuffer", memseg, StringComparison.Ordinal);
            Thread.Sleep(7000); // the shell's startup.nsh countdown ends at the prompt
            string hyvePng = Path.Combine(ScreenDir, "hyve-uefi-shell.png");
            string text = Snapshot(hyveDisplay, hyvePng, passwd);
            output.WriteLine($"hyve OCR before typing:\n{text}");
            Assert.Contains("UEFI Interactive Shell", text, StringComparison.Ordinal);

            // Type "ver" and Return through RFB: the 8042 carries it to the shell, which prints its version again.
            using (var c = new RfbTestClient(new IPEndPoint(IPAddress.Loopback, 5900 + hyveDisplay)))
            {
                Assert.Equal(0, c.Handshake(8, "hyvepass"));
                c.Type("ver\r");
            }
            var sw = Stopwatch.StartNew();
            while (Count(vm.Stdout, "UEFI Interactive Shell") < 2 && sw.Elapsed.TotalSeconds < 60) Thread.Sleep(200);
            Assert.True(Count(vm.Stdout, "UEFI Interactive Shell") >= 2, $"the shell did not answer 'ver' on COM1: {vm.Stdout}");
            Thread.Sleep(1000);
            string typed = Snapshot(hyveDisplay, hyvePng, passwd);
            output.WriteLine($"hyve OCR after typing ver:\n{typed}");
            Assert.True(Count(typed, "UEFI Interactive Shell") >= 2, "the screen does not show ver's output");
            Assert.Contains("ver", typed.Replace("UEFI Interactive Shell", "", StringComparison.Ordinal).Replace("Press", "", StringComparison.Ordinal),
                StringComparison.Ordinal);

            // The same on QEMU, for the picture beside it.
            sw.Restart();
            while (!(File.Exists(qemuSerial) && File.ReadAllText(qemuSerial).Contains("UEFI Interactive Shell", StringComparison.Ordinal))
                && sw.Elapsed.TotalSeconds < 180) Thread.Sleep(500);
            Thread.Sleep(7000);
            using (var c = new RfbTestClient(new IPEndPoint(IPAddress.Loopback, 5900 + qemuDisplay)))
            {
                c.Handshake(8);
                c.Type("ver\r");
            }
            Thread.Sleep(3000);
            string qemuPng = Path.Combine(ScreenDir, "qemu-uefi-shell.png");
            string qtext = Snapshot(qemuDisplay, qemuPng);
            output.WriteLine($"QEMU OCR after typing ver:\n{qtext}");
            output.WriteLine($"screenshots: {hyvePng} {qemuPng}");
            Console.WriteLine($"hyve-vnc screenshots: {hyvePng} {qemuPng}");
            Assert.Contains("UEFI Interactive Shell", qtext, StringComparison.Ordinal);
        }
        finally
        {
            try { qemu.Kill(); } catch (InvalidOperationException) { }
            qemu.WaitForExit(10_000);
            qemu.Dispose();
            File.Delete(passwd);
            File.Delete(qemuSerial);
            vm.Ctl($"--vm={name}", "--force-poweroff");
            vm.WaitForExit(30);
        }
    }

    // Direct kernel boot with the display: hyve sets the mode and describes it in screen_info as a boot loader would,
    // Linux's efifb takes it and fbcon shows the kernel log (loglevel=6 keeps it to the notice lines, so the banner
    // is still on screen when fbcon redraws). About 60 s on the software CPU.
    [Fact]
    public void DebianCloudKernelLogIsOnTheVncScreen()
    {
        string? kernel = Hyve.Tests.Machine.FirmwareTests.CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        Directory.CreateDirectory(ScreenDir);
        int display = FreeVncDisplay();
        string name = "vnclnx" + Guid.NewGuid().ToString("N")[..6];
        using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M", "-o", $"boot.kernel={kernel}",
            "-o", "boot.cmdline=console=ttyS0 console=tty0 loglevel=6", "-l", "com1,stdio",
            "-s", $"2,fbuf,tcp=127.0.0.1:{5900 + display}", name));
        try
        {
            vm.WaitForOutput("Linux version", 240);
            string png = Path.Combine(ScreenDir, "hyve-linux-efifb.png");
            var sw = Stopwatch.StartNew();
            string text = "";
            while (sw.Elapsed.TotalSeconds < 240)
            {
                Thread.Sleep(5000);
                text = Snapshot(display, png);
                if (text.Contains("Linux version", StringComparison.Ordinal)) break;
            }
            output.WriteLine($"OCR:\n{text}\nscreenshot: {png}");
            Console.WriteLine($"hyve-vnc screenshot: {png}");
            Assert.Contains("Linux version", text, StringComparison.Ordinal);
        }
        finally
        {
            vm.Ctl($"--vm={name}", "--force-poweroff");
            vm.WaitForExit(30);
        }
    }

    [Fact]
    public void AVncPortInUseStopsHyveWithStatus4()
    {
        int display = FreeVncDisplay();
        using var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.Bind(new IPEndPoint(IPAddress.Loopback, 5900 + display));
        holder.Listen();
        using var vm = HyveProcess.Run(Backends.Args("soft", "-l", $"bootrom,{Ovmf}", "-s", $"2,fbuf,tcp=127.0.0.1:{5900 + display}",
            "-s", "31,lpc", "vncbusy" + Guid.NewGuid().ToString("N")[..6]));
        Assert.Equal(4, vm.ExitCode);
        Assert.Single(vm.Stderr.Trim().Split('\n'));
        Assert.Contains($"VNC server on 127.0.0.1:{5900 + display}", vm.Stderr, StringComparison.Ordinal);
        using var bad = HyveProcess.Run(Backends.Args("soft", "-l", $"bootrom,{Ovmf}", "-s", "2,fbuf,vga=maybe", "-s", "31,lpc", "vncbad"));
        Assert.Equal(4, bad.ExitCode);
        Assert.Contains("vga", bad.Stderr, StringComparison.Ordinal);
    }
}
