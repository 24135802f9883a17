// SPDX-License-Identifier: BSD-2-Clause
using System.Net;
using System.Text.RegularExpressions;
using Hyve.Virtio;
using Xunit;
using Xunit.Abstractions;

namespace Hyve.Tests.Vnc;

/// <summary>
/// The virtio-input tablet with a real guest: Debian's cloud kernel on the software CPU loads its own virtio_input and
/// evdev modules from a busybox initramfs (tests/guests/input-guest), which records the tablet's event device while an
/// RFB client moves the pointer, clicks and turns the wheel; the guest then prints what evdev delivered. One boot (about
/// 45 s) checks the device's identity and capabilities as Linux sees them and the events themselves.
/// </summary>
public partial class TabletGuestTests(ITestOutputHelper output)
{
    [GeneratedRegex(@"HYVE-EV (\d+) (\d+) (-?\d+)")]
    private static partial Regex EventLine();

    [Fact]
    public void VncPointerEventsReachLinuxEvdevThroughTheVirtioTablet()
    {
        string? kernel = Hyve.Tests.Machine.FirmwareTests.CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        string initrd = Path.Combine(Path.GetTempPath(), $"hyve-input-{Guid.NewGuid():N}.gz");
        var psi = new System.Diagnostics.ProcessStartInfo(Path.Combine(HyveProcess.RepoRoot, "tests", "guests", "input-guest"), initrd);
        using (var p = System.Diagnostics.Process.Start(psi)!) { p.WaitForExit(); Assert.Equal(0, p.ExitCode); }
        int port = 5900 + GraphicalConsoleTests.FreeVncDisplay();
        string name = "tab" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M", "-s", "0,hostbridge", "-s", "1,lpc",
                "-s", $"2,fbuf,tcp=127.0.0.1:{port},w=800,h=600", "-s", "3,virtio-input,tablet",
                "-o", $"boot.kernel={kernel}", "-o", $"boot.initrd={initrd}", "-o", "boot.cmdline=console=ttyS0 loglevel=4",
                "-l", "com1,stdio", name));
            try
            {
                vm.WaitForOutput("HYVE-TABLET-READY", 240);
                using (var c = new RfbTestClient(new IPEndPoint(IPAddress.Loopback, port)))
                {
                    Assert.Equal(0, c.Handshake());
                    int w = c.Width, h = c.Height;
                    c.Pointer(w / 4, h / 2, 0);          // move
                    c.Pointer(w / 4, h / 2, 1);          // left down
                    c.Pointer(w / 4, h / 2, 0);          // left up
                    c.Pointer(w - 1, h - 1, 4);          // right down in the far corner
                    c.Pointer(w - 1, h - 1, 0);
                    c.Pointer(w - 1, h - 1, 8);          // a wheel notch up (press and release of button 4)
                    c.Pointer(w - 1, h - 1, 0);
                    Thread.Sleep(3000);
                    vm.Stdin.WriteLine("done");
                    vm.Stdin.Flush();
                    vm.WaitForExit(120);
                    string o = vm.Stdout;
                    output.WriteLine(o);
                    Assert.Contains("HYVE-DONE", o, StringComparison.Ordinal);
                    // Identity and capabilities as Linux's input core has them: BUS_VIRTUAL, EV_SYN|KEY|REL|ABS,
                    // BTN_LEFT..BTN_MIDDLE (bits 0x110-0x112), REL_HWHEEL|REL_WHEEL, ABS_X|ABS_Y.
                    Assert.Contains($"HYVE-TABLET name={VirtioInput.TabletName} id=0006:0627:0003:0001 ev=f key=70000 0 0 0 0 rel=140 abs=3", o, StringComparison.Ordinal);
                    var ev = EventLine().Matches(o).Select(m => (int.Parse(m.Groups[1].Value), int.Parse(m.Groups[2].Value), int.Parse(m.Groups[3].Value))).ToList();
                    Assert.Equal((800, 600), (w, h));
                    const int x = 8202, y = 16410; // pixel 200 of 800 and 300 of 600 on 0..32767 (first pixel 0, last 32767)
                    // evdev passes on changes only: the first report carries both axes, the click none.
                    var expected = new List<(int, int, int)>
                    {
                        (3, 0, x), (3, 1, y), (0, 0, 0),
                        (1, 0x110, 1), (0, 0, 0),
                        (1, 0x110, 0), (0, 0, 0),
                        (3, 0, 32767), (3, 1, 32767), (1, 0x111, 1), (0, 0, 0),
                        (1, 0x111, 0), (0, 0, 0),
                        (2, 8, 1), (0, 0, 0),
                    };
                    Assert.Equal(expected, ev);
                }
            }
            finally
            {
                if (!vm.HasExited) { vm.Ctl($"--vm={name}", "--force-poweroff"); vm.WaitForExit(30); }
            }
        }
        finally
        {
            File.Delete(initrd);
        }
    }
}
