// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using Hyve.Acpi;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>SMBIOS 2.8 (DMTF DSP0134) as an OS and dmidecode read it.</summary>
public class SmbiosTablesTests
{
    private static readonly Guid Uuid = Guid.Parse("12345678-9abc-def0-1122-334455667788");

    private static SmbiosDescription Machine(int sockets = 2, ulong low = 3ul << 30, ulong high = 1ul << 30) =>
        new(Uuid, sockets, 2, 1, low, high, "AuthenticAMD");

    private static byte Sum(ReadOnlySpan<byte> b) { byte s = 0; foreach (var x in b) s += x; return s; }

    // (type, handle, formatted bytes, strings) for each structure, in order.
    private static List<(byte Type, ushort Handle, byte[] Formatted, List<string> Strings)> Parse(byte[] table)
    {
        var list = new List<(byte, ushort, byte[], List<string>)>();
        for (int p = 0; p < table.Length;)
        {
            int len = table[p + 1];
            var strings = new List<string>();
            int q = p + len;
            if (table[q] == 0) q += 2;
            else
            {
                while (table[q] != 0)
                {
                    int e = Array.IndexOf(table, (byte)0, q);
                    strings.Add(System.Text.Encoding.ASCII.GetString(table, q, e - q));
                    q = e + 1;
                }
                q++;
            }
            list.Add((table[p], BitConverter.ToUInt16(table, p + 2), table[p..(p + len)], strings));
            p = q;
        }
        return list;
    }

    // An OS's scan of 0xF0000-0xFFFFF: "_SM_" on a 16-byte boundary with a valid checksum; the offset, or -1.
    private static int FindEntryPoint(ReadOnlySpan<byte> bios)
    {
        for (int o = 0; o + 0x1F <= bios.Length; o += 16)
            if (bios[o..(o + 4)].SequenceEqual("_SM_"u8) && Sum(bios.Slice(o, 0x1F)) == 0) return o;
        return -1;
    }

    [Fact]
    public void TheEntryPointsChecksumsAnchorsAndCountsDescribeTheTable()
    {
        var image = SmbiosTables.Build(Machine());
        var ep = image.EntryPoint;
        Assert.True(ep.AsSpan(0, 4).SequenceEqual("_SM_"u8));
        Assert.True(ep.AsSpan(0x10, 5).SequenceEqual("_DMI_"u8));
        Assert.Equal(0, Sum(ep.AsSpan(0, ep[5])));
        Assert.Equal(0, Sum(ep.AsSpan(0x10, 0x0F)));
        Assert.Equal((2, 8), (ep[6], ep[7]));
        var structures = Parse(image.Table);
        Assert.Equal(image.Table.Length, BitConverter.ToUInt16(ep, 0x16));
        Assert.Equal(structures.Count, BitConverter.ToUInt16(ep, 0x1C));
        Assert.Equal(127, structures[^1].Type);
        Assert.Equal(structures.Count, structures.Select(s => s.Handle).Distinct().Count());
        Assert.Equal(new byte[] { 0, 1, 3, 4, 4, 16, 17, 19, 19, 32, 127 }, structures.Select(s => s.Type).ToArray());
    }

    [Fact]
    public void SystemInformationCarriesTheUuidWithItsFirstThreeFieldsLittleEndian()
    {
        var t1 = Parse(SmbiosTables.Build(Machine()).Table).Single(s => s.Type == 1);
        Assert.Equal(new byte[] { 0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88 }, t1.Formatted[8..24]);
        Assert.Equal("Hyve", t1.Strings[t1.Formatted[4] - 1]);
        Assert.Equal("Virtual Machine", t1.Strings[t1.Formatted[0x1A] - 1]);
    }

    [Fact]
    public void BiosInformationSaysTheSystemIsAVirtualMachine()
    {
        var t0 = Parse(SmbiosTables.Build(Machine()).Table).Single(s => s.Type == 0);
        Assert.Equal(0x10, t0.Formatted[0x13] & 0x10);
        Assert.Equal(0x01, t0.Formatted[0x12] & 0x01); // ACPI
    }

