// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Acpi;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>The MP table against the Intel MultiProcessor Specification 1.4, chapter 4.</summary>
public class MpTableTests
{
    private static byte Sum(ReadOnlySpan<byte> b) { byte s = 0; foreach (var x in b) s += x; return s; }

    private static readonly int[] EntrySize = [20, 8, 8, 8, 8];

    [Fact]
    public void Floating_pointer_and_configuration_table_checksums_and_counts()
    {
        var d = AcpiTablesTests.Sample();
        var b = MpTable.Build(d, 0xF0000);
        var fp = b.AsSpan(0, 16);
        Assert.Equal("_MP_"u8.ToArray(), fp[..4].ToArray());
        Assert.Equal(0xF0010u, BinaryPrimitives.ReadUInt32LittleEndian(fp[4..]));
        Assert.Equal(1, fp[8]);
        Assert.Equal(4, fp[9]);
        Assert.Equal(0, Sum(fp));
        Assert.Equal(0, fp[11]); // a configuration table is present (no default configuration)

        var cfg = b.AsSpan(16);
        Assert.Equal("PCMP"u8.ToArray(), cfg[..4].ToArray());
        int baseLen = BinaryPrimitives.ReadUInt16LittleEndian(cfg[4..]);
        int count = BinaryPrimitives.ReadUInt16LittleEndian(cfg[34..]);
        int extLen = BinaryPrimitives.ReadUInt16LittleEndian(cfg[40..]);
        Assert.Equal(4, cfg[6]);
        Assert.Equal(0xFEE00000u, BinaryPrimitives.ReadUInt32LittleEndian(cfg[36..]));
        Assert.Equal(0, Sum(cfg[..baseLen]));
        Assert.Equal(baseLen + extLen, cfg.Length);
        Assert.Equal(cfg[42], (byte)-Sum(cfg.Slice(baseLen, extLen)));

        var entries = new List<byte[]>();
        for (int o = 44; o < baseLen; o += EntrySize[cfg[o]]) entries.Add(cfg.Slice(o, EntrySize[cfg[o]]).ToArray());
        Assert.Equal(count, entries.Count);

        var cpus = entries.Where(e => e[0] == 0).ToList();
        Assert.Equal(new byte[] { 0, 2, 4, 6 }, cpus.Select(e => e[1]));
        Assert.Equal(new byte[] { 3, 1, 1, 1 }, cpus.Select(e => e[3])); // enabled, BSP first
        Assert.All(cpus, e => Assert.Equal(d.CpuSignature, BinaryPrimitives.ReadUInt32LittleEndian(e.AsSpan(4))));

        var buses = entries.Where(e => e[0] == 1).Select(e => (e[1], System.Text.Encoding.ASCII.GetString(e, 2, 6))).ToList();
        Assert.Equal([(0, "PCI   "), (1, "ISA   ")], buses);
        var io = Assert.Single(entries, e => e[0] == 2);
        Assert.Equal(0xFEC00000u, BinaryPrimitives.ReadUInt32LittleEndian(io.AsSpan(4)));

        var ints = entries.Where(e => e[0] == 3).ToList();
        var isa = ints.Where(e => e[4] == 1).ToList();
        Assert.Equal(16, isa.Count);
        Assert.Equal(3, isa.Single(e => e[7] == 0)[1]);            // pin 0: ExtINT
        Assert.Equal(0, isa.Single(e => e[7] == 2)[5]);            // IRQ 0 → pin 2
        Assert.DoesNotContain(isa, e => e[1] == 0 && e[5] == 2);   // IRQ 2 (cascade) has no entry
        Assert.Equal(0x0F, isa.Single(e => e[7] == 9)[2]);         // SCI level, active low
        var pci = ints.Where(e => e[4] == 0).ToList();
        Assert.Equal(4, pci.Count); // the route on bus 1 is not described
        foreach (var r in d.IntxRoutes.Where(r => r.Bus == 0))
            Assert.Contains(pci, e => e[5] == ((r.Slot << 2) | (r.Pin - 1)) && e[7] == r.IoApicPin && e[2] == 0x0F);

        var ext = new List<byte[]>();
        for (int o = baseLen; o < baseLen + extLen; o += cfg[o + 1]) ext.Add(cfg.Slice(o, cfg[o + 1]).ToArray());
        var sas = ext.Where(e => e[0] == 128).Select(e => (e[3], BinaryPrimitives.ReadUInt64LittleEndian(e.AsSpan(4)), BinaryPrimitives.ReadUInt64LittleEndian(e.AsSpan(12)))).ToList();
        Assert.Equal([(0, 0ul, 0xCF8ul), (0, 0xD00ul, 0xF300ul), (1, 0xC0000000ul, 0x20000000ul), (1, 0x10_0000_0000ul, 0x10_0000_0000ul)], sas);
        var hier = Assert.Single(ext, e => e[0] == 129);
        Assert.Equal(new byte[] { 129, 8, 1, 1, 0 }, hier[..5]);       // ISA under PCI 0, subtractive decode
        Assert.Single(ext, e => e[0] == 130);

        var lints = entries.Where(e => e[0] == 4).ToList();
        Assert.Equal([(3, 0), (1, 1)], lints.Select(e => ((int)e[1], (int)e[7])));
        Assert.All(lints, e => Assert.Equal(0xFF, e[6]));
    }
}
