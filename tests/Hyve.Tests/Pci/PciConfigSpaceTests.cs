// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Pci;
using Xunit;

namespace Hyve.Tests.Pci;

public class PciConfigSpaceTests
{
    private static PciTestRig RigWithHostBridge(out HostBridge hb)
    {
        var rig = new PciTestRig();
        hb = new HostBridge(HostBridge.BhyveId, HostBridge.BhyveId);
        rig.Bus.Add(hb, 0, 0, 0);
        rig.Bus.Build();
        return rig;
    }

    [Fact]
    public void Mechanism1ReadsIdsAndClassOfTheHostBridge()
    {
        using var rig = RigWithHostBridge(out _);
        Assert.Equal(0x1275_1275u, rig.Cf8Read(0, 0, 0, 0x00, 4));
        Assert.Equal(0x0600_0000u, rig.Cf8Read(0, 0, 0, 0x08, 4) & 0xffff_ff00u);
    }

    [Fact]
    public void ByteAndWordAccessesAtEveryDataPortOffset()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new TestFunction(0x1234), 0, 2, 0);
        rig.Bus.Build();
        // Vendor 0x1af4, device 0x1234 -> bytes f4 1a 34 12 at 0xCFC..0xCFF.
        Assert.Equal(0xf4u, rig.Cf8Read(0, 2, 0, 0, 1));
        Assert.Equal(0x1au, rig.Cf8Read(0, 2, 0, 1, 1));
        Assert.Equal(0x34u, rig.Cf8Read(0, 2, 0, 2, 1));
        Assert.Equal(0x12u, rig.Cf8Read(0, 2, 0, 3, 1));
        Assert.Equal(0x1234u, rig.Cf8Read(0, 2, 0, 2, 2));
        // A word at 0xCFF would straddle the dword: unaligned, reads all ones.
        Assert.Equal(0xffffu, rig.Cf8Read(0, 2, 0, 3, 2));
        // Byte write to the cache line size register through 0xCFC, latency timer through 0xCFD.
        rig.Cf8Write(0, 2, 0, 0x0c, 1, 0x10);
        rig.Cf8Write(0, 2, 0, 0x0d, 1, 0x40);
        Assert.Equal(0x4010u, rig.Cf8Read(0, 2, 0, 0x0c, 2));
    }

    [Fact]
    public void DataPortReadsAllOnesWithoutTheEnableBit()
    {
        using var rig = RigWithHostBridge(out _);
        rig.Ports.Write(0xcf8, 4, 0x0000_0000u);
        Assert.Equal(0xffff_ffffu, rig.Ports.Read(0xcfc, 4));
        rig.Ports.Write(0xcf8, 4, 0x8000_0000u);
        Assert.Equal(0x8000_0000u, rig.Ports.Read(0xcf8, 4));
        Assert.Equal(0x1275_1275u, rig.Ports.Read(0xcfc, 4));
    }

    [Fact]
    public void AbsentFunctionsReadAllOnesAndIgnoreWrites()
    {
        using var rig = RigWithHostBridge(out _);
        Assert.Equal(0xffff_ffffu, rig.Cf8Read(0, 5, 0, 0, 4));
        Assert.Equal(0xffffu, rig.Cf8Read(0, 0, 1, 0, 2));
        Assert.Equal(0xffu, rig.Cf8Read(3, 0, 0, 0, 1));
        Assert.Equal(0xffff_ffffUL, rig.EcamRead(0, 5, 0, 0, 4));
        rig.Cf8Write(0, 5, 0, 0x04, 2, 0x7);
        Assert.Equal(0xffff_ffffu, rig.Cf8Read(0, 5, 0, 0, 4));
    }

    [Fact]
    public void HeaderTypeShowsMultifunctionOnlyWhenASlotHasSeveralFunctions()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new TestFunction(), 0, 3, 0);
        rig.Bus.Add(new TestFunction(), 0, 3, 2);
        rig.Bus.Add(new TestFunction(), 0, 4, 0);
        rig.Bus.Build();
        Assert.Equal(0x80u, rig.Cf8Read(0, 3, 0, 0x0e, 1));
        Assert.Equal(0x80u, rig.Cf8Read(0, 3, 2, 0x0e, 1));
        Assert.Equal(0x00u, rig.Cf8Read(0, 4, 0, 0x0e, 1));
    }

    [Fact]
    public void IdentityAndHeaderRegistersAreReadOnly()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new TestFunction(0x1001), 0, 2, 0);
        rig.Bus.Build();
        uint id = rig.Cf8Read(0, 2, 0, 0, 4), cls = rig.Cf8Read(0, 2, 0, 8, 4), hdr = rig.Cf8Read(0, 2, 0, 0x0e, 1);
        rig.Cf8Write(0, 2, 0, 0x00, 4, 0xdead_beef);
        rig.Cf8Write(0, 2, 0, 0x08, 4, 0x1234_5678);
        rig.Cf8Write(0, 2, 0, 0x0e, 1, 0x7f);
        rig.Cf8Write(0, 2, 0, 0x3d, 1, 0x03);
        Assert.Equal(id, rig.Cf8Read(0, 2, 0, 0, 4));
        Assert.Equal(cls, rig.Cf8Read(0, 2, 0, 8, 4));
        Assert.Equal(hdr, rig.Cf8Read(0, 2, 0, 0x0e, 1));
        Assert.Equal(0u, rig.Cf8Read(0, 2, 0, 0x3d, 1));
        // The interrupt line is the guest's scratch register.
        rig.Cf8Write(0, 2, 0, 0x3c, 1, 0x0b);
        Assert.Equal(0x0bu, rig.Cf8Read(0, 2, 0, 0x3c, 1));
    }

    [Fact]
    public void CommandRegisterKeepsOnlyDefinedBits()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new TestFunction(), 0, 2, 0);
        rig.Bus.Build();
        rig.Cf8Write(0, 2, 0, 0x04, 2, 0xffff);
        // I/O, memory, bus master, parity error response, SERR#, INTx disable.
        Assert.Equal(0x0547u, rig.Cf8Read(0, 2, 0, 0x04, 2));
    }

    [Fact]
    public void EcamAndMechanism1SeeTheSameSpace()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddMsi(4, is64: true, perVectorMask: true);
        rig.Bus.Add(f, 0, 7, 1);
        rig.Bus.Build();
        for (int off = 0; off < 256; off += 4)
            Assert.Equal(rig.Cf8Read(0, 7, 1, off, 4), (uint)rig.EcamRead(0, 7, 1, off, 4));
        // A write through ECAM is seen through mechanism #1 and vice versa.
        rig.EcamWrite(0, 7, 1, 0x3c, 1, 0x0a);
        Assert.Equal(0x0au, rig.Cf8Read(0, 7, 1, 0x3c, 1));
        rig.Cf8Write(0, 7, 1, 0x0c, 2, 0x2008);
        Assert.Equal(0x2008ul, rig.EcamRead(0, 7, 1, 0x0c, 2));
        // Extended space exists through ECAM only and reads zero without extended capabilities.
        Assert.Equal(0ul, rig.EcamRead(0, 7, 1, 0x100, 4));
        Assert.Equal(0ul, rig.EcamRead(0, 7, 1, 0xffc, 4));
    }

    [Fact]
    public void CapabilityChainWalksFrom34hToTheEnd()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddMsi(1, is64: false);
        f.AddMsiX(8, barIndex: 2);
        f.AddPcieCapability(0);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        Assert.NotEqual(0u, rig.Cf8Read(0, 2, 0, 0x06, 2) & 0x10);
        var ids = new List<uint>();
        uint ptr = rig.Cf8Read(0, 2, 0, 0x34, 1);
        while (ptr != 0 && ids.Count < 48)
        {
            Assert.True(ptr >= 0x40 && (ptr & 3) == 0);
            ids.Add(rig.Cf8Read(0, 2, 0, (int)ptr, 1));
            ptr = rig.Cf8Read(0, 2, 0, (int)ptr + 1, 1);
        }
        Assert.Equal(new uint[] { 0x05, 0x11, 0x10 }, ids);
    }

    [Fact]
    public void NoCapabilitiesMeansNoStatusBit()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new TestFunction(), 0, 2, 0);
        rig.Bus.Build();
        Assert.Equal(0u, rig.Cf8Read(0, 2, 0, 0x06, 2) & 0x10);
    }

    [Fact]
    public void ExtendedCapabilitiesLinkAbove256()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.AddExtendedCapability(0x0001, 1, 0x40);
        f.AddExtendedCapability(0x000b, 1, 0x18);
        rig.Bus.Add(f, 0, 2, 0);
        rig.Bus.Build();
        ulong h0 = rig.EcamRead(0, 2, 0, 0x100, 4);
        Assert.Equal(0x0001ul, h0 & 0xffff);
        ulong next = h0 >> 20;
        Assert.Equal(0x140ul, next);
        ulong h1 = rig.EcamRead(0, 2, 0, (int)next, 4);
        Assert.Equal(0x000bul, h1 & 0xffff);
        Assert.Equal(0ul, h1 >> 20);
    }

    [Fact]
    public void GuestMistakesNeverThrow()
    {
        using var rig = RigWithHostBridge(out _);
        var rnd = new Random(7);
        for (int i = 0; i < 20000; i++)
        {
            int size = 1 << rnd.Next(0, 4);
            ulong off = (ulong)rnd.NextInt64(0, (long)PciBus.EcamSize + 64);
            if (rnd.Next(2) == 0) rig.Mmio.Write(PciBus.DefaultEcamBase + off % (1u << 20), size, (ulong)rnd.NextInt64());
            else rig.Mmio.Read(PciBus.DefaultEcamBase + off % PciBus.EcamSize, size);
            rig.Ports.Write(0xcf8, 4, (uint)rnd.Next() | 0x8000_0000u);
            rig.Ports.Write((ushort)(0xcfc + rnd.Next(4)), 1 << rnd.Next(0, 3), (uint)rnd.Next());
            rig.Ports.Read((ushort)(0xcfc + rnd.Next(4)), 1 << rnd.Next(0, 3));
        }
        Assert.Equal(0x1275_1275u, rig.Cf8Read(0, 0, 0, 0, 4));
    }
}
