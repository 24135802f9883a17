// SPDX-License-Identifier: BSD-2-Clause
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Machine;

/// <summary>Instructions this machine's KVM refuses run in hyve's engine (the user-space fallback).</summary>
public class KvmFallbackTests
{
    [SkippableKvmFact]
    public void FninitFwaitFnstcwGiveTheInitialControlWord()
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
        using var p = HyveProcess.Run("-l", $"bootrom,{rom}", "-l", "com1,stdio", "fpu" + Guid.NewGuid().ToString("N")[..8]);
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
        Assert.Equal("037f\n", p.Stdout);
    }
}
