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
}
