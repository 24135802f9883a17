// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Text.RegularExpressions;
using Hyve.Acpi;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>A fact that needs ACPICA's acpiexec (Debian acpica-tools).</summary>
public sealed class AcpiExecFactAttribute : FactAttribute
{
    public AcpiExecFactAttribute()
    {
        if (AcpiExecTests.Tool is null) Skip = "acpiexec not found (install Debian's acpica-tools)";
    }
}

/// <summary>
/// The DSDT's methods run in ACPICA's interpreter (acpiexec, which backs PCI_Config regions with memory) and do
/// what an OS expects: _PRT answers per interrupt model, link devices program and report the PIRQ registers.
/// </summary>
public class AcpiExecTests
{
    internal static readonly string? Tool = File.Exists("/usr/bin/acpiexec") ? "/usr/bin/acpiexec" : null;

    private static string Run(PlatformDescription d, params string[] commands)
    {
        var dir = Directory.CreateTempSubdirectory("hyve-acpiexec-");
        try
        {
            var file = Path.Combine(dir.FullName, "dsdt.dat");
            File.WriteAllBytes(file, AcpiTables.Dsdt(d).Bytes);
            var psi = new ProcessStartInfo(Tool!, ["-b", string.Join("; ", commands), file])
            { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, WorkingDirectory = dir.FullName };
            using var p = Process.Start(psi)!;
            p.StandardInput.Close();
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(30_000)) { p.Kill(); throw new TimeoutException("acpiexec hung"); }
            var output = stdout.Result + stderr.Result;
            Assert.DoesNotMatch(new Regex(@"\bAE_[A-Z_]+\b(?<!AE_OK)"), output);
            Assert.DoesNotContain("Error", output);
            return output;
        }
        finally { dir.Delete(true); }
    }

    /// <summary>The integer results of each evaluation, in order.</summary>
    private static List<ulong> Integers(string output) =>
        Regex.Matches(output, @"returned object .*\n\s+\[Integer\] = ([0-9A-F]+)").Select(m => Convert.ToUInt64(m.Groups[1].Value, 16)).ToList();

    private static List<string> Buffers(string output) =>
        Regex.Matches(output, @"\[Buffer\] Length [0-9A-F]+ =\s+0000: ((?:[0-9A-F]{2} )+)").Select(m => m.Groups[1].Value.Trim()).ToList();

    [AcpiExecFact]
    public void Prt_answers_link_devices_until_pic_selects_apic_mode()
    {
        var output = Run(AcpiTablesTests.Sample(), "evaluate \\_SB.PC00._PRT", "evaluate \\_PIC 1", "evaluate \\_SB.PC00._PRT");
        var halves = output.Split("Evaluating \\_PIC");
        Assert.Contains("Name LNKA Device", halves[0]);
        Assert.Contains("Name LNKH Device", halves[0]);
        Assert.DoesNotContain("[Integer] = 0000000000000010", halves[0]);
        Assert.DoesNotContain("LNKA", halves[1]);
        foreach (var gsi in new[] { "10", "11", "12", "17" })
            Assert.Contains($"[Integer] = 00000000000000{gsi}", halves[1]);
    }

    [AcpiExecFact]
    public void Link_device_srs_programs_the_pirq_register_and_crs_sta_dis_follow()
    {
        var output = Run(AcpiTablesTests.Sample(),
            "evaluate \\_SB.PC00.ISA.LNKB._SRS (23 00 04 18 79 00)", // IRQ 10
            "evaluate \\_SB.PC00.ISA.PIRB",
            "evaluate \\_SB.PC00.ISA.LNKB._STA",
            "evaluate \\_SB.PC00.ISA.LNKB._CRS",
            "evaluate \\_SB.PC00.ISA.LNKB._DIS",
            "evaluate \\_SB.PC00.ISA.PIRB",
            "evaluate \\_SB.PC00.ISA.LNKB._STA",
            "evaluate \\_SB.PC00.ISA.LNKB._CRS",
            "evaluate \\_SB.PC00.ISA.LNKB._SRS (23 00 01 18 79 00)", // IRQ 8: not routable
            "evaluate \\_SB.PC00.ISA.LNKB._STA");
        Assert.Equal([10ul, 0x0B, 0x80, 0x09, 0x09], Integers(output));
        Assert.Equal(["23 00 04 18 79 00", "23 00 00 18 79 00"], Buffers(output));
    }

    [AcpiExecFact]
    public void Prs_lists_the_routable_irqs_and_s5_is_5()
    {
        var output = Run(AcpiTablesTests.Sample(), "evaluate \\_SB.PC00.ISA.LNKA._PRS", "evaluate \\_S5");
        Assert.Equal(["23 F8 DE 18 79 00"], Buffers(output));
        Assert.Matches(@"\\_S5 returned object.*\n\s+\[Package\] Contains 2 Elements:\n\s+\[Integer\] = 0000000000000005", output);
    }

    [AcpiExecFact]
    public void Osc_grants_pcie_control_except_shpc_and_rejects_other_uuids()
    {
        const string uuid = "(5B 4D DB 33 F7 1F 1C 40 96 57 74 41 C0 3D D7 66)";
        const string other = "(5B 4D DB 33 F7 1F 1C 40 96 57 74 41 C0 3D D7 67)";
        var output = Run(AcpiTablesTests.Sample(),
            $"evaluate \\_SB.PC00._OSC {uuid} 1 3 (00 00 00 00 1F 00 00 00 1D 00 00 00)",
            $"evaluate \\_SB.PC00._OSC {uuid} 1 3 (00 00 00 00 1F 00 00 00 1F 00 00 00)",
            $"evaluate \\_SB.PC00._OSC {other} 1 3 (00 00 00 00 1F 00 00 00 1D 00 00 00)");
        Assert.Equal([
            "00 00 00 00 1F 00 00 00 1D 00 00 00",  // everything asked for is granted
            "10 00 00 00 1F 00 00 00 1D 00 00 00",  // SHPC masked: "capabilities masked"
            "04 00 00 00 1F 00 00 00 1D 00 00 00",  // "unrecognized UUID"
        ], Buffers(output));
    }
}
