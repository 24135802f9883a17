// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Acpi;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>Table formats and placement against ACPI 6.x chapter 5.2.</summary>
public class AcpiTablesTests
{
    internal static PlatformDescription Sample(bool lpc = true) => PlatformDescription.ForCpus(4) with
    {
        ApicIds = [0, 2, 4, 6],
        HasLpc = lpc,
        ComPorts = [new(1, 0x3F8, 4), new(2, 0x2F8, 3)],
        IntxRoutes = [new(0, 3, 1, 16, 1), new(0, 4, 1, 17, 2), new(0, 4, 2, 18, 3), new(0, 5, 4, 23, 8), new(1, 0, 1, 19, 4)],
        PciMmio64Window = new AddressWindow(0x10_0000_0000, 0x1F_FFFF_FFFF),
    };

    private static byte Sum(ReadOnlySpan<byte> b) { byte s = 0; foreach (var x in b) s += x; return s; }
    private static uint U32(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt32LittleEndian(b[o..]);
    private static ulong U64(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt64LittleEndian(b[o..]);
    private static ushort U16(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt16LittleEndian(b[o..]);
    private static string Sig(ReadOnlySpan<byte> b, int o, int n = 4) => Encoding.ASCII.GetString(b.Slice(o, n));

    [Fact]
    public void Every_table_has_a_zero_checksum_and_its_header_length()
    {
        var tables = AcpiTables.Build(Sample());
        Assert.Equal(["RSD PTR ", "RSDT", "XSDT", "FACP", "APIC", "HPET", "MCFG", "FACS", "DSDT"], tables.Select(t => t.Signature));
        foreach (var t in tables)
        {
            if (t.Signature == "RSD PTR ")
            {
                Assert.Equal(36, t.Bytes.Length);
                Assert.Equal(0, Sum(t.Bytes.AsSpan(0, 20)));
                Assert.Equal(0, Sum(t.Bytes));
                Assert.Equal(36u, U32(t.Bytes, 20));
                Assert.Equal(2, t.Bytes[15]);
                continue;
            }
            Assert.Equal(t.Signature, Sig(t.Bytes, 0));
            Assert.Equal((uint)t.Bytes.Length, U32(t.Bytes, 4));
            if (t.Signature != "FACS") Assert.Equal(0, Sum(t.Bytes));
        }
    }

    [Fact]
    public void Fadt_describes_the_pm_blocks_sci_reset_register_and_flags()
    {
        var f = AcpiTables.Fadt(Sample()).Bytes;
        Assert.Equal(276, f.Length);
        Assert.Equal(6, f[8]);
        Assert.Equal(9, U16(f, 46));              // SCI_INT
        Assert.Equal(0u, U32(f, 48));             // SMI_CMD: none, ACPI always enabled
        Assert.Equal(0x400u, U32(f, 56));         // PM1a_EVT_BLK
        Assert.Equal(0x404u, U32(f, 64));         // PM1a_CNT_BLK
        Assert.Equal(0x408u, U32(f, 76));         // PM_TMR_BLK
        Assert.Equal(new byte[] { 4, 2, 0, 4 }, f[88..92]);
        Assert.Equal(0x32, f[108]);               // CENTURY
        var arch = U16(f, 109);
        Assert.True((arch & 0x3) == 0x3, "legacy devices and 8042 present");
        uint flags = U32(f, 112);
        Assert.True((flags & (1 << 8)) != 0, "TMR_VAL_EXT");
        Assert.True((flags & (1 << 10)) != 0, "RESET_REG_SUP");
        Assert.True((flags & (1 << 4)) == 0, "fixed-feature power button");
        Assert.True((flags & (1 << 20)) == 0, "not hardware-reduced");
        // RESET_REG: SystemIO, 8 bits, byte access, 0xCF9; RESET_VALUE 6.
        Assert.Equal(new byte[] { 1, 8, 0, 1 }, f[116..120]);
        Assert.Equal(0xCF9ul, U64(f, 120));
        Assert.Equal(6, f[128]);
        // X_PM1a_EVT_BLK, X_PM1a_CNT_BLK, X_PM_TMR_BLK generic addresses.
        Assert.Equal(new byte[] { 1, 32, 0, 2 }, f[148..152]);
        Assert.Equal(0x400ul, U64(f, 152));
        Assert.Equal(new byte[] { 1, 16, 0, 2 }, f[172..176]);
        Assert.Equal(0x404ul, U64(f, 176));
        Assert.Equal(new byte[] { 1, 32, 0, 3 }, f[208..212]);
        Assert.Equal(0x408ul, U64(f, 212));
    }

    [Fact]
    public void Facs_is_64_bytes_version_2()
    {
        var t = AcpiTables.Facs();
        Assert.Equal(64, t.Bytes.Length);
        Assert.Equal(64, t.Alignment);
        Assert.Equal(2, t.Bytes[32]);
        Assert.Empty(t.Checksums);
    }

    [Fact]
    public void Madt_lists_each_vcpu_with_its_apic_id_the_ioapic_overrides_and_nmi()
    {
        var m = AcpiTables.Madt(Sample() with { IoApicId = 8 }).Bytes;
        Assert.Equal(0xFEE00000u, U32(m, 36));
        Assert.Equal(1u, U32(m, 40)); // PCAT_COMPAT
        var entries = new List<byte[]>();
        for (int o = 44; o < m.Length; o += m[o + 1]) entries.Add(m[o..(o + m[o + 1])]);
        var lapics = entries.Where(e => e[0] == 0).ToList();
        Assert.Equal(new byte[] { 0, 2, 4, 6 }, lapics.Select(e => e[3]));
        Assert.Equal(new byte[] { 0, 1, 2, 3 }, lapics.Select(e => e[2]));
        Assert.All(lapics, e => Assert.Equal(1u, U32(e, 4)));
        var io = Assert.Single(entries, e => e[0] == 1);
        Assert.Equal(8, io[2]);
        Assert.Equal(0xFEC00000u, U32(io, 4));
        Assert.Equal(0u, U32(io, 8));
        var isos = entries.Where(e => e[0] == 2).ToList();
        Assert.Equal(2, isos.Count);
        Assert.Equal((byte)0, isos[0][3]);
        Assert.Equal(2u, U32(isos[0], 4));
        Assert.Equal(0x5, U16(isos[0], 8));        // active high, edge
        Assert.Equal((byte)9, isos[1][3]);
        Assert.Equal(9u, U32(isos[1], 4));
        Assert.Equal(0xF, U16(isos[1], 8));        // active low, level (bhyve)
        var nmi = Assert.Single(entries, e => e[0] == 4);
        Assert.Equal(0xFF, nmi[2]);
        Assert.Equal(1, nmi[5]);
    }

    [Fact]
    public void Madt_uses_x2apic_entries_for_ids_above_254()
    {
        var m = AcpiTables.Madt(PlatformDescription.ForCpus(2) with { ApicIds = [0, 300] }).Bytes;
        var types = new List<byte>();
        for (int o = 44; o < m.Length; o += m[o + 1]) types.Add(m[o]);
        Assert.Contains((byte)9, types);
        Assert.Contains((byte)0x0A, types);
        Assert.Equal(0, Sum(m));
    }

    [Fact]
    public void Hpet_and_mcfg_carry_their_inputs()
    {
        var h = AcpiTables.Hpet(Sample() with { HpetBlockId = 0x8086A201, HpetMinimumTick = 0x80 }).Bytes;
        Assert.Equal(56, h.Length);
        Assert.Equal(0x8086A201u, U32(h, 36));
        Assert.Equal(0, h[40]); // system memory
        Assert.Equal(0xFED00000ul, U64(h, 44));
        Assert.Equal(0x80, U16(h, 53));
        var c = AcpiTables.Mcfg(Sample()).Bytes;
        Assert.Equal(60, c.Length);
        Assert.Equal(0xE0000000ul, U64(c, 44));
        Assert.Equal(0, U16(c, 52));
        Assert.Equal(0, c[54]);
        Assert.Equal(255, c[55]);
    }

    [Fact]
    public void Placement_patches_every_pointer_and_keeps_checksums_valid()
    {
        var img = AcpiLayout.Place(AcpiTables.Build(Sample()));
        Assert.Equal(AcpiLayout.DefaultBase, img.BaseAddress);
        Assert.Equal(img.BaseAddress, img.RsdpAddress);
        Assert.True(img.BaseAddress + (ulong)img.Bytes.Length <= 0x100000);
        Span<byte> Table(ulong addr)
        {
            int o = (int)(addr - img.BaseAddress);
            return img.Bytes.AsSpan(o, (int)U32(img.Bytes, o + 4));
        }
        var rsdp = img.Bytes.AsSpan(0, 36);
        Assert.Equal("RSD PTR ", Sig(rsdp, 0, 8));
        Assert.Equal(0ul, img.RsdpAddress % 16);
        Assert.Equal(0, Sum(rsdp[..20]));
        Assert.Equal(0, Sum(rsdp));
        var rsdt = Table(U32(rsdp, 16));
        var xsdt = Table(U64(rsdp, 24));
        Assert.Equal("RSDT", Sig(rsdt, 0));
        Assert.Equal("XSDT", Sig(xsdt, 0));
        var viaXsdt = new List<string>();
        for (int o = 36; o < xsdt.Length; o += 8)
        {
            var t = Table(U64(xsdt, o));
            Assert.Equal(0, Sum(t));
            viaXsdt.Add(Sig(t, 0));
            Assert.Equal(U64(xsdt, o), U32(rsdt, 36 + (o - 36) / 2));
        }
        Assert.Equal(["FACP", "APIC", "HPET", "MCFG"], viaXsdt);
        Assert.Equal(0, Sum(rsdt));
        Assert.Equal(0, Sum(xsdt));
        var fadt = Table(U64(xsdt, 36));
        ulong facs = U32(fadt, 36), dsdt = U32(fadt, 40);
        Assert.Equal(facs, U64(fadt, 132));
        Assert.Equal(dsdt, U64(fadt, 140));
        Assert.Equal(0ul, facs % 64);
        Assert.Equal("FACS", Sig(img.Bytes, (int)(facs - img.BaseAddress)));
        Assert.Equal("DSDT", Sig(Table(dsdt), 0));
        Assert.Equal(0, Sum(Table(dsdt)));
    }

    [Fact]
    public void Placement_refuses_tables_that_do_not_fit()
    {
        Assert.Throws<InvalidOperationException>(() => AcpiLayout.Place(AcpiTables.Build(Sample()), 0xFFC00));
    }

    /// <summary>Runs table-loader commands as SeaBIOS's romfile loader does, over allocations at fixed addresses.</summary>
    private static Dictionary<string, (ulong Addr, byte[] Data)> RunLoader(AcpiFwCfgFiles f)
    {
        var files = new Dictionary<string, byte[]> { [AcpiLayout.TablesFile] = f.Tables, [AcpiLayout.RsdpFile] = f.Rsdp };
        var alloc = new Dictionary<string, (ulong Addr, byte[] Data)>();
        ulong high = 0x7FF0_0000, fseg = 0xF5000;
        string Name(ReadOnlySpan<byte> field)
        {
            int n = field.IndexOf((byte)0);
            Assert.True(n > 0, "file names are NUL-terminated within 56 bytes");
            return Encoding.ASCII.GetString(field[..n]);
        }
        Assert.Equal(0, f.TableLoader.Length % 128);
        for (int c = 0; c < f.TableLoader.Length; c += 128)
        {
            var e = f.TableLoader.AsSpan(c, 128);
            switch (U32(e, 0))
            {
                case 1:
                    {
                        var file = Name(e.Slice(4, 56));
                        uint align = U32(e, 60);
                        byte zone = e[64];
                        ulong addr = zone == 2 ? fseg : high;
                        addr = (addr + align - 1) & ~((ulong)align - 1);
                        Assert.Equal(zone == 2, file == AcpiLayout.RsdpFile);
                        alloc[file] = (addr, (byte[])files[file].Clone());
                        break;
                    }
                case 2:
                    {
                        var dest = alloc[Name(e.Slice(4, 56))];
                        var src = alloc[Name(e.Slice(60, 56))];
                        uint off = U32(e, 116);
                        byte size = e[120];
                        Assert.True(off + size <= dest.Data.Length);
                        if (size == 4) BinaryPrimitives.WriteUInt32LittleEndian(dest.Data.AsSpan((int)off), (uint)(U32(dest.Data, (int)off) + src.Addr));
                        else BinaryPrimitives.WriteUInt64LittleEndian(dest.Data.AsSpan((int)off), U64(dest.Data, (int)off) + src.Addr);
                        break;
                    }
                case 3:
                    {
                        var d = alloc[Name(e.Slice(4, 56))].Data;
                        uint off = U32(e, 60), start = U32(e, 64), len = U32(e, 68);
                        Assert.True(start + len <= d.Length && off >= start && off < start + len);
                        d[off] = (byte)(d[off] - Sum(d.AsSpan((int)start, (int)len)));
                        break;
                    }
                default: Assert.Fail($"unknown loader command {U32(e, 0)}"); break;
            }
        }
        return alloc;
    }

    [Fact]
    public void Fw_cfg_form_has_128_byte_commands_that_link_and_checksum_every_table()
    {
        var f = AcpiLayout.ForFwCfg(AcpiTables.Build(Sample()));
        Assert.Equal(0, f.TableLoader.Length % 128);
        // The first two commands allocate the RSDP in the F segment and the tables high.
        Assert.Equal(1u, U32(f.TableLoader, 0));
        Assert.Equal("etc/acpi/rsdp", Encoding.ASCII.GetString(f.TableLoader, 4, 13));
        Assert.Equal(0, f.TableLoader[4 + 13]);
        Assert.Equal(16u, U32(f.TableLoader, 60));
        Assert.Equal(2, f.TableLoader[64]);
        Assert.Equal(1u, U32(f.TableLoader, 128));
        Assert.Equal("etc/acpi/tables", Encoding.ASCII.GetString(f.TableLoader, 128 + 4, 15));
        Assert.Equal(64u, U32(f.TableLoader, 128 + 60));
        Assert.Equal(1, f.TableLoader[128 + 64]);
        int pointers = 0, checksums = 0;
        for (int c = 0; c < f.TableLoader.Length; c += 128)
        {
            uint cmd = U32(f.TableLoader, c);
            if (cmd == 2) pointers++;
            if (cmd == 3)
            {
                checksums++;
                var name = Encoding.ASCII.GetString(f.TableLoader, c + 4, 56).TrimEnd('\0');
                var file = name == AcpiLayout.RsdpFile ? f.Rsdp : f.Tables;
                Assert.Equal(0, file[U32(f.TableLoader, c + 60)]); // checksum bytes are zero in the blobs
            }
        }
        // RSDP: RSDT + XSDT; RSDT and XSDT: 4 each; FADT: FACS and DSDT twice.
        Assert.Equal(2 + 4 + 4 + 4, pointers);
        // RSDP twice, then RSDT, XSDT, FACP, APIC, HPET, MCFG, DSDT.
        Assert.Equal(2 + 7, checksums);

        var alloc = RunLoader(f);
        var (rsdpAddr, rsdp) = alloc[AcpiLayout.RsdpFile];
        var (tablesAddr, tables) = alloc[AcpiLayout.TablesFile];
        Assert.InRange(rsdpAddr, 0xE0000ul, 0xFFFFFul);
        Assert.Equal(0, Sum(rsdp.AsSpan(0, 20)));
        Assert.Equal(0, Sum(rsdp));
        Span<byte> At(ulong addr) { int o = (int)(addr - tablesAddr); return tables.AsSpan(o, (int)U32(tables, o + 4)); }
        var xsdt = At(U64(rsdp, 24));
        Assert.Equal("XSDT", Sig(xsdt, 0));
        Assert.Equal("RSDT", Sig(At(U32(rsdp, 16)), 0));
        for (int o = 36; o < xsdt.Length; o += 8) Assert.Equal(0, Sum(At(U64(xsdt, o))));
        var fadt = At(U64(xsdt, 36));
        Assert.Equal("FACP", Sig(fadt, 0));
        Assert.Equal("DSDT", Sig(At(U64(fadt, 140)), 0));
        Assert.Equal(0, Sum(At(U32(fadt, 40))));
        Assert.Equal("FACS", Sig(tables, (int)(U32(fadt, 36) - tablesAddr)));
        Assert.Equal(0ul, (U32(fadt, 36) - tablesAddr) % 64);
    }
}
