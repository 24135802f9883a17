// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io1;

public class VioapicTests
{
    private readonly RecordingApic _apic = new();
    private readonly Vioapic _io;

    public VioapicTests() => _io = new Vioapic(_apic);

    private void Write(uint reg, uint value)
    {
        _io.MmioWrite(0x00, 4, reg);
        _io.MmioWrite(0x10, 4, value);
    }

    private uint Read(uint reg)
    {
        _io.MmioWrite(0x00, 4, reg);
        return (uint)_io.MmioRead(0x10, 4);
    }

    private void Program(int pin, int vector, bool level, int dest = 0, bool logical = false, bool masked = false, int delivery = 0)
    {
        Write((uint)(0x11 + 2 * pin), (uint)dest << 24);
        Write((uint)(0x10 + 2 * pin), (uint)vector | (uint)delivery << 8 | (logical ? 1u << 11 : 0) | (level ? 1u << 15 : 0) | (masked ? 1u << 16 : 0));
    }

    [Fact]
    public void IdVersionAndArbitration()
    {
        Assert.Equal(32, _io.PinCount);
        Assert.Equal(0x001F_0011u, Read(1));
        Write(0, 0xFFFF_FFFF);
        Assert.Equal(0x0F00_0000u, Read(0));
        Assert.Equal(0x0F00_0000u, Read(2));
        Write(1, 0);
        Assert.Equal(0x001F_0011u, Read(1));
        Assert.Equal(1u, (uint)_io.MmioRead(0, 4));      // IOREGSEL reads back
    }

    [Fact]
    public void AllPinsAreMaskedAtReset()
    {
        for (int pin = 0; pin < 32; pin++)
        {
            Assert.NotEqual(0u, Read((uint)(0x10 + 2 * pin)) & 1u << 16);
            _io.Pulse(pin);
        }
        Assert.Empty(_apic.Messages);
    }

    [Fact]
    public void OnlyAlignedDwordAccessesAreDecoded()
    {
        _io.MmioWrite(0, 4, 1);
        Assert.Equal(0ul, _io.MmioRead(0x10, 1));
        Assert.Equal(0ul, _io.MmioRead(0x10, 2));
        Assert.Equal(0ul, _io.MmioRead(0x10, 8));
        Assert.Equal(0ul, _io.MmioRead(0x14, 4));
        _io.MmioWrite(0, 1, 0);                            // ignored
        Assert.Equal(1ul, _io.MmioRead(0, 4));
    }

    [Fact]
    public void EdgeDeliveryComposesIntelMsi()
    {
        Program(4, 0x34, level: false, dest: 3);
        _io.Pulse(4);
        var (address, data) = Assert.Single(_apic.Messages);
        Assert.Equal(0xFEE0_3000ul, address);
        Assert.Equal(0x34u | 1u << 14, data);
        var m = MsiMessage.Decode(address, data);
        Assert.Equal(3, m.Destination);
        Assert.Equal(0x34, m.Vector);
        Assert.False(m.LevelTriggered);
        _io.Pulse(4);
        Assert.Equal(2, _apic.Messages.Count);             // edges have no Remote IRR
        Assert.Equal(0u, Read(0x18) & 1u << 14);
    }

    [Fact]
    public void LogicalLowestPriorityEncoding()
    {
        Program(9, 0x41, level: true, dest: 0x0f, logical: true, delivery: 1);
        _io.Assert(9);
        var (address, data) = Assert.Single(_apic.Messages);
        Assert.Equal(0xFEE0_F004ul, address);
        Assert.Equal(0x41u | 1u << 8 | 1u << 14 | 1u << 15, data);
        Assert.True(_io.TryGetRoute(9, out ulong a, out uint d));
        Assert.Equal((address, data), (a, d));
    }

    [Fact]
    public void LevelDeliverySetsRemoteIrrUntilEoiAndRedeliversWhileAsserted()
    {
        Program(16, 0x50, level: true);
        _io.Assert(16);
        Assert.Single(_apic.Messages);
        Assert.NotEqual(0u, Read(0x30) & 1u << 14);        // Remote IRR
        _io.Deassert(16);
        _io.Assert(16);
        Assert.Single(_apic.Messages);                     // no new message while Remote IRR is set
        _io.EndOfInterrupt(0x51);
        Assert.Single(_apic.Messages);                     // other vectors do not matter
        _io.EndOfInterrupt(0x50);
        Assert.Equal(2, _apic.Messages.Count);             // still asserted: delivered again
        Assert.NotEqual(0u, Read(0x30) & 1u << 14);
        _io.Deassert(16);
        _io.EndOfInterrupt(0x50);
        Assert.Equal(2, _apic.Messages.Count);
        Assert.Equal(0u, Read(0x30) & 1u << 14);
    }

    [Fact]
    public void SharedLevelLineStaysAssertedUntilEverySourceDeasserts()
    {
        Program(17, 0x60, level: true);
        _io.Assert(17);
        _io.Assert(17);
        _io.Deassert(17);
        _io.EndOfInterrupt(0x60);
        Assert.Equal(2, _apic.Messages.Count);
        _io.Deassert(17);
        _io.EndOfInterrupt(0x60);
        Assert.Equal(2, _apic.Messages.Count);
        Assert.Equal(0, _io.AssertCount(17));
    }

    [Fact]
    public void ReadOnlyBitsIgnoreWrites()
    {
        Program(5, 0x35, level: true);
        Write(0x1A, 0x35 | 1u << 12 | 1u << 14 | 1u << 15);
        Assert.Equal(0x35u | 1u << 15, Read(0x1A));
        _io.Assert(5);
        Write(0x1A, 0x35 | 1u << 15);                       // rewriting does not clear Remote IRR
        Assert.NotEqual(0u, Read(0x1A) & 1u << 14);
        Write(0x1A, 0x35);                                  // switching to edge does
        Assert.Equal(0u, Read(0x1A) & 1u << 14);
    }

    [Fact]
    public void MaskedLevelPinIsDeliveredWhenUnmasked()
    {
        Program(20, 0x70, level: true, masked: true);
        _io.Assert(20);
        Assert.Empty(_apic.Messages);
        Program(20, 0x70, level: true);
        Assert.Single(_apic.Messages);
    }

    [Fact]
    public void MaskedEdgeIsNotRememberedOnceTheLineIsLow()
    {
        Program(3, 0x33, level: false, masked: true);
        _io.Pulse(3);
        Program(3, 0x33, level: false);
        Assert.Empty(_apic.Messages);
    }

    [Fact]
    public void EntryChangedNamesThePin()
    {
        var seen = new List<int>();
        _io.EntryChanged += seen.Add;
        Program(7, 0x37, level: false);
        Assert.Equal([7, 7], seen);
    }

    [Fact]
    public void SaveRestoreRoundTrip()
    {
        Program(10, 0x3A, level: true, dest: 2);
        _io.Assert(10);
        var saved = StateCopy.Save(_io);
        var apic2 = new RecordingApic();
        var io2 = new Vioapic(apic2);
        StateCopy.Load(io2, saved);
        Assert.Equal(_io.GetEntry(10), io2.GetEntry(10));
        io2.EndOfInterrupt(0x3A);
        Assert.Single(apic2.Messages);
    }
}
