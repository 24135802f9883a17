// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io1;

public class VpmtmrTests
{
    [Fact]
    public void CountsAt3579545HzAndWrapsAt32Bits()
    {
        var clock = new ManualClock();
        var pm = new Vpmtmr(clock);
        var bus = new PortBus();
        pm.RegisterPorts(bus);
        Assert.Equal(0u, bus.Read(0x408, 4));
        clock.Advance(1_000_000_000);
        Assert.Equal(3_579_545u, bus.Read(0x408, 4));
        clock.Advance(1_000_000);
        Assert.Equal(3_579_545u + 3_579u, bus.Read(0x408, 4));
        Assert.Equal((3_579_545u + 3_579u) & 0xff, bus.Read(0x408, 1));
        Assert.Equal((3_579_545u + 3_579u) >> 8 & 0xff, bus.Read(0x409, 1));
        clock.Advance(1_199_000_000_000);
        Assert.Equal(unchecked((uint)(1200L * 3_579_545 + 3_579)), bus.Read(0x408, 4));
    }

    [Fact]
    public void ConfigurablePortAndSaveRestore()
    {
        var clock = new ManualClock();
        var pm = new Vpmtmr(clock, 0xB008);
        clock.Advance(2_000_000_000);
        Assert.Equal(7_159_090u, pm.PortRead(0xB008, 4));
        var saved = StateCopy.Save(pm);
        var clock2 = new ManualClock();
        clock2.Advance(5_000);
        var pm2 = new Vpmtmr(clock2, 0xB008);
        StateCopy.Load(pm2, saved);
        Assert.Equal(7_159_090u, pm2.Counter);
        clock2.Advance(1_000_000_000);
        Assert.Equal(7_159_090u + 3_579_545u, pm2.Counter);
    }
}

public class InterruptRouterTests
{
    private readonly RecordingApic _apic = new();
    private readonly Vatpic _pic = new();
    private readonly Vioapic _io;
    private readonly InterruptRouter _router;

    public InterruptRouterTests()
    {
        _io = new Vioapic(_apic);
        _router = new InterruptRouter(_pic, _io, _apic);
        _pic.PortWrite(0x20, 1, 0x11); _pic.PortWrite(0x21, 1, 0x20); _pic.PortWrite(0x21, 1, 4); _pic.PortWrite(0x21, 1, 1);
        _pic.PortWrite(0xA0, 1, 0x11); _pic.PortWrite(0xA1, 1, 0x28); _pic.PortWrite(0xA1, 1, 2); _pic.PortWrite(0xA1, 1, 1);
    }

    private void Program(int pin, int vector)
    {
        _io.MmioWrite(0, 4, (ulong)(0x10 + 2 * pin));
        _io.MmioWrite(0x10, 4, (ulong)vector);
    }

    [Fact]
    public void Irq0GoesToPicIrq0AndIoapicPin2()
    {
        Program(2, 0x30);
        Program(0, 0x40);
        _router.IsaPulse(0);
        Assert.Equal(0x20, _pic.InterruptAcknowledge());
        Assert.Contains(_apic.Messages, m => (m.Data & 0xff) == 0x30);
        Assert.Equal(2, InterruptRouter.IoapicPinOfIsaIrq(0));
        Assert.Equal(-1, InterruptRouter.IoapicPinOfIsaIrq(2));
        Assert.Equal(9, InterruptRouter.IoapicPinOfIsaIrq(9));
    }

    [Fact]
    public void PitChannel0ReachesBothControllers()
    {
        var clock = new ManualClock();
        var pit = new Vatpit(clock, _router);
        Program(2, 0x30);
        pit.PortWrite(0x43, 1, 0x34);
        pit.PortWrite(0x40, 1, 0xA9);
        pit.PortWrite(0x40, 1, 0x04);                      // 1193: 1 kHz
        clock.Advance(10_000_000);
        Assert.InRange(_apic.Messages.Count(m => (m.Data & 0xff) == 0x30), 9, 10);
        Assert.Equal(0x20, _pic.InterruptAcknowledge());
    }

    [Fact]
    public void APciLinkOnThe8259LeavesTheIoapicPinOfTheSameNumberAlone()
    {
        // A PIRQ steered to IRQ 11 (bhyve's vm_isa_assert_irq with no IOAPIC pin): the device's IOAPIC input is
        // its own pin 16 and up, and IOAPIC pin 11 may belong to another device.
        Assert.True(_router.SetIsaTriggerMode(11, true));
        _router.PicAssert(11);
        Assert.Equal(0x2B, _pic.InterruptAcknowledge());
        Assert.Equal(0, _io.AssertCount(11));
        _router.PicDeassert(11);
        _router.PicAssert(16); // out of range: ignored
    }

    [Fact]
    public void IsaLevelAndIoapicOnlyLines()
    {
        Assert.True(_router.SetIsaTriggerMode(11, true));
        Assert.False(_router.SetIsaTriggerMode(13, true));
        _router.IsaAssert(11);
        Assert.Equal(0x2B, _pic.InterruptAcknowledge());
        Assert.Equal(1, _io.AssertCount(11));
        _router.IsaDeassert(11);
        Assert.Equal(0, _io.AssertCount(11));
        _router.IoapicAssert(20);
        Assert.Equal(1, _io.AssertCount(20));
        _router.IoapicDeassert(20);
        _router.IsaAssert(99);                                 // ignored
        _router.IoapicPulse(-1);
        Assert.Equal(32, _router.IoapicPinCount);
    }

