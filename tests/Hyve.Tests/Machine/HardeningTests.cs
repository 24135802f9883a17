// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Machine;

/// <summary>What a hostile or careless host side found (issue 18): a stalled console, signals, strict I/O.</summary>
public class HardeningTests
{
    // A guest that prints 'x' on COM1 forever, as fast as it can.
    private static string PrintForeverRom() => GuestRom.ToFile(GuestRom.RealMode(a =>
    {
        var again = a.CreateLabel();
        a.mov(dx, 0x3f8);
        a.mov(al, (byte)'x');
        a.Label(ref again);
        a.@out(dx, al);
        a.jmp(again);
    }));

    private static string NewName(string prefix) => prefix + Guid.NewGuid().ToString("N")[..8];

    private static long DroppedBytes(HyveProcess vm, string name)
    {
        var (status, output, _) = vm.Ctl($"--vm={name}", "--get-stats");
        Assert.Equal(0, status);
        foreach (var line in output.Split('\n'))
            if (line.StartsWith("console output bytes dropped", StringComparison.Ordinal))
                return long.Parse(line[(line.LastIndexOf('\t') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        throw new InvalidOperationException($"no console counter in: {output}");
    }

    private static void WaitForDrops(HyveProcess vm, string name)
    {
        var sw = Stopwatch.StartNew();
        while (DroppedBytes(vm, name) == 0)
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), "no output was ever dropped");
            Thread.Sleep(100);
        }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int mkfifo(string path, int mode);

    // issue 18 #4: COM1 on a FIFO nobody reads. Start-up does not wait for a reader, the guest's output fills the
    // buffers and is then dropped and counted, and hyvectl and --force-poweroff work throughout.
    [Fact]
    public void AFifoNobodyReadsNeverStallsTheVm()
    {
        string fifo = Path.Combine(Path.GetTempPath(), NewName("fifo"));
        Assert.Equal(0, mkfifo(fifo, 0x180));
        try
        {
            string name = NewName("stall");
            using var vm = HyveProcess.Start("-o", "accel=soft", "-l", $"bootrom,{PrintForeverRom()}", "-l", $"com1,{fifo}", name);
            vm.WaitForSocket(name, 30);
            WaitForDrops(vm, name);
            var (status, rip, _) = vm.Ctl($"--vm={name}", "--get-rip");
            Assert.Equal(0, status);
            Assert.StartsWith("rip[0]", rip, StringComparison.Ordinal);
            long before = DroppedBytes(vm, name);
            Thread.Sleep(300);
            Assert.True(DroppedBytes(vm, name) > before, "the guest stopped running");
            Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-poweroff").Status);
            vm.WaitForExit(20);
            Assert.Equal(1, vm.ExitCode);
            Assert.False(File.Exists(Path.Combine(vm.RunDir, name)));
        }
        finally
        {
            File.Delete(fifo);
        }
    }

    // issue 18 #4: a socket console client that connects and never reads; SIGTERM still ends the VM (power-off, as
    // no guest listens for the power button) and the control socket goes with it.
    [Fact]
    public void ASocketClientThatNeverReadsNeverStallsTheVm()
    {
        string sock = Path.Combine(Path.GetTempPath(), NewName("con") + ".sock");
        string name = NewName("stall");
        using var vm = HyveProcess.Start("-o", "accel=soft", "-l", $"bootrom,{PrintForeverRom()}", "-l", $"com1,unix:{sock}", name);
        vm.WaitForSocket(name, 30);
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.ReceiveBufferSize = 4096;
        client.Connect(new UnixDomainSocketEndPoint(sock));
        WaitForDrops(vm, name);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--get-rip").Status);
        vm.Signal(15);
        vm.WaitForExit(20);
        Assert.Equal(1, vm.ExitCode);
        Assert.False(File.Exists(Path.Combine(vm.RunDir, name)));
        Assert.False(File.Exists(sock));
    }

    // issue 18 #6: SIGINT and SIGHUP take SIGTERM's path (power button, then power-off: status 1 here, as this guest
    // does not listen for the button), SIGQUIT and SIGUSR1 power off at once; the control socket goes every time.
    [Theory]
    [InlineData(2)]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(10)]
    public void SignalsEndTheVmCleanly(int signal)
    {
        string name = NewName("sig");
        using var vm = HyveProcess.Start("-o", "accel=soft", "-l", $"bootrom,{PrintForeverRom()}", "-l", "com1,/dev/null", name);
        vm.WaitForSocket(name, 30);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--get-rip").Status);
        vm.Signal(signal);
        vm.WaitForExit(20);
        Assert.Equal(1, vm.ExitCode);
        Assert.False(File.Exists(Path.Combine(vm.RunDir, name)), "the control socket is left behind");
    }

    // issue 18 #7: -e (x86.strictio) stops the VM at an access no device claims, naming it, with status 4; without -e
    // the same read gives all ones and the guest goes on.
    [Theory]
    [InlineData("port")]
    [InlineData("mmio")]
    public void StrictIoStopsAtAnUnclaimedAccess(string kind)
    {
        string rom = GuestRom.ToFile(GuestRom.ProtectedMode32(a =>
        {
            if (kind == "port")
            {
                a.mov(dx, 0x2a0); // nothing decodes 0x2a0
                a.@in(al, dx);
            }
            else
            {
                a.mov(al, __byte_ptr[0xc8000010]); // the PCI memory window with no BAR there
            }
            GuestRom.Print(a, "went on\n");
            a.cli();
            a.hlt();
        }));
        using (var strict = HyveProcess.Run("-o", "accel=soft", "-e", "-l", $"bootrom,{rom}", "-l", "com1,stdio", NewName("strict")))
        {
            Assert.Equal(4, strict.ExitCode);
            Assert.Contains(kind == "port" ? "unhandled I/O read of 1 byte(s) at port 0x2a0 (x86.strictio)" : "unhandled MMIO read of 1 byte(s) at 0xc8000010",
                strict.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("went on", strict.Stdout, StringComparison.Ordinal);
        }
        using var lax = HyveProcess.Run("-o", "accel=soft", "-l", $"bootrom,{rom}", "-l", "com1,stdio", NewName("lax"));
        Assert.Equal(2, lax.ExitCode);
        Assert.Equal("went on\n", lax.Stdout);
    }

    // issue 18 #7: x86.strictmsr (default on) makes an unimplemented MSR raise #GP, here a triple fault (no IDT:
    // status 3); -w clears it, so RDMSR reads 0 and WRMSR is ignored and the guest goes on.
    [Fact]
    public void StrictMsrAndMinusW()
    {
        string rom = GuestRom.ToFile(GuestRom.ProtectedMode32(a =>
        {
            a.mov(ecx, 0x4b564dff); // an MSR nothing implements
            a.rdmsr();
            a.or(eax, edx);
            var fail = a.CreateLabel();
            a.jnz(fail);
            a.wrmsr();
            GuestRom.Print(a, "went on\n");
            a.Label(ref fail);
            a.cli();
            a.hlt();
        }));
        using (var strict = HyveProcess.Run("-o", "accel=soft", "-l", $"bootrom,{rom}", "-l", "com1,stdio", NewName("msr")))
        {
            Assert.Equal(3, strict.ExitCode);
            Assert.Equal("", strict.Stdout);
        }
        using var lax = HyveProcess.Run("-o", "accel=soft", "-w", "-l", $"bootrom,{rom}", "-l", "com1,stdio", NewName("msr"));
        Assert.Equal(2, lax.ExitCode);
        Assert.Equal("went on\n", lax.Stdout);
    }
}
