// SPDX-License-Identifier: BSD-2-Clause
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Machine;

/// <summary>
/// x87 instructions in a boot ROM on each CPU engine. This machine's KVM (kvm-pvm) refuses x87 with an
/// emulation-failure exit, so the KVM row runs them in hyve's user-space fallback engine; the soft row runs them in the
/// software CPU.
/// </summary>
public class FpuTests
{
    [Theory, KvmData, SoftData]
    public void FninitFwaitFnstcwGiveTheInitialControlWord(string accel)
    {
        string rom = GuestRom.ToFile(GuestRom.RealMode(a =>
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
        }));
        using var p = HyveProcess.Run(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", "fpu" + Guid.NewGuid().ToString("N")[..8]));
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
        Assert.Equal("037f\n", p.Stdout);
    }
}
