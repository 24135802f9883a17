// SPDX-License-Identifier: BSD-2-Clause
using System.Text.RegularExpressions;
using Hyve.Acpi;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>ACPICA's own disassembler reads every table without complaint, and the DSDT says what the platform is.</summary>
public class IaslDisassemblyTests
{
    private static readonly Regex Complaint = new(@"\b(error|warning|incorrect|invalid|unknown opcode|unresolved|could not)\b", RegexOptions.IgnoreCase);

    private static string Dsl(AcpiTable t)
    {
        var r = Iasl.Disassemble(t.Bytes, t.Signature.Trim().Replace(' ', '_'));
        Assert.True(r.ExitCode == 0, $"iasl -d {t.Signature} exited {r.ExitCode}: {r.Output}");
        Assert.False(Complaint.IsMatch(r.Output), $"iasl -d {t.Signature}: {r.Output}");
        Assert.False(string.IsNullOrEmpty(r.Dsl), $"iasl -d {t.Signature} wrote nothing: {r.Output}");
        Assert.False(Complaint.IsMatch(r.Dsl), $"iasl -d {t.Signature} output complains:\n{r.Dsl}");
        return r.Dsl;
    }

    // iasl 20200925 reads no bare RSDP from a binary file ("not a valid ACPI table": its signature is no name
    // segment), so the RSDP's fields are checked in AcpiTablesTests instead.
    private static IEnumerable<AcpiTable> WithoutRsdp(PlatformDescription d) => AcpiTables.Build(d).Where(t => t.Signature != AcpiTables.RsdpSignature);

    [IaslFact]
    public void Every_table_disassembles_cleanly()
    {
        var seen = new List<string>();
        foreach (var t in WithoutRsdp(AcpiTablesTests.Sample()))
        {
            var dsl = Dsl(t);
            Assert.Contains(t.Signature == "DSDT" ? "DefinitionBlock (\"\", \"DSDT\", 2," : $"Signature : \"{t.Signature}\"", dsl);
            seen.Add(t.Signature);
        }
        Assert.Equal(["RSDT", "XSDT", "FACP", "APIC", "HPET", "MCFG", "FACS", "DSDT"], seen);
        foreach (var t in WithoutRsdp(AcpiTablesTests.Sample(lpc: false) with { ComPorts = [], PciMmio64Window = null, HasI8042 = false }))
            Dsl(t);
        foreach (var t in WithoutRsdp(PlatformDescription.ForCpus(1) with { ApicIds = [300], EcamBase = 0, HasHpet = false }))
            Dsl(t);
    }

    [IaslFact]
    public void Placed_tables_disassemble_with_their_pointers()
    {
        var d = AcpiTablesTests.Sample();
        var img = AcpiLayout.Place(AcpiTables.Build(d));
        var fadt = AcpiTables.Build(d).Single(t => t.Signature == "FACP");
        var addr = img.Addresses["FACP"] - img.BaseAddress;
        var placed = new AcpiTable("FACP", img.Bytes.AsSpan((int)addr, fadt.Bytes.Length).ToArray(), 16, [], []);
        var dsl = Dsl(placed);
        Assert.Matches($@"DSDT Address : {img.Addresses["DSDT"]:X16}", dsl);
        Assert.Matches($@"FACS Address : {img.Addresses["FACS"]:X8}", dsl);
    }

    private static string Squash(string s) => Regex.Replace(s, @"\s+", " ");

