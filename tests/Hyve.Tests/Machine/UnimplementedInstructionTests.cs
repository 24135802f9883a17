// SPDX-License-Identifier: BSD-2-Clause
using Xunit;

namespace Hyve.Tests.Machine;

/// <summary>
/// The real ./hyve meeting an instruction no engine it has can run. The ROMs every engine runs are in the parameterized
/// suite (Machine/, Boot/: <c>[Theory, KvmData, SoftData]</c>).
/// </summary>
public class UnimplementedInstructionTests
{
    private static string Name() => "s" + Guid.NewGuid().ToString("N")[..10];

    // RDRAND is valid in real mode but outside the instruction engine's set, and kvm-pvm's emulator refuses it too: the
    // user learns which instruction is missing. With VT-x or AMD-V the CPU runs it natively, so the KVM row only
    // applies on kvm-pvm.
    [Theory, KvmData(SkipUnlessKvmPvm = "with hardware virtualization RDRAND runs natively in the guest"), SoftData]
    public void AnUnimplementedInstructionStopsWithStatus4NamingIt(string accel)
    {
        string rom = GuestRom.ToFile(GuestRom.RealMode(a => { a.rdrand(Iced.Intel.AssemblerRegisters.ax); a.cli(); a.hlt(); }));
        using var p = HyveProcess.Run(Backends.Args(accel, "-l", $"bootrom,{rom}", Name()));
        Assert.True(p.ExitCode == 4, $"status {p.ExitCode}: {p.Stderr}");
        Assert.Contains("Rdrand", p.Stderr, StringComparison.Ordinal);
    }
}
