// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Pci;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Pci;

public class PciBarTests
{
    private static uint Size(PciTestRig rig, int slot, int offset)
    {
        uint old = rig.Cf8Read(0, slot, 0, offset, 4);
        rig.Cf8Write(0, slot, 0, offset, 4, 0xffff_ffff);
        uint mask = rig.Cf8Read(0, slot, 0, offset, 4);
        rig.Cf8Write(0, slot, 0, offset, 4, old);
        return mask;
    }

    [Fact]
    public void SizingIoBarReadsSizeMaskWithIoBit()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddIoBar(0, 0x20, new RecordingBar());
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        uint bar = rig.Cf8Read(0, 2, 0, 0x10, 4);
        Assert.Equal(1u, bar & 1);
        Assert.Equal(0xffff_ffe1u, Size(rig, 2, 0x10));
        Assert.Equal(bar, rig.Cf8Read(0, 2, 0, 0x10, 4));
    }

    [Fact]
    public void SizingMemory32BarShowsSizeAndPrefetchBit()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddMemoryBar(1, 0x4000, new RecordingBar(), prefetchable: true);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        Assert.Equal(0xffff_c008u, Size(rig, 2, 0x14));
        // Unused BARs are hardwired to zero.
        Assert.Equal(0u, Size(rig, 2, 0x10));
        Assert.Equal(0u, Size(rig, 2, 0x18));
    }

    [Fact]
    public void SizingMemory64BarUsesBothHalves()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddMemoryBar(2, 8ul << 30, new RecordingBar(), is64: true, prefetchable: true);
        f.AddMemoryBar(4, 0x200000, new RecordingBar(), is64: true);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        Assert.Equal(0x0000_000cu, Size(rig, 2, 0x18));
        Assert.Equal(0xffff_fffeu, Size(rig, 2, 0x1c));
        Assert.Equal(0xffe0_0004u, Size(rig, 2, 0x20));
        Assert.Equal(0xffff_ffffu, Size(rig, 2, 0x24));
    }

    [Fact]
    public void BarsArePlacedInTheirWindowsAlignedAndDecoded()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddIoBar(0, 0x40, new RecordingBar());
        f.AddMemoryBar(1, 0x1000, new RecordingBar());
        f.AddMemoryBar(2, 0x10_0000, new RecordingBar(), is64: true);
        f.AddMemoryBar(4, 1ul << 30, new RecordingBar(), is64: true, prefetchable: true);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        var io = f.Bars[0]!; var m32 = f.Bars[1]!; var small64 = f.Bars[2]!; var big64 = f.Bars[4]!;
        Assert.InRange(io.Address, 0x2000ul, 0xffffu);
        Assert.Equal(0ul, io.Address % 0x40);
        Assert.InRange(m32.Address, 0xc000_0000ul, 0xdfff_ffffu);
        Assert.Equal(0ul, m32.Address % 0x1000);
        // Small 64-bit BARs stay below 4 GiB as in bhyve; large ones go above memory.
        Assert.InRange(small64.Address, 0xc000_0000ul, 0xdfff_ffffu);
        Assert.True(big64.Address >= 32ul << 30);
        Assert.Equal(0ul, big64.Address % (1ul << 30));
        Assert.True(io.Decoding && m32.Decoding && small64.Decoding && big64.Decoding);
        Assert.Equal(0x03u, rig.Cf8Read(0, 2, 0, 0x04, 2) & 0x03);
        Assert.Equal(0xab10ul, rig.Mmio.Read(m32.Address + 0x10, 4));
        Assert.Equal(0xab04u, rig.Ports.Read((ushort)(io.Address + 4), 2));
    }

    [Fact]
    public void MovingAMemoryBarMovesItsHandler()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        var h = new RecordingBar();
        f.AddMemoryBar(0, 0x1000, h);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        ulong old = f.Bars[0]!.Address;
        rig.Cf8Write(0, 2, 0, 0x10, 4, 0xd000_0000);
        Assert.Equal(0xd000_0000u, rig.Cf8Read(0, 2, 0, 0x10, 4));
        Assert.False(rig.Mmio.TryFind(old, out _));
        Assert.True(rig.Mmio.TryFind(0xd000_0008, out var r) && ReferenceEquals(r.Device, h));
        rig.Mmio.Write(0xd000_0008, 4, 0x55);
        Assert.Equal((0x8ul, 4, 0x55ul), h.Writes[^1]);
        Assert.Equal(0xffff_fffful, rig.Mmio.Read(old + 8, 4));
    }

    [Fact]
    public void CommandRegisterDecodeBitsRegisterAndUnregister()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddMemoryBar(0, 0x1000, new RecordingBar());
        f.AddIoBar(1, 0x10, new RecordingBar());
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        ulong m = f.Bars[0]!.Address; ushort io = (ushort)f.Bars[1]!.Address;
        rig.Cf8Write(0, 2, 0, 0x04, 2, 0x0001); // memory off, I/O on
        Assert.False(rig.Mmio.TryFind(m, out _));
        Assert.NotNull(rig.Ports.Find(io));
        rig.Cf8Write(0, 2, 0, 0x04, 2, 0x0002); // I/O off, memory on
        Assert.True(rig.Mmio.TryFind(m, out _));
        Assert.Null(rig.Ports.Find(io));
        // Moving the I/O BAR while its decode is off, then turning it on, registers it at the new place only.
        rig.Cf8Write(0, 2, 0, 0x14, 4, 0x3000);
        Assert.Null(rig.Ports.Find(0x3000));
        rig.Cf8Write(0, 2, 0, 0x04, 2, 0x0003);
        Assert.NotNull(rig.Ports.Find(0x3000));
        Assert.Null(rig.Ports.Find(io));
        Assert.Equal(0xab02u, rig.Ports.Read(0x3002, 1) | 0xab00u);
    }

    [Fact]
    public void DevMemBarMovesItsGuestMapping()
    {
        using var rig = new PciTestRig();
        var seg = rig.Memory.CreateDevMem("fb", 0x10000);
        seg.Span[0x123] = 0x5a;
        var f = new TestFunction();
        f.AddDevMemBar(0, seg);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        ulong a = f.Bars[0]!.Address;
        Assert.True(rig.Memory.TryGetSpan(a + 0x123, 1, MemProt.Read, out var s) && s[0] == 0x5a);
        rig.Cf8Write(0, 2, 0, 0x10, 4, 0xd100_0000);
        Assert.Null(rig.Memory.FindMapping(a));
        Assert.True(rig.Memory.TryGetSpan(0xd100_0123, 1, MemProt.Read, out s) && s[0] == 0x5a);
        rig.Cf8Write(0, 2, 0, 0x04, 2, 0);
        Assert.Null(rig.Memory.FindMapping(0xd100_0000));
    }

    [Fact]
    public void ABarProgrammedOverRamOrAnotherBarSimplyDoesNotDecode()
    {
        using var rig = new PciTestRig();
        var seg = rig.Memory.CreateDevMem("fb", 0x10000);
        var f = new TestFunction();
        f.AddDevMemBar(0, seg);
        f.AddMemoryBar(1, 0x1000, new RecordingBar());
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        rig.Cf8Write(0, 2, 0, 0x10, 4, 0x0010_0000); // over guest RAM
        Assert.False(f.Bars[0]!.Decoding);
        rig.Cf8Write(0, 2, 0, 0x14, 4, (uint)PciBus.DefaultEcamBase); // over ECAM
        Assert.False(f.Bars[1]!.Decoding);
        rig.Cf8Write(0, 2, 0, 0x14, 4, 0xd200_0000);
        Assert.True(f.Bars[1]!.Decoding);
    }

    [Fact]
    public void Moving64BitBarFollowsBothHalves()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        var h = new RecordingBar();
        f.AddMemoryBar(0, 256ul << 20, h, is64: true);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        rig.Cf8Write(0, 2, 0, 0x04, 2, 0);
        rig.Cf8Write(0, 2, 0, 0x10, 4, 0x1000_0000);
        rig.Cf8Write(0, 2, 0, 0x14, 4, 0x10);
        rig.Cf8Write(0, 2, 0, 0x04, 2, 2);
        Assert.Equal(0x10_1000_0000ul, f.Bars[0]!.Address);
        Assert.True(rig.Mmio.TryFind(0x10_1000_0040, out var r) && ReferenceEquals(r.Device, h));
    }

    [Fact]
    public void ExpansionRomDecodesOnlyWithItsEnableBit()
    {
        using var rig = new PciTestRig();
        var rom = rig.Memory.CreateDevMem("rom", 0x8000);
        rom.Span[0] = 0x55; rom.Span[1] = 0xaa;
        var f = new TestFunction();
        f.SetExpansionRom(rom);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        uint reg = rig.Cf8Read(0, 2, 0, 0x30, 4);
        Assert.Equal(0u, reg & 1);
        Assert.False(f.Bars[6]!.Decoding);
        Assert.Equal(0xffff_8000u, Size(rig, 2, 0x30) & 0xffff_f800u);
        rig.Cf8Write(0, 2, 0, 0x04, 2, 2);
        rig.Cf8Write(0, 2, 0, 0x30, 4, reg | 1);
        Assert.True(rig.Memory.TryGetSpan(reg & ~0x7ffu, 2, MemProt.Read, out var s) && s[0] == 0x55 && s[1] == 0xaa);
        rig.Cf8Write(0, 2, 0, 0x30, 4, reg);
        Assert.Null(rig.Memory.FindMapping(reg & ~0x7ffu));
    }

    [Fact]
    public void ResetPutsBarsBackWhereTheBusPlacedThem()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        var h = new RecordingBar();
        f.AddMemoryBar(0, 0x1000, h);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        ulong a = f.Bars[0]!.Address;
        rig.Cf8Write(0, 2, 0, 0x10, 4, 0xd000_0000);
        var inventory = new DeviceInventory();
        rig.Bus.JoinInventory(inventory);
        var saved = inventory.Save();
        rig.Bus.Reset();
        Assert.True(rig.Mmio.TryFind(a, out _));
        Assert.False(rig.Mmio.TryFind(0xd000_0000, out _));
        inventory.Restore(saved);
        Assert.True(rig.Mmio.TryFind(0xd000_0000, out _));
        Assert.False(rig.Mmio.TryFind(a, out _));
    }
}
