// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Machine;

/// <summary>bhyve(8)'s exit statuses from the real ./hyve with boot ROMs assembled here, on each CPU engine.</summary>
public class HyveExitStatusTests
{
    private static string Rom(Action<Assembler> code) => GuestRom.ToFile(GuestRom.RealMode(code));

    private static string Name() => "t" + Guid.NewGuid().ToString("N")[..10];

    [Theory, KvmData, SoftData]
    public void PrintsOnCom1AndHaltsWithStatus2(string accel)
    {
        string rom = Rom(a => { GuestRom.Print(a, "hello from the rom\n"); a.cli(); a.hlt(); });
        using var p = HyveProcess.Run(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name()));
        Assert.Equal("hello from the rom\n", p.Stdout);
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
    }

    // The ROM's GDT descriptors have their Accessed bit clear, so the far JMP into protected mode writes the bit into
    // the read-only ROM. KVM's emulator retries such an instruction forever without an exit; hyve's probe finds the
    // vCPU on the same RIP and runs the instruction in its engine, which drops the write as a ROM would.
    [Theory, KvmData, SoftData]
    public void EmptyIdtAndAnExceptionIsATripleFaultWithStatus3(string accel)
    {
        // In protected mode with a zero-limit IDT the #BP cannot be delivered (#GP), nor can that (#DF):
        // the CPU shuts down.
        string rom = GuestRom.ToFile(GuestRom.ProtectedMode32(a =>
        {
            a.mov(__dword_ptr[0x600], 0);
            a.mov(__word_ptr[0x604], 0);
            a.lidt(__[0x600]);
            a.int3();
            a.hlt();
        }));
        using var p = HyveProcess.Run(Backends.Args(accel, "-l", $"bootrom,{rom}", Name()));
        Assert.True(p.ExitCode == 3, $"status {p.ExitCode}, stderr: {p.Stderr}");
    }

    [Theory, KvmData(SkipOnKvmPvm = KvmPvm.RealModeIvtLimit), SoftData]
    public void RealModeInterruptBeyondTheIvtLimitIsATripleFaultWithStatus3(string accel)
    {
        // Real mode checks the vector against the IDTR limit too (SDM Vol. 2 INT n: #GP when (vector << 2) + 3 is
        // beyond it): with a limit of 0 neither the #BP nor the #GP nor the #DF can be delivered, and the CPU shuts down.
        string rom = Rom(a =>
        {
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(__dword_ptr[0x602], 0);
            a.mov(__word_ptr[0x600], 0);
            a.lidt(__[0x600]);
            a.int3();
            a.cli();
            a.hlt();
        });
        using var p = HyveProcess.Run(Backends.Args(accel, "-l", $"bootrom,{rom}", Name()));
        Assert.True(p.ExitCode == 3, $"status {p.ExitCode}, stderr: {p.Stderr}");
    }

    // Prints the banner; on the first boot (a RAM flag, which survives a reset, is clear) sets the flag and
    // resets through <paramref name="reset"/>; on the second boot halts.
    private static string ResettingRom(Action<Assembler> reset) => Rom(a =>
    {
        var second = a.CreateLabel();
        GuestRom.Print(a, "banner\n");
        a.xor(ax, ax);
        a.mov(ds, ax);
        a.cmp(__byte_ptr[0x500], 0x5a);
        a.je(second);
        a.mov(__byte_ptr[0x500], 0x5a);
        reset(a);
        a.hlt();
        a.Label(ref second);
        a.cli();
        a.hlt();
    });

    private static void ResetControl(Assembler a)
    {
        a.mov(dx, 0xcf9);
        a.mov(al, 0x06);
        a.@out(dx, al);
    }

    [Theory, KvmData, SoftData]
    public void ResetControlRestartsTheVmInProcessKeepingMemory(string accel)
    {
        using var p = HyveProcess.Run(Backends.Args(accel, "-l", $"bootrom,{ResettingRom(ResetControl)}", "-l", "com1,stdio", Name()));
        Assert.Equal("banner\nbanner\n", p.Stdout);
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
    }

    [Theory, KvmData, SoftData]
    public void ResetWithExitOnRebootEndsWithStatus0(string accel)
    {
        using var p = HyveProcess.Run(Backends.Args(accel, "-o", "exit_on_reboot=true", "-l", $"bootrom,{ResettingRom(ResetControl)}", "-l", "com1,stdio", Name()));
        Assert.Equal("banner\n", p.Stdout);
        Assert.Equal(0, p.ExitCode);
    }

    [Theory, KvmData, SoftData]
    public void KeyboardControllerResetCommandRestartsTheVm(string accel)
    {
        string rom = ResettingRom(a =>
        {
            a.mov(al, 0xfe);
            a.@out(0x64, al);
        });
        using var p = HyveProcess.Run(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name()));
        Assert.Equal("banner\nbanner\n", p.Stdout);
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
    }

    [Theory, KvmData, SoftData]
    public void SigtermPowersOffWithStatus1(string accel)
    {
        string rom = Rom(a => { GuestRom.Print(a, "up\n"); var l = a.CreateLabel(); a.Label(ref l); a.jmp(l); });
        using var p = HyveProcess.Start(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name()));
        p.WaitForOutput("up\n");
        p.Signal(15);
        p.WaitForExit();
        Assert.Equal(1, p.ExitCode);
    }
}
