// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Acpi;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>The tables land where an OS scans for them (ACPI 6.x 5.2.5.1; MP spec 4.1).</summary>
public class BiosTablesTests
{
    private static byte Sum(ReadOnlySpan<byte> b) { byte s = 0; foreach (var x in b) s += x; return s; }

    [Fact]
    public void An_os_scan_of_the_bios_area_finds_the_rsdp_and_the_mp_floating_pointer()
    {
        using var mem = new GuestMemory(16ul << 20);
        var at = BiosTables.Install(mem, AcpiTablesTests.Sample());
        ulong rsdp = at.RsdpAddress;
        Assert.Equal(AcpiLayout.DefaultBase, at.AcpiBase);
        Assert.True(at.MpBase + (ulong)at.MpLength <= at.AcpiBase && at.AcpiBase + (ulong)at.AcpiLength <= 0x100000);
        Assert.True(mem.TryGetSpan(0xE0000, 0x20000, MemProt.Read, out var bios));
        ulong? foundRsdp = null, foundMp = null;
        for (int o = 0; o + 36 <= bios.Length; o += 16)
        {
            var s = bios.Slice(o);
            if (foundRsdp is null && s[..8].SequenceEqual("RSD PTR "u8) && Sum(s[..20]) == 0) foundRsdp = 0xE0000ul + (ulong)o;
            if (foundMp is null && s[..4].SequenceEqual("_MP_"u8) && Sum(s[..16]) == 0) foundMp = 0xE0000ul + (ulong)o;
        }
        Assert.Equal(rsdp, foundRsdp);
        Assert.Equal(MpTable.DefaultBase, foundMp);
    }

    // -Y (x86.mptable=false): no MP floating pointer anywhere in the BIOS area; the ACPI tables are still there.
    [Fact]
    public void Without_the_mp_table_an_os_scan_finds_no_mp_floating_pointer()
    {
        using var mem = new GuestMemory(16ul << 20);
        var at = BiosTables.Install(mem, AcpiTablesTests.Sample(), mpTable: false);
        Assert.Equal(0, at.MpLength);
        Assert.True(mem.TryGetSpan(0xE0000, 0x20000, MemProt.Read, out var bios));
        bool mp = false, rsdp = false;
        for (int o = 0; o + 36 <= bios.Length; o += 16)
        {
            mp |= bios.Slice(o)[..4].SequenceEqual("_MP_"u8);
            rsdp |= bios.Slice(o)[..8].SequenceEqual("RSD PTR "u8);
        }
        Assert.False(mp);
        Assert.True(rsdp);
    }

    [Fact]
    public void The_mp_table_of_a_large_machine_stays_below_the_acpi_tables()
    {
        var d = PlatformDescription.ForCpus(255) with
        {
            IntxRoutes = Enumerable.Range(0, 32).SelectMany(s => Enumerable.Range(1, 4).Select(p => new IntxRoute(0, s, p, 16 + (s + p) % 16, 1 + (s + p) % 8))).ToList(),
        };
        Assert.True(MpTable.DefaultBase + (ulong)MpTable.Build(d).Length <= AcpiLayout.DefaultBase);
        using var mem = new GuestMemory(16ul << 20);
        BiosTables.Install(mem, d);
    }
}