    [Fact]
    public void MsiPassesThrough()
    {
        _router.Msi(0xFEE0_1000, 0x4041);
        Assert.Equal((0xFEE0_1000ul, 0x4041u), Assert.Single(_apic.Messages));
    }

    [Fact]
    public void PicIntrDrivesIoapicPin0AsExtInt()
    {
        _io.MmioWrite(0, 4, 0x10);
        _io.MmioWrite(0x10, 4, 7u << 8);                  // pin 0: ExtINT, unmasked
        _router.IsaPulse(1);
        var m = MsiMessage.Decode(_apic.Messages[0].Address, _apic.Messages[0].Data);
        Assert.Equal(DeliveryMode.ExtInt, m.DeliveryMode);
        Assert.Equal(0x21, _pic.InterruptAcknowledge());
    }
}

public class ExceptionNestingTests
{
    public static TheoryData<int, int, NestingKind> Table => new()
    {
        { 6, 13, NestingKind.Serial },        // benign then contributory
        { 1, 14, NestingKind.Serial },        // benign then page fault
        { 13, 6, NestingKind.Serial },        // contributory then benign
        { 0, 13, NestingKind.DoubleFault },   // contributory then contributory
        { 10, 11, NestingKind.DoubleFault },
        { 12, 0, NestingKind.DoubleFault },
        { 13, 14, NestingKind.Serial },       // contributory then page fault
        { 14, 13, NestingKind.DoubleFault },  // page fault then contributory
        { 14, 14, NestingKind.DoubleFault },  // page fault then page fault
        { 14, 3, NestingKind.Serial },        // page fault then benign
        { 8, 13, NestingKind.TripleFault },
        { 8, 14, NestingKind.TripleFault },
        { 8, 0, NestingKind.TripleFault },
        { 8, 6, NestingKind.TripleFault },    // any fault while delivering #DF (as KVM and bhyve)
        { 8, 2, NestingKind.Serial },         // an NMI is not a fault
        { 8, 40, NestingKind.Serial },
        { 2, 13, NestingKind.Serial },        // NMI is benign
        { 32, 14, NestingKind.Serial },       // so is an external interrupt
    };

    [Theory]
    [MemberData(nameof(Table))]
    public void Table6_5(int first, int second, NestingKind kind)
    {
        var r = ExceptionNesting.Combine(first, second);
        Assert.Equal(kind, r.Kind);
        Assert.Equal(kind switch { NestingKind.Serial => second, NestingKind.DoubleFault => 8, _ => -1 }, r.Vector);
    }

    [Fact]
    public void ErrorCodes()
    {
        foreach (int v in new[] { 8, 10, 11, 12, 13, 14, 17 }) Assert.True(ExceptionNesting.HasErrorCode(v));
        foreach (int v in new[] { 0, 1, 2, 3, 4, 5, 6, 7, 9, 16, 18, 19 }) Assert.False(ExceptionNesting.HasErrorCode(v));
    }

    [Fact]
    public void PendingEventsDeliverExceptionThenNmiThenInterrupt()
    {
        var q = new PendingEvents();
        q.RaiseInterrupt(0x30);
        q.RaiseNmi();
        q.RaiseException(13, 0x18);
        Assert.True(q.TryTake(true, false, out var e));
        Assert.Equal(new PendingEvent(PendingEventKind.Exception, 13, true, 0x18), e);
        Assert.False(q.TryTake(false, true, out _));         // NMI blocked, IF clear
        Assert.True(q.TryTake(false, false, out e));
        Assert.Equal(PendingEventKind.Nmi, e.Kind);
        Assert.True(q.TryTake(true, false, out e));
        Assert.Equal(new PendingEvent(PendingEventKind.Interrupt, 0x30, false, 0), e);
        Assert.False(q.Any);
    }

    [Fact]
    public void PendingEventsSaveRestore()
    {
        var q = new PendingEvents();
        q.RaiseException(14, 6);
        q.RaiseNmi();
        var ms = new MemoryStream();
        q.Save(new BinaryWriter(ms));
        var q2 = new PendingEvents();
        ms.Position = 0;
        q2.Restore(new BinaryReader(ms));
        Assert.True(q2.TryTake(false, false, out var e));
        Assert.Equal(new PendingEvent(PendingEventKind.Exception, 14, true, 6), e);
        Assert.True(q2.TryTake(false, false, out e));
        Assert.Equal(PendingEventKind.Nmi, e.Kind);
    }

    [Fact]
    public void PendingEventsCombineNestedExceptions()
    {
        var q = new PendingEvents();
        q.RaiseException(14, 2);
        q.RaiseException(13, 0);
        Assert.True(q.TryTake(true, false, out var e));
        Assert.Equal(new PendingEvent(PendingEventKind.Exception, 8, true, 0), e);
        q.RaiseException(8);
        q.RaiseException(14, 0);
        Assert.True(q.TripleFault);
        Assert.False(q.TryTake(true, false, out _));
        q.Clear();
        Assert.False(q.TripleFault);
        q.RaiseException(6);
        q.RaiseException(13, 4);
        Assert.True(q.TryTake(true, false, out e));
        Assert.Equal(13, e.Vector);
    }
}