    [Fact]
    public void HighMemoryGetsItsOwnMappedRangeAbove4GiB()
    {
        var ranges = Parse(SmbiosTables.Build(Machine(low: 3ul << 30, high: 1ul << 30)).Table).Where(s => s.Type == 19).ToList();
        Assert.Equal(2, ranges.Count);
        Assert.Equal((0u, (3u << 20) - 1), (BitConverter.ToUInt32(ranges[0].Formatted, 4), BitConverter.ToUInt32(ranges[0].Formatted, 8)));
        Assert.Equal((4u << 20, (5u << 20) - 1), (BitConverter.ToUInt32(ranges[1].Formatted, 4), BitConverter.ToUInt32(ranges[1].Formatted, 8)));
    }

    [Fact]
    public void DmidecodeReadsTheTables()
    {
        var image = SmbiosTables.Build(Machine(sockets: 2, low: 512ul << 20, high: 0));
        // dmidecode's --dump-bin layout: the entry point at offset 0 pointing at the table at offset 32.
        var ep = (byte[])image.EntryPoint.Clone();
        SmbiosTables.SetTableAddress(ep, 32);
        string dump = Path.Combine(Path.GetTempPath(), $"hyve-smbios-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(dump, [.. ep, .. new byte[32 - ep.Length], .. image.Table]);
        try
        {
            var psi = new ProcessStartInfo("dmidecode", ["--from-dump", dump]) { RedirectStandardOutput = true, RedirectStandardError = true };
            Process p;
            try { p = Process.Start(psi)!; }
            catch (System.ComponentModel.Win32Exception) { Assert.Fail("dmidecode is missing: scripts/test installs Debian's dmidecode package"); return; }
            string output = p.StandardOutput.ReadToEnd();
            string errors = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, errors);
            Assert.DoesNotContain("Invalid", output + errors, StringComparison.OrdinalIgnoreCase);
            Assert.Contains("SMBIOS 2.8 present.", output, StringComparison.Ordinal);
            Assert.Contains("UUID: 12345678-9abc-def0-1122-334455667788", output, StringComparison.OrdinalIgnoreCase);
            Assert.Contains("System is a virtual machine", output, StringComparison.Ordinal);
            Assert.Contains("Manufacturer: Hyve", output, StringComparison.Ordinal);
            Assert.Contains("Version: 1.0", output, StringComparison.Ordinal);
            Assert.Contains("Release Date: 11/25/2026", output, StringComparison.Ordinal);
            Assert.Contains("Socket Designation: CPU #1", output, StringComparison.Ordinal);
            Assert.Contains("Core Count: 2", output, StringComparison.Ordinal);
            Assert.Contains("Size: 512 MB", output, StringComparison.Ordinal);
            Assert.Contains("Ending Address: 0x0001FFFFFFF", output, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(dump);
        }
    }

    [Fact]
    public void AnOsScanOfTheBiosAreaFindsTheEntryPointAndThroughItTheTable()
    {
        using var mem = new GuestMemory(16ul << 20);
        var image = SmbiosTables.Build(Machine(low: 16ul << 20, high: 0));
        BiosTables.Install(mem, AcpiTablesTests.Sample(), image);
        Assert.True(mem.TryGetSpan(0xF0000, 0x10000, MemProt.Read, out var bios));
        int at = FindEntryPoint(bios);
        Assert.Equal((int)(SmbiosTables.DefaultBase - 0xF0000), at);
        uint table = BitConverter.ToUInt32(bios.Slice(at + 0x18, 4));
        Assert.True(mem.TryGetSpan(table, image.Table.Length, MemProt.Read, out var placed));
        Assert.True(placed.SequenceEqual(image.Table));
    }

    [Fact]
    public void ManySocketsMoveTheStructuresOutOfTheEntryPointsWay()
    {
        var d = PlatformDescription.ForCpus(255);
        var image = SmbiosTables.Build(Machine(sockets: 255, low: 16ul << 20, high: 0));
        using var mem = new GuestMemory(16ul << 20);
        BiosTables.Install(mem, d, image);
        Assert.True(mem.TryGetSpan(0xF0000, 0x10000, MemProt.Read, out var bios));
        int at = FindEntryPoint(bios);
        Assert.True(at >= 0);
        uint table = BitConverter.ToUInt32(bios.Slice(at + 0x18, 4));
        Assert.Equal(BiosTables.SmbiosOverflowBase, table);
        Assert.True(mem.TryGetSpan(table, image.Table.Length, MemProt.Read, out var placed) && placed.SequenceEqual(image.Table));
    }
}
