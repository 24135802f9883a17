// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.X86;

/// <summary>Linear-to-physical translation per SDM Vol. 3 chapter 4, with page tables built in a byte buffer.</summary>
public class PageWalkerTests
{
    private const ulong P = 1, RW = 2, US = 4, PS = 0x80, A = 0x20, D = 0x40, XD = 1ul << 63;

    private readonly TestMemory _mem = new(4 << 20);
    private ulong _nextTable = 0x10000;

    private ulong NewTable() { ulong t = _nextTable; _nextTable += 0x1000; return t; }

    /// <summary>Maps <paramref name="la"/> in 4/5-level paging; leafLevel 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB.</summary>
    private void Map64(ulong cr3, int levels, ulong la, ulong pa, ulong flags, int leafLevel = 1, ulong upperFlags = P | RW | US)
    {
        ulong table = cr3;
        for (int level = levels; level > leafLevel; level--)
        {
            int shift = 12 + 9 * (level - 1);
            ulong ea = table + (((la >> shift) & 0x1ff) << 3);
            ulong e = _mem.Read64(ea);
            if ((e & P) == 0) { e = NewTable() | upperFlags; _mem.Write64(ea, e); }
            table = e & 0x000ffffffffff000;
        }
        int ls = 12 + 9 * (leafLevel - 1);
        _mem.Write64(table + (((la >> ls) & 0x1ff) << 3), pa | flags | (leafLevel > 1 ? PS : 0));
    }

    private (CpuState cpu, ulong cr3) LongMode(int levels = 4)
    {
        var cpu = new CpuState();
        ulong cr3 = NewTable();
        cpu.SetFlatLongMode(cr3);
        if (levels == 5) cpu.Cr4 |= CpuState.Cr4La57;
        return (cpu, cr3);
    }

    private PageWalker Walker(int maxPhys = 48) => new(_mem, maxPhys);

    private static void AssertPf(AccessResult r, uint errorCode, ulong cr2)
    {
        Assert.Equal(AccessStatus.GuestFault, r.Status);
        Assert.Equal(Vector.PF, r.Exception.Vector);
        Assert.True(r.Exception.HasErrorCode);
        Assert.Equal(errorCode, r.Exception.ErrorCode);
        Assert.Equal(cr2, r.Exception.Cr2);
    }

    private ulong PteAddr4(ulong cr3, ulong la)
    {
        ulong t = cr3;
        for (int level = 4; level > 1; level--)
            t = _mem.Read64(t + (((la >> (12 + 9 * (level - 1))) & 0x1ff) << 3)) & 0x000ffffffffff000;
        return t + (((la >> 12) & 0x1ff) << 3);
    }

    [Fact]
    public void FourLevel_4K_translates_and_faulting_variant_sets_accessed_and_dirty()
    {
        var (cpu, cr3) = LongMode();
        ulong la = 0x0000_7f12_3456_7000;
        Map64(cr3, 4, la, 0x200000, P | RW | US);
        ulong pte = PteAddr4(cr3, la);
        var w = Walker();

        Assert.True(w.Probe(cpu, la + 0x123, PageAccess.Write, out ulong gpa).IsOk);
        Assert.Equal(0x200123ul, gpa);
        Assert.Equal(0ul, _mem.Read64(pte) & (A | D));
        Assert.Equal(0ul, _mem.Read64(cr3 + ((la >> 39) & 0x1ff) * 8) & A);

        Assert.True(w.Translate(cpu, la + 0x10, PageAccess.Read, out gpa).IsOk);
        Assert.Equal(0x200010ul, gpa);
        Assert.Equal(A, _mem.Read64(pte) & (A | D));
        Assert.Equal(A, _mem.Read64(cr3 + ((la >> 39) & 0x1ff) * 8) & A);

        Assert.True(w.Translate(cpu, la, PageAccess.Write, out _).IsOk);
        Assert.Equal(A | D, _mem.Read64(pte) & (A | D));
        // Dirty is set only in the leaf.
        Assert.Equal(0ul, _mem.Read64(cr3 + ((la >> 39) & 0x1ff) * 8) & D);
    }

