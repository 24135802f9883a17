// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.Boot;

public class BootCpuStateTests
{
    private static ulong Q(GuestMemory m, ulong gpa)
    {
        Assert.True(m.TryGetSpan(gpa, 8, MemProt.Read, out var s));
        return BitConverter.ToUInt64(s);
    }

    [Fact]
    public void Flat32WritesFlatDescriptorsAndLoadsMatchingHiddenParts()
    {
        using var mem = new GuestMemory(16 << 20);
        var s = BootCpuState.Flat32(mem, 0x100000, 0x500, 0x9000);
        // SDM vol. 3 3.4.5: the classic flat 4 GiB descriptors.
        Assert.Equal(0ul, Q(mem, 0x500));
        Assert.Equal(0x00cf9b000000fffful, Q(mem, 0x510));
        Assert.Equal(0x00cf93000000fffful, Q(mem, 0x518));
        Assert.Equal(0x00008b0005400067ul, Q(mem, 0x520)); // busy TSS at 0x540, limit 0x67
        Assert.Equal(new BootSegment(0x10, new SegmentDescriptor(0, 0xffffffff, 0xc09b)), s.Cs);
        Assert.Equal(new BootSegment(0x18, new SegmentDescriptor(0, 0xffffffff, 0xc093)), s.Ss);
        Assert.Equal(new BootSegment(0x20, new SegmentDescriptor(0x540, 0x67, 0x8b)), s.Tr);
        Assert.Equal(new SegmentDescriptor(0x500, 0x2f, 0), s.Gdtr);
        Assert.Equal(0x11ul, s.Cr0);
        Assert.Equal(0ul, s.Efer);
        Assert.Equal(0x2ul, s.Rflags);
        Assert.Equal(0x8ffcul, s[Reg.Rsp]);
        Assert.Equal(0x100000ul, s.Rip);
    }

    [Fact]
    public void Long64IdentityMapsFourGiBWithLargePages()
    {
        using var mem = new GuestMemory(16 << 20);
        var s = BootCpuState.Long64(mem, 0x200000, 0x1000, 0x500);
        Assert.Equal(0x00af9b000000fffful, Q(mem, 0x510)); // L=1, D=0
        Assert.Equal(0x2003ul, Q(mem, 0x1000));             // PML4[0] -> PDPT
        Assert.Equal(0x3003ul, Q(mem, 0x2000));             // PDPT[0] -> PD for GiB 0
        Assert.Equal(0x6003ul, Q(mem, 0x2018));             // PDPT[3] -> PD for GiB 3
        Assert.Equal(0ul, Q(mem, 0x2020));
        Assert.Equal(0x83ul, Q(mem, 0x3000));               // 2 MiB page at 0
        Assert.Equal(0x200083ul, Q(mem, 0x3008));
        Assert.Equal(0xffe00083ul, Q(mem, 0x6ff8));          // last 2 MiB below 4 GiB
        Assert.Equal(0x80000011ul, s.Cr0);
        Assert.Equal(0x1000ul, s.Cr3);
        Assert.Equal(0x20ul, s.Cr4);
        Assert.Equal(0x500ul, s.Efer);
        Assert.True(s.Cs.Descriptor.Long);
        Assert.False(s.Cs.Descriptor.Default32);
    }

    [Fact]
    public void RefusesTablesOutsideRam()
    {
        using var mem = new GuestMemory(16 << 20);
        Assert.Throws<ArgumentException>(() => BootCpuState.Flat32(mem, 0, 32 << 20, 0));
        Assert.Throws<ArgumentException>(() => BootCpuState.Long64(mem, 0, 0xfff000, 0x500));
    }
}
