// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Machine;

/// <summary>
/// The real ./hyve meeting an instruction the modelled CPU does not have. Hardware raises #UD for it and kernels probe
/// that way (SDM Vol. 2 "RDRAND": #UD when CPUID.01H:ECX.RDRAND[bit 30] = 0), so the VM must not stop: the guest's
/// own #UD handler runs. The ROMs every engine runs are in the parameterized suite (Machine/, Boot/).
/// </summary>
public class UnimplementedInstructionTests
{
    private static string Name() => "s" + Guid.NewGuid().ToString("N")[..10];

    private const ushort UdHandler = 0x8000;

    // RDRAND is outside the model's CPUID and the instruction engine; with VT-x or AMD-V the CPU runs it natively (the
    // host's RDRAND), so the KVM row applies on kvm-pvm only, where the engine is KVM's fallback.
    [Theory, KvmData(SkipUnlessKvmPvm = "with hardware virtualization RDRAND runs natively in the guest"), SoftData]
    public void AnInstructionTheModelLacksRaisesUdInTheGuest(string accel)
    {
        byte[] rom = GuestRom.RealModeWithBlocks(a =>
        {
            a.cli();
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(sp, 0x7000);
            a.mov(__word_ptr[6 * 4], UdHandler);
            a.mov(__word_ptr[6 * 4 + 2], GuestRom.ShadowSegment);
            a.rdrand(ax);
            GuestRom.Print(a, "ran\n");
            a.cli();
            a.hlt();
        }, (UdHandler, h =>
        {
            GuestRom.Print(h, "#UD\n");
            h.cli();
            h.hlt();
        }));
        using var p = HyveProcess.Run(Backends.Args(accel, "-l", $"bootrom,{GuestRom.ToFile(rom)}", "-l", "com1,stdio", Name()));
        Assert.True(p.ExitCode == 2, $"status {p.ExitCode}: {p.Stderr}"); // halted with interrupts off, not status 4
        Assert.Equal("#UD\n", p.Stdout.Replace("\r", ""));
        Assert.DoesNotContain("not implemented", p.Stderr, StringComparison.Ordinal);
    }
}