    [IaslFact]
    public void Dsdt_describes_the_pci_root_its_windows_and_both_prt_variants()
    {
        var dsl = Dsl(AcpiTables.Dsdt(AcpiTablesTests.Sample()));
        var flat = Squash(dsl);
        Assert.Contains("Name (_S5, Package (0x02) // _S5_: S5 System State { 0x05, Zero })", flat);
        Assert.Contains("Method (_PIC, 1, NotSerialized) // _PIC: Interrupt Model { PICM = Arg0 }", flat);
        Assert.Contains("Device (PC00)", dsl);
        Assert.Contains("Name (_HID, EisaId (\"PNP0A08\")", dsl);
        Assert.Contains("Name (_CID, EisaId (\"PNP0A03\")", dsl);
        Assert.Contains("Name (_SEG, Zero)", dsl);
        Assert.Contains("Name (_BBN, Zero)", dsl);
        Assert.Contains("WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, // Granularity 0x0000, // Range Minimum 0x00FF, // Range Maximum", flat);
        Assert.Contains("IO (Decode16, 0x0CF8, // Range Minimum 0x0CF8, // Range Maximum 0x01, // Alignment 0x08, // Length", flat);
        Assert.Contains("0x0000, // Range Minimum 0x0CF7, // Range Maximum", flat);
        Assert.Contains("0x0D00, // Range Minimum 0xFFFF, // Range Maximum", flat);
        Assert.Contains("0xC0000000, // Range Minimum 0xDFFFFFFF, // Range Maximum", flat);
        Assert.Contains("0x0000001000000000, // Range Minimum 0x0000001FFFFFFFFF, // Range Maximum", flat);

        // APIC mode: GSIs; PIC mode: link devices; chosen by PICM.
        Assert.Contains("Package (0x04) { 0x0003FFFF, Zero, Zero, 0x10 }", flat);
        Assert.Contains("Package (0x04) { 0x0004FFFF, Zero, Zero, 0x11 }", flat);
        Assert.Contains("Package (0x04) { 0x0004FFFF, One, Zero, 0x12 }", flat);
        Assert.Contains("Package (0x04) { 0x0005FFFF, 0x03, Zero, 0x17 }", flat);
        Assert.DoesNotContain("Zero, Zero, 0x13 }", flat); // the route on bus 1 belongs to no _PRT here
        Assert.Contains("Package (0x04) { 0x0003FFFF, Zero, \\_SB.PC00.ISA.LNKA, Zero }", flat);
        Assert.Contains("Package (0x04) { 0x0004FFFF, One, \\_SB.PC00.ISA.LNKC, Zero }", flat);
        Assert.Contains("Package (0x04) { 0x0005FFFF, 0x03, \\_SB.PC00.ISA.LNKH, Zero }", flat);
        Assert.Contains("Method (_PRT, 0, NotSerialized) // _PRT: PCI Routing Table { If (PICM) { Return (APRT)", flat);
        Assert.Contains("Return (PPRT)", flat);
    }

    [IaslFact]
    public void Dsdt_link_devices_read_and_write_the_lpc_pirq_registers()
    {
        var dsl = Dsl(AcpiTables.Dsdt(AcpiTablesTests.Sample()));
        var flat = Squash(dsl);
        Assert.Contains("Device (ISA) { Name (_ADR, 0x001F0000)", flat);
        Assert.Contains("OperationRegion (LPCR, PCI_Config, Zero, 0x0100)", flat);
        Assert.Contains("Offset (0x60), PIRA, 8, PIRB, 8, PIRC, 8, PIRD, 8, Offset (0x68), PIRE, 8, PIRF, 8, PIRG, 8, PIRH, 8", flat);
        foreach (var (l, uid) in new[] { ('A', "One"), ('B', "0x02"), ('H', "0x08") })
        {
            Assert.Contains($"Device (LNK{l}) {{ Name (_HID, EisaId (\"PNP0C0F\")", flat);
            Assert.Contains($"Name (_UID, {uid})", flat);
            Assert.Contains($"If (PIRV (PIR{l})) {{ Return (0x0B) }} Else {{ Return (0x09) }}", flat);
            Assert.Contains($"Local0 = (PIR{l} & 0x8F)", flat);
            Assert.Contains($"Method (_DIS, 0, NotSerialized) // _DIS: Disable Device {{ PIR{l} = 0x80 }}", flat);
            Assert.Contains($"FindSetRightBit (SIR{l}, Local0) PIR{l} = Local0--", flat);
        }
        Assert.Contains("IRQ (Level, ActiveLow, Shared, ) {3,4,5,6,7,9,10,11,12,14,15}", flat);
        // Only the eight link devices have methods named _STA, _CRS, _DIS and _SRS, and a _PRS.
        foreach (var m in new[] { "Method (_STA", "Name (_PRS", "Method (_CRS", "Method (_DIS", "Method (_SRS" })
            Assert.Equal(8, Regex.Matches(dsl, Regex.Escape(m)).Count);
    }

