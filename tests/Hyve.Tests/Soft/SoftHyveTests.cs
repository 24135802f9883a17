// SPDX-License-Identifier: BSD-2-Clause
using Xunit;

namespace Hyve.Tests.Soft;

/// <summary>
/// The real ./hyve on the software CPU only, where the behaviour belongs to that engine. The ROMs every engine runs are
/// in the parameterized suite (Machine/, Boot/: <c>[Theory, KvmData, SoftData]</c>).
/// </summary>
public class SoftHyveTests
{
    private static string Name() => "s" + Guid.NewGuid().ToString("N")[..10];

    // Soft only: under KVM with hardware virtualization RDRAND runs natively, so what happens is the host's business.
    [Fact]
    public void AnUnimplementedInstructionStopsWithStatus4NamingIt()
    {
        // RDRAND is valid in real mode but outside the engine's set: the user learns which instruction is missing.
        string rom = GuestRom.ToFile(GuestRom.RealMode(a => { a.rdrand(Iced.Intel.AssemblerRegisters.ax); a.cli(); a.hlt(); }));
        using var p = HyveProcess.Run("-o", "accel=soft", "-l", $"bootrom,{rom}", Name());
        Assert.Equal(4, p.ExitCode);
        Assert.Contains("Rdrand", p.Stderr, StringComparison.Ordinal);
    }
}
