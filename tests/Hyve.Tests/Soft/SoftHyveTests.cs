// SPDX-License-Identifier: BSD-2-Clause
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Soft;

/// <summary>The integration ROMs of the KVM tests, run by the real ./hyve on the software CPU (accel=soft).</summary>
public class SoftHyveTests
{
    private static string Name() => "s" + Guid.NewGuid().ToString("N")[..10];

    private static string Rom(Action<Iced.Intel.Assembler> code) => GuestRom.ToFile(GuestRom.RealMode(code));

    [Fact]
    public void PrintsOnCom1AndHaltsWithStatus2()
    {
        string rom = Rom(a => { GuestRom.Print(a, "hello from the rom\n"); a.cli(); a.hlt(); });
        using var p = HyveProcess.Run("-o", "accel=soft", "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name());
        Assert.Equal("hello from the rom\n", p.Stdout);
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
    }

    [Fact]
    public void EmptyIdtAndAnExceptionIsATripleFaultWithStatus3()
    {
        string rom = GuestRom.ToFile(GuestRom.ProtectedMode32(a =>
        {
            a.mov(__dword_ptr[0x600], 0);
            a.mov(__word_ptr[0x604], 0);
            a.lidt(__[0x600]);
            a.int3();
            a.hlt();
        }));
        using var p = HyveProcess.Run("-o", "accel=soft", "-l", $"bootrom,{rom}", Name());
        Assert.True(p.ExitCode == 3, $"status {p.ExitCode}, stderr: {p.Stderr}");
    }

    [Fact]
    public void ResetControlRestartsTheVmInProcessKeepingMemory()
    {
        string rom = Rom(a =>
        {
            var second = a.CreateLabel();
            GuestRom.Print(a, "banner\n");
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.cmp(__byte_ptr[0x500], 0x5a);
            a.je(second);
            a.mov(__byte_ptr[0x500], 0x5a);
            a.mov(dx, 0xcf9);
            a.mov(al, 0x06);
            a.@out(dx, al);
            a.hlt();
            a.Label(ref second);
            a.cli();
            a.hlt();
        });
        using var p = HyveProcess.Run("-o", "accel=soft", "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name());
        Assert.Equal("banner\nbanner\n", p.Stdout);
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
    }

    [Fact]
    public void FninitFwaitFnstcwGiveTheInitialControlWord()
    {
        string rom = Rom(a =>
        {
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(__word_ptr[0x500], 0);
            a.fninit();
            a.wait();
            a.fnstcw(__word_ptr[0x500]);
            a.mov(ax, __word_ptr[0x500]);
            GuestRom.PrintHexAx(a);
            GuestRom.Print(a, "\n");
            a.cli();
            a.hlt();
        });
        using var p = HyveProcess.Run("-o", "accel=soft", "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name());
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
        Assert.Equal("037f\n", p.Stdout);
    }

    [Fact]
    public void AnUnimplementedInstructionStopsWithStatus4NamingIt()
    {
        // RDRAND is valid in real mode but outside the engine's set: the user learns which instruction is missing.
        string rom = Rom(a => { a.rdrand(ax); a.cli(); a.hlt(); });
        using var p = HyveProcess.Run("-o", "accel=soft", "-l", $"bootrom,{rom}", Name());
        Assert.Equal(4, p.ExitCode);
        Assert.Contains("Rdrand", p.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void HyvectlTopologyRegistersAndForcedPowerOff()
    {
        string name = Name();
        string rom = Rom(a =>
        {
            GuestRom.Print(a, "spinning\n");
            var l = a.CreateLabel();
            a.Label(ref l);
            a.jmp(l);
        });
        using var vm = HyveProcess.Start("-o", "accel=soft", "-c", "cpus=4,sockets=2,cores=2,threads=1", "-l", $"bootrom,{rom}", "-l", "com1,stdio", name);
        vm.WaitForOutput("spinning\n");
        vm.WaitForSocket(name);
        Assert.Equal("cpu_topology:\tsockets=2, cores=2, threads=1, maxcpus=4\n", vm.Ctl($"--vm={name}", "--get-cpu-topology").Out);
        Assert.Equal("active cpus:\t 0\n", vm.Ctl($"--vm={name}", "--get-active-cpus").Out);
        var rip = vm.Ctl($"--vm={name}", "--get-rip");
        Assert.Matches(@"^rip\[0\]\t\t0x[0-9a-f]{16}\n$", rip.Out);
        Assert.InRange(Convert.ToUInt64(rip.Out.Split("0x")[1].Trim(), 16), 0ul, 0xfffful);
        Assert.Contains("0x00000000ffff0000", vm.Ctl($"--vm={name}", "--get-desc-cs").Out, StringComparison.Ordinal);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--set-rax=0x1234").Status);
        Assert.Equal("rax[0]\t\t0x0000000000001234\n", vm.Ctl($"--vm={name}", "--get-rax").Out);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-poweroff").Status);
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
    }

    [Fact]
    public void DebianSeabiosBootsToNoBootableDevice()
    {
        const string seaBios = "/usr/share/seabios/bios.bin";
        Assert.True(File.Exists(seaBios), $"{seaBios} is missing: scripts/test installs Debian's seabios package");
        string name = Name();
        using var vm = HyveProcess.Start("-o", "accel=soft", "-l", $"bootrom,{seaBios}", "-l", "fwcfg,qemu", "-l", "com1,stdio",
            "-s", "0,hostbridge", "-s", "31,lpc", name);
        // Measured here: about 10-20 s on the software CPU (PIT, CMOS, PCI and fw_cfg all exercised).
        vm.WaitForOutput("No bootable device.", 120);
        Assert.Contains("SeaBIOS (version", vm.Stdout, StringComparison.Ordinal);
        vm.WaitForSocket(name);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-poweroff").Status);
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
    }
}