    [IaslFact]
    public void Dsdt_legacy_devices_have_their_ports_and_irqs()
    {
        var flat = Squash(Dsl(AcpiTables.Dsdt(AcpiTablesTests.Sample())));
        Assert.Contains("Device (COM1) { Name (_HID, EisaId (\"PNP0501\")", flat);
        Assert.Contains("IO (Decode16, 0x03F8, // Range Minimum 0x03F8, // Range Maximum 0x01, // Alignment 0x08, // Length ) IRQNoFlags () {4}", flat);
        Assert.Contains("IO (Decode16, 0x02F8, // Range Minimum 0x02F8, // Range Maximum 0x01, // Alignment 0x08, // Length ) IRQNoFlags () {3}", flat);
        Assert.Contains("Device (RTC) { Name (_HID, EisaId (\"PNP0B00\")", flat);
        Assert.Contains("0x0070, // Range Minimum 0x0070, // Range Maximum 0x01, // Alignment 0x02, // Length ) IRQNoFlags () {8}", flat);
        Assert.Contains("Device (TIMR) { Name (_HID, EisaId (\"PNP0100\")", flat);
        Assert.Contains("0x0040, // Range Minimum 0x0040, // Range Maximum 0x01, // Alignment 0x04, // Length ) IRQNoFlags () {0}", flat);
        Assert.Contains("Device (PIC) { Name (_HID, EisaId (\"PNP0000\")", flat);
        Assert.Contains("0x00A0, // Range Minimum 0x00A0, // Range Maximum 0x01, // Alignment 0x02, // Length ) IRQNoFlags () {2}", flat);
        Assert.Contains("Device (HPET) { Name (_HID, EisaId (\"PNP0103\")", flat);
        Assert.Contains("Memory32Fixed (ReadWrite, 0xFED00000, // Address Base 0x00000400, // Address Length", flat);
        Assert.Contains("Memory32Fixed (ReadWrite, 0xE0000000, // Address Base 0x10000000, // Address Length", flat);
    }

    [IaslFact]
    public void Without_lpc_the_prt_is_apic_only_and_there_are_no_link_devices()
    {
        var dsl = Dsl(AcpiTables.Dsdt(AcpiTablesTests.Sample(lpc: false)));
        var flat = Squash(dsl);
        Assert.Contains("Name (_PRT, Package (0x04) // _PRT: PCI Routing Table { Package (0x04) { 0x0003FFFF, Zero, Zero, 0x10 }", flat);
        Assert.DoesNotContain("LNKA", dsl);
        Assert.DoesNotContain("PPRT", dsl);
        Assert.DoesNotContain("Device (ISA)", dsl);
        Assert.Contains("Device (COM1)", dsl);
    }

    [IaslFact]
    public void Disassembled_dsdt_recompiles_without_errors()
    {
        var dsl = Dsl(AcpiTables.Dsdt(AcpiTablesTests.Sample()));
        var dir = Directory.CreateTempSubdirectory("hyve-iasl-");
        try
        {
            var file = Path.Combine(dir.FullName, "dsdt.dsl");
            File.WriteAllText(file, dsl);
            var psi = new System.Diagnostics.ProcessStartInfo(Iasl.Path!, ["-p", Path.Combine(dir.FullName, "out"), file])
            { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = System.Diagnostics.Process.Start(psi)!;
            var output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, output);
            Assert.Contains(" 0 Errors", output);
        }
        finally { dir.Delete(true); }
    }
}
