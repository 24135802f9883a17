// SPDX-License-Identifier: BSD-2-Clause
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using Hyve.Tests.Machine;
using Xunit;

namespace Hyve.Tests.Snapshot;

/// <summary>
/// Linux across a checkpoint, a suspend and a restore in a new process, on the software CPU: Debian's cloud kernel with
/// a busybox initramfs (tests/guests/counter-init) printing "tick N" on COM1 once a second and running a shell on COM2,
/// which hyve serves on a UNIX socket. The count must go on where it stopped (no reboot) and the shell must answer.
/// </summary>
public partial class LinuxSnapshotTests
{
    [GeneratedRegex(@"tick (\d+)\n")]
    private static partial Regex Tick();

    private static List<int> Ticks(string s) => [.. Tick().Matches(s).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture))];

    private static int LastTick(HyveProcess p) => Ticks(p.Stdout) is { Count: > 0 } t ? t[^1] : 0;

    // Sends a line to the shell on the socket and waits for the answer to appear.
    private static void Shell(string socketPath, string command, string expect, int seconds = 60)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        while (true)
        {
            try { s.Connect(new UnixDomainSocketEndPoint(socketPath)); break; }
            catch (SocketException) when (sw.Elapsed.TotalSeconds < seconds) { Thread.Sleep(100); }
        }
        s.ReceiveTimeout = 1000;
        s.Send(Encoding.ASCII.GetBytes(command + "\n"));
        var got = new StringBuilder();
        var buf = new byte[4096];
        while (!got.ToString().Contains(expect, StringComparison.Ordinal))
        {
            if (sw.Elapsed.TotalSeconds > seconds) throw new TimeoutException($"no '{expect}' from the shell; got: {got}");
            try
            {
                int n = s.Receive(buf);
                if (n == 0) throw new IOException($"the console socket closed; got: {got}");
                got.Append(Encoding.ASCII.GetString(buf, 0, n));
            }
            catch (SocketException) { }
        }
    }

    [Fact]
    public void Linux_keeps_counting_and_its_shell_answers_after_checkpoint_suspend_and_restore_in_a_new_process()
    {
        string? kernel = FirmwareTests.CloudKernel();
        Assert.True(kernel is not null, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        string dir = Directory.CreateTempSubdirectory("hyve-lnxsnap").FullName;
        string initrd = Path.Combine(dir, "initrd.gz");
        var psi = new System.Diagnostics.ProcessStartInfo(Path.Combine(HyveProcess.RepoRoot, "tests", "guests", "busybox-initramfs"), initrd);
        psi.Environment["INIT"] = Path.Combine(HyveProcess.RepoRoot, "tests", "guests", "counter-init");
        var build = System.Diagnostics.Process.Start(psi)!;
        build.WaitForExit();
        Assert.True(build.ExitCode == 0, "tests/guests/busybox-initramfs failed: scripts/test installs busybox-static");
        string name = "ls" + Guid.NewGuid().ToString("N")[..8];
        string cp = Path.Combine(dir, "checkpoint.hyvesnap"), sus = Path.Combine(dir, "suspend.hyvesnap");
        string sock1 = Path.Combine(dir, "shell1.sock"), sock2 = Path.Combine(dir, "shell2.sock");
        using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "256M", "-o", $"boot.kernel={kernel}", "-o", $"boot.initrd={initrd}",
            "-o", "boot.cmdline=console=ttyS0 quiet", "-l", "com1,stdio", "-l", $"com2,unix:{sock1}", name));
        vm.WaitForOutput("tick 2\n", 300);
        Shell(sock1, "echo first $((6*7))", "first 42");

        var c = vm.Ctl($"--vm={name}", $"--checkpoint={cp}");
        Assert.True(c.Status == 0, c.Err);
        int atCheckpoint = LastTick(vm);
        // The VM goes on after a checkpoint.
        vm.WaitForOutput($"tick {atCheckpoint + 2}\n", 60);
        c = vm.Ctl($"--vm={name}", $"--suspend={sus}");
        Assert.True(c.Status == 0, c.Err);
        vm.WaitForExit(60);
        Assert.True(vm.ExitCode == 0, $"status {vm.ExitCode}: {vm.Stderr}");
        int last = LastTick(vm);

        using var r = HyveProcess.Start(Backends.Args("soft", "-r", sus, "-l", $"com2,unix:{sock2}", name));
        r.WaitForOutput($"tick {last + 2}\n", 60);
        Assert.DoesNotContain("Linux version", r.Stdout, StringComparison.Ordinal); // no reboot
        Assert.DoesNotContain("HYVE-COUNTER-START", r.Stdout, StringComparison.Ordinal);
        var ticks = Ticks(vm.Stdout + r.Stdout);
        for (int i = 1; i < ticks.Count; i++) Assert.True(ticks[i] == ticks[i - 1] + 1, $"tick {ticks[i]} follows {ticks[i - 1]}");
        Shell(sock2, "echo again $((2+3)) $(cat /proc/uptime)", "again 5");
        Assert.True(r.Ctl($"--vm={name}", "--force-poweroff").Status == 0);
        r.WaitForExit(30);
        Directory.Delete(dir, true);
    }
}
