// SPDX-License-Identifier: BSD-2-Clause
using System.Net;
using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace Hyve.Tests.Vnc;

/// <summary>
/// VGA text mode with real firmware: Debian's SeaBIOS runs Debian's VGA BIOS (vgabios-stdvga.bin) from the standard VGA's
/// expansion ROM (<c>vga=on</c>) and prints its boot messages through it into the text buffer; hyve draws the buffer with
/// the BIOS's own font, and Debian's vncsnapshot plus tesseract read them. About 20 s on the software CPU.
/// </summary>
public class VgaTextGuestTests(ITestOutputHelper output)
{
    [Fact]
    public void SeabiosBootMessagesAreOnTheVncScreenInTextMode()
    {
        const string seabios = "/usr/share/seabios/bios.bin";
        Assert.True(File.Exists(seabios) && File.Exists(Hyve.Display.StdVga.VgaBiosPath), "scripts/test installs Debian's seabios package");
        Directory.CreateDirectory(GraphicalConsoleTests.ScreenDir);
        int display = GraphicalConsoleTests.FreeVncDisplay();
        string name = "vgatext" + Guid.NewGuid().ToString("N")[..6];
        using var vm = HyveProcess.Start(Backends.Args("soft", "-l", $"bootrom,{seabios}", "-l", "fwcfg,qemu", "-l", "com1,stdio",
            "-s", "0,hostbridge", "-s", $"2,fbuf,tcp=127.0.0.1:{5900 + display},vga=on", "-s", "31,lpc", name));
        try
        {
            vm.WaitForOutput("Booting from Hard Disk", 120);
            string png = Path.Combine(GraphicalConsoleTests.ScreenDir, "hyve-seabios-text.png");
            string text = "";
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while (sw.Elapsed.TotalSeconds < 60)
            {
                text = GraphicalConsoleTests.Snapshot(display, png, border: true);
                if (Regex.IsMatch(text, "SeaBI[O0]S") && text.Contains("Booting from", StringComparison.Ordinal)) break;
                Thread.Sleep(3000);
            }
            output.WriteLine($"OCR:\n{text}\nscreenshot: {png}");
            Assert.Matches("SeaBI[O0]S \\(version", text);
            Assert.Contains("Booting from Hard Disk", text, StringComparison.Ordinal);
            // Text mode 3 is 80x25 cells of 8x16: the screen is 640x400.
            using var c = new RfbTestClient(new IPEndPoint(IPAddress.Loopback, 5900 + display));
            Assert.Equal(0, c.Handshake());
            Assert.Equal((640, 400), (c.Width, c.Height));
        }
        finally
        {
            vm.Ctl($"--vm={name}", "--force-poweroff");
            vm.WaitForExit(30);
        }
    }

    // Direct kernel boot with vga=on: hyve leaves the VGA in text mode and describes it in screen_info as a BIOS boot
    // with vga=normal would, and Linux's vgacon shows the kernel log (console=tty0). About 40 s on the software CPU.
    [Fact]
    public void LinuxVgaconShowsTheKernelLogInTextMode()
    {
        string? kernel = Hyve.Tests.Machine.FirmwareTests.CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        Directory.CreateDirectory(GraphicalConsoleTests.ScreenDir);
        int display = GraphicalConsoleTests.FreeVncDisplay();
        string name = "vgacon" + Guid.NewGuid().ToString("N")[..6];
        using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M", "-o", $"boot.kernel={kernel}",
            "-o", "boot.cmdline=console=ttyS0 console=tty0 loglevel=6", "-l", "com1,stdio",
            "-s", $"2,fbuf,tcp=127.0.0.1:{5900 + display},vga=on", name));
        try
        {
            vm.WaitForOutput("Linux version", 240);
            string png = Path.Combine(GraphicalConsoleTests.ScreenDir, "hyve-linux-vgacon.png");
            string text = "";
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while (sw.Elapsed.TotalSeconds < 180)
            {
                Thread.Sleep(5000);
                text = GraphicalConsoleTests.Snapshot(display, png, border: true);
                if (ShowsKernelLog(text)) break;
            }
            output.WriteLine($"OCR:\n{text}\nscreenshot: {png}");
            // The first screen of the log, or, once the boot has scrolled it away (with translation it reaches the missing
            // root file system within seconds), its last one.
            Assert.True(ShowsKernelLog(text), $"the screen shows no kernel log: {text}");
            using var c = new RfbTestClient(new IPEndPoint(IPAddress.Loopback, 5900 + display));
            Assert.Equal(0, c.Handshake());
            Assert.Equal((640, 400), (c.Width, c.Height));
        }
        finally
        {
            vm.Ctl($"--vm={name}", "--force-poweroff");
            vm.WaitForExit(30);
        }
    }

    private static bool ShowsKernelLog(string text) =>
        text.Contains("Linux version", StringComparison.Ordinal) || text.Contains("Kernel panic", StringComparison.Ordinal)
        || text.Contains("VFS: Cannot open root device", StringComparison.Ordinal);
}