    [Fact]
    public void FourLevel_large_pages_2M_and_1G()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x4000_0000, 0x0060_0000, P | RW, leafLevel: 2);
        Map64(cr3, 4, 0x80_0000_0000, 0x1_4000_0000, P | RW, leafLevel: 3);
        var w = Walker();
        Assert.True(w.Translate(cpu, 0x4012_3456, PageAccess.Read, out ulong gpa).IsOk);
        Assert.Equal(0x0072_3456ul, gpa);
        Assert.True(w.Translate(cpu, 0x80_1234_5678, PageAccess.Read, out gpa).IsOk);
        Assert.Equal(0x1_5234_5678ul, gpa);
    }

    [Fact]
    public void FiveLevel_translates_57_bit_addresses()
    {
        var (cpu, cr3) = LongMode(5);
        ulong la = 0x00ab_cdef_1234_5000;
        Map64(cr3, 5, la, 0x300000, P | RW);
        Assert.True(Walker().Translate(cpu, la + 0xfff, PageAccess.Write, out ulong gpa).IsOk);
        Assert.Equal(0x300fffu, gpa);
    }

    [Fact]
    public void Not_present_gives_error_code_without_P_and_CR2_is_the_address()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x1000, 0x5000, RW | US); // leaf not present
        var w = Walker();
        AssertPf(w.Translate(cpu, 0x1234, PageAccess.Read, out _), 0, 0x1234);
        AssertPf(w.Translate(cpu, 0x1234, PageAccess.Write, out _), 2, 0x1234);
        cpu.Segs[(int)Seg.Ss].Descriptor = cpu.Segs[(int)Seg.Ss].Descriptor with { Access = 0xa0f3 }; // CPL 3
        AssertPf(w.Translate(cpu, 0x1234, PageAccess.Write, out _), 6, 0x1234);
        // An upper-level entry missing also faults with P=0.
        AssertPf(w.Translate(cpu, 0x10_0000_0000, PageAccess.Read, out _), 4, 0x10_0000_0000);
    }

    [Fact]
    public void Write_protect_applies_to_supervisor_only_with_CR0_WP()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x1000, 0x5000, P | US);
        var w = Walker();
        AssertPf(w.Translate(cpu, 0x1000, PageAccess.Write, out _), 3, 0x1000);
        cpu.Cr0 &= ~CpuState.Cr0Wp;
        Assert.True(w.Translate(cpu, 0x1000, PageAccess.Write, out _).IsOk);
        cpu.Segs[(int)Seg.Ss].Descriptor = cpu.Segs[(int)Seg.Ss].Descriptor with { Access = 0xa0f3 };
        AssertPf(w.Translate(cpu, 0x1000, PageAccess.Write, out _), 7, 0x1000);
    }

    [Fact]
    public void User_access_to_supervisor_page_faults_with_P_and_US()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x1000, 0x5000, P | RW, upperFlags: P | RW | US);
        cpu.Segs[(int)Seg.Ss].Descriptor = cpu.Segs[(int)Seg.Ss].Descriptor with { Access = 0xa0f3 };
        AssertPf(Walker().Translate(cpu, 0x1008, PageAccess.Read, out _), 5, 0x1008);
        // Implicit supervisor accesses from CPL 3 are allowed to supervisor pages.
        Assert.True(Walker().Translate(cpu, 0x1008, PageAccess.Read | PageAccess.Implicit, out _).IsOk);
    }

    [Fact]
    public void NX_fetch_faults_with_ID_only_when_EFER_NXE()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x1000, 0x5000, P | RW | XD);
        var w = Walker();
        AssertPf(w.Translate(cpu, 0x1000, PageAccess.Execute, out _), 0x11, 0x1000);
        Assert.True(w.Translate(cpu, 0x1000, PageAccess.Read, out _).IsOk);
        cpu.Efer &= ~CpuState.EferNxe; // XD becomes a reserved bit
        AssertPf(w.Translate(cpu, 0x1000, PageAccess.Read, out _), 0x9, 0x1000);
    }

    [Fact]
    public void SMEP_blocks_supervisor_fetch_from_user_page()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x1000, 0x5000, P | RW | US);
        var w = Walker();
        Assert.True(w.Translate(cpu, 0x1000, PageAccess.Execute, out _).IsOk);
        cpu.Cr4 |= CpuState.Cr4Smep;
        AssertPf(w.Translate(cpu, 0x1000, PageAccess.Execute, out _), 0x11, 0x1000);
    }

    [Fact]
    public void SMAP_blocks_supervisor_data_access_unless_AC_and_always_for_implicit()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x1000, 0x5000, P | RW | US);
        cpu.Cr4 |= CpuState.Cr4Smap;
        var w = Walker();
        AssertPf(w.Translate(cpu, 0x1000, PageAccess.Read, out _), 1, 0x1000);
        AssertPf(w.Translate(cpu, 0x1000, PageAccess.Write, out _), 3, 0x1000);
        cpu.Rflags |= CpuState.FlagAc;
        Assert.True(w.Translate(cpu, 0x1000, PageAccess.Write, out _).IsOk);
        AssertPf(w.Translate(cpu, 0x1000, PageAccess.Read | PageAccess.Implicit, out _), 1, 0x1000);
    }

    [Fact]
    public void Reserved_bits_above_MAXPHYADDR_and_in_large_pages_fault_with_RSVD()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x1000, 0x5000 | (1ul << 40), P | RW);
        Assert.True(Walker(48).Translate(cpu, 0x1000, PageAccess.Read, out _).IsOk);
        AssertPf(Walker(36).Translate(cpu, 0x1000, PageAccess.Write, out _), 0xb, 0x1000);
        // 2 MiB page with bit 13 set (reserved 20:13).
        Map64(cr3, 4, 0x4000_0000, 0x0060_0000 | 0x2000, P | RW, leafLevel: 2);
        AssertPf(Walker().Translate(cpu, 0x4000_0000, PageAccess.Read, out _), 0x9, 0x4000_0000);
        // PS in a PML4E is reserved.
        _mem.Write64(cr3 + 8 * 3, 0x9000 | P | RW | PS);
        AssertPf(Walker().Translate(cpu, 3ul << 39, PageAccess.Execute, out _), 0x19, 3ul << 39);
    }

    [Fact]
    public void No_fault_probe_reports_the_same_fault_and_changes_nothing()
    {
        var (cpu, cr3) = LongMode();
        Map64(cr3, 4, 0x1000, 0x5000, P | US);
        var before = (byte[])_mem.Ram.Clone();
        var r = Walker().Probe(cpu, 0x1000, PageAccess.Write, out _);
        AssertPf(r, 3, 0x1000);
        Assert.True(Walker().Probe(cpu, 0x1000, PageAccess.Read, out _).IsOk);
        Assert.Equal(before, _mem.Ram);
    }

    [Fact]
    public void Pae_paging_with_PDPTEs_2M_and_4K_pages_and_NX()
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode(cr0Pg: true, cr3: 0x20, cr4: CpuState.Cr4Pae);
        cpu.Efer = CpuState.EferNxe;
        // PDPT at 0x20 (32-byte aligned), PD at 0x3000, PT at 0x4000.
        _mem.Write64(0x20 + 8 * 1, 0x3000 | P);
        _mem.Write64(0x3000 + 8 * 0, 0x4000 | P | RW | US);
        _mem.Write64(0x4000 + 8 * 5, 0x7000 | P | RW | US | XD);
        _mem.Write64(0x3000 + 8 * 1, 0x0060_0000 | P | RW | PS);
        var w = Walker();
        Assert.True(w.Translate(cpu, 0x4000_5abc, PageAccess.Write, out ulong gpa).IsOk);
        Assert.Equal(0x7abcul, gpa);
        Assert.Equal(A | D, _mem.Read64(0x4000 + 8 * 5) & (A | D));
        Assert.Equal(0ul, _mem.Read64(0x20 + 8) & A); // PDPTEs have no accessed flag
        Assert.True(w.Translate(cpu, 0x4021_2345, PageAccess.Read, out gpa).IsOk);
        Assert.Equal(0x0061_2345ul, gpa);
        AssertPf(w.Translate(cpu, 0x4000_5000, PageAccess.Execute, out _), 0x11, 0x4000_5000);
        AssertPf(w.Translate(cpu, 0x8000_0000, PageAccess.Read, out _), 0, 0x8000_0000); // PDPTE 2 not present
        _mem.Write64(0x20 + 8 * 3, 0x5000 | P | RW); // R/W is reserved in a PAE PDPTE
        AssertPf(w.Translate(cpu, 0xc000_0000, PageAccess.Read, out _), 9, 0xc000_0000);
    }

    [Fact]
    public void Bits32_paging_4K_4M_and_PSE36()
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode(cr0Pg: true, cr3: 0x1000, cr4: CpuState.Cr4Pse);
        _mem.Write32(0x1000 + 4 * 1, 0x2000 | 7);               // PDE 1 -> PT at 0x2000
        _mem.Write32(0x2000 + 4 * 3, 0x9000 | 7);               // 0x00403000 -> 0x9000
        _mem.Write32(0x1000 + 4 * 2, 0x00c00000 | 0x83);        // 4 MiB page at 12 MiB
        _mem.Write32(0x1000 + 4 * 3, 0x00400000 | (0x5u << 13) | 0x83); // PSE-36: PA bits 39:32 = 5
        var w = Walker();
        Assert.True(w.Translate(cpu, 0x00403456, PageAccess.Write, out ulong gpa).IsOk);
        Assert.Equal(0x9456ul, gpa);
        Assert.Equal((uint)(A | D), _mem.Read32(0x2000 + 12) & (uint)(A | D));
        Assert.Equal((uint)A, _mem.Read32(0x1004) & (uint)(A | D));
        Assert.True(w.Translate(cpu, 0x00912345, PageAccess.Read, out gpa).IsOk);
        Assert.Equal(0x00d12345ul, gpa);
        Assert.True(w.Translate(cpu, 0x00c00010, PageAccess.Read, out gpa).IsOk);
        Assert.Equal(0x5_0040_0010ul, gpa);
        // Bit 21 of a 4 MiB PDE is reserved.
        _mem.Write32(0x1000 + 4 * 4, 0x01000000 | (1u << 21) | 0x83);
        AssertPf(w.Translate(cpu, 0x01000000, PageAccess.Read, out _), 9, 0x01000000);
        // Without CR4.PSE the PS bit is ignored and the entry points to a page table.
        cpu.Cr4 = 0;
        var r = w.Probe(cpu, 0x00800000, PageAccess.Read, out _);
        Assert.Equal(AccessStatus.Unbacked, r.Status);
        Assert.Equal(0x00c00000ul, r.Address);
        // No NX in 32-bit paging, so an instruction-fetch fault carries no I/D bit.
        AssertPf(w.Translate(cpu, 0x05000000, PageAccess.Execute, out _), 0, 0x05000000);
    }

    [Fact]
    public void Paging_off_is_identity_and_page_table_outside_RAM_is_unbacked()
    {
        var cpu = new CpuState();
        Assert.True(Walker().Translate(cpu, 0x12345, PageAccess.Write, out ulong gpa).IsOk);
        Assert.Equal(0x12345ul, gpa);
        cpu.SetFlatLongMode(0x4000_0000);
        var r = Walker().Translate(cpu, 0, PageAccess.Read, out _);
        Assert.Equal(AccessStatus.Unbacked, r.Status);
        Assert.Equal(0x4000_0000ul, r.Address);
    }
}
