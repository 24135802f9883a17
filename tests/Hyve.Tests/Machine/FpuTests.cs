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

    // LDMXCSR and STMXCSR are not in KVM's emulator, so on this host they run in hyve's engine; with the local APIC in
    // the kernel, their accesses to the APIC page must reach that APIC: the guest sets TPR with an ordinary MOV, reads
    // it with LDMXCSR, writes it with STMXCSR, and reads it back with a MOV.
    [SkippableKvmFact]
    public void EmulatedInstructionsReachTheInKernelLocalApic()
    {
        const uint tpr = 0xfee00080;
        string rom = GuestRom.ToFile(GuestRom.ProtectedMode32(a =>
        {
            a.mov(eax, cr4);
            a.or(eax, 1 << 9); // CR4.OSFXSR: SSE state instructions allowed
            a.mov(cr4, eax);
            a.xor(ecx, ecx);
            a.mov(__dword_ptr[tpr], 0x40);
            a.ldmxcsr(__dword_ptr[tpr]); // engine reads the kernel's TPR: MXCSR = 0x40
            a.stmxcsr(__dword_ptr[0x500]);
            a.mov(eax, __dword_ptr[0x500]);
            GuestRom.PrintHexAx(a);
            GuestRom.Print(a, " ");
            a.mov(__dword_ptr[0x504], 0x1fa0);
            a.ldmxcsr(__dword_ptr[0x504]);
            a.stmxcsr(__dword_ptr[tpr]); // engine writes the kernel's TPR: 0xa0 (its low byte)
            a.mov(eax, __dword_ptr[tpr]);
            GuestRom.PrintHexAx(a);
            GuestRom.Print(a, "\n");
            a.cli();
            a.hlt();
        }));
        using var p = HyveProcess.Run("-l", $"bootrom,{rom}", "-l", "com1,stdio", "lapic" + Guid.NewGuid().ToString("N")[..8]);
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}");
        Assert.Equal("0040 00a0\n", p.Stdout);
    }
}
