// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests;

public class PortBusTests
{
    private sealed class Echo : IPortDevice, IMmioDevice
    {
        public uint Last;
        public uint PortRead(ushort port, int size) => 0xdeadbeef;
        public void PortWrite(ushort port, int size, uint value) => Last = value;
        public ulong MmioRead(ulong offset, int size) => offset;
        public void MmioWrite(ulong offset, int size, ulong value) => Last = (uint)offset;
    }

    [Fact]
    public void UnclaimedPortsReadAllOnesOfTheAccessSize()
    {
        var bus = new PortBus();
        Assert.Equal(0xffu, bus.Read(0x80, 1));
        Assert.Equal(0xffffu, bus.Read(0x80, 2));
        Assert.Equal(0xffffffffu, bus.Read(0x80, 4));
    }

    [Fact]
    public void ReadsAreTruncatedToTheAccessSize()
    {
        var bus = new PortBus();
        bus.Register(0x3f8, 8, new Echo());
        Assert.Equal(0xefu, bus.Read(0x3f8, 1));
        Assert.Throws<InvalidOperationException>(() => bus.Register(0x3ff, 2, new Echo()));
    }

    [Fact]
    public void EveryPortFromZeroTo0xFfffCanBeClaimedAndReleased()
    {
        var bus = new PortBus();
        var low = new Echo();
        var high = new Echo();
        bus.Register(0x0000, 1, low);
        bus.Register(0xfffc, 4, high);
        bus.Register(0x00ff, 2, low); // straddles the table's first 256-port page
        Assert.Same(low, bus.Find(0x0000));
        Assert.Same(low, bus.Find(0x0100));
        Assert.Same(high, bus.Find(0xffff));
        Assert.Null(bus.Find(0x0101));
        Assert.Null(bus.Find(0x8000));
        bus.Write(0xffff, 1, 0x1234);
        Assert.Equal(0x34u, high.Last);
        bus.Unregister(0xfffc, 4, high);
        Assert.Null(bus.Find(0xffff));
        Assert.Equal(0xffu, bus.Read(0xffff, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => bus.Register(0xffff, 2, high));
    }

    [Fact]
    public void MmioRangesAreFoundByAddressAndGetRelativeOffsets()
    {
        var bus = new MmioBus();
        var a = new Echo();
        bus.Register(0xfec00000, 0x1000, a, "ioapic");
        bus.Register(0xfed00000, 0x400, new Echo(), "hpet");
        Assert.Equal(0x10ul, bus.Read(0xfec00010, 4));
        Assert.Equal(0xfffffffful, bus.Read(0xfec01000, 4));
        bus.Write(0xfec00ff0, 4, 1);
        Assert.Equal(0xff0u, a.Last);
        Assert.Throws<InvalidOperationException>(() => bus.Register(0xfed003ff, 1, a, "x"));
    }
}
