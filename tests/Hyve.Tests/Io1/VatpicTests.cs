// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io1;

public class VatpicTests
{
    private readonly Vatpic _pic = new();

    public VatpicTests() => Init();

    // Linux's init_8259A: edge triggered, cascade, master vectors 0x20, slave 0x28, 8086 mode.
    private void Init(byte icw4 = 0x01)
    {
        _pic.PortWrite(0x20, 1, 0x11);
        _pic.PortWrite(0x21, 1, 0x20);
        _pic.PortWrite(0x21, 1, 0x04);
        _pic.PortWrite(0x21, 1, icw4);
        _pic.PortWrite(0xA0, 1, 0x11);
        _pic.PortWrite(0xA1, 1, 0x28);
        _pic.PortWrite(0xA1, 1, 0x02);
        _pic.PortWrite(0xA1, 1, icw4);
    }

    private uint Isr(ushort port)
    {
        _pic.PortWrite(port, 1, 0x0B);
        uint v = _pic.PortRead(port, 1);
        _pic.PortWrite(port, 1, 0x0A);
        return v;
    }

    private uint Irr(ushort port)
    {
        _pic.PortWrite(port, 1, 0x0A);
        return _pic.PortRead(port, 1);
    }

    [Fact]
    public void NothingIsDeliveredBeforeInitialization()
    {
        var pic = new Vatpic();
        pic.Pulse(1);
        Assert.False(pic.IntrAsserted);
    }

    [Fact]
    public void LowerIrqNumberHasPriorityAndInServiceBlocksLower()
    {
        _pic.Pulse(3);
        _pic.Pulse(1);
        Assert.True(_pic.IntrAsserted);
        Assert.Equal(0x21, _pic.InterruptAcknowledge());
        Assert.Equal(0x02u, Isr(0x20));
        Assert.False(_pic.IntrAsserted);           // IRQ 3 waits for the EOI of IRQ 1
        _pic.Pulse(0);
        Assert.True(_pic.IntrAsserted);            // a higher priority nests
        Assert.Equal(0x20, _pic.InterruptAcknowledge());
        _pic.PortWrite(0x20, 1, 0x20);             // non-specific EOI: clears IRQ 0, the highest in service
        Assert.Equal(0x02u, Isr(0x20));
        Assert.False(_pic.IntrAsserted);
        _pic.PortWrite(0x20, 1, 0x20);
        Assert.True(_pic.IntrAsserted);
        Assert.Equal(0x23, _pic.InterruptAcknowledge());
    }

    [Fact]
    public void SpecificEoiClearsTheNamedLevel()
    {
        _pic.Pulse(5);
        _pic.InterruptAcknowledge();
        _pic.Pulse(4);
        _pic.InterruptAcknowledge();
        Assert.Equal(0x30u, Isr(0x20));
        _pic.PortWrite(0x20, 1, 0x65);             // specific EOI level 5
        Assert.Equal(0x10u, Isr(0x20));
    }

    [Fact]
    public void AutoEoiLeavesNothingInService()
    {
        Init(icw4: 0x03);
        _pic.Pulse(3);
        _pic.Pulse(4);
        Assert.Equal(0x23, _pic.InterruptAcknowledge());
        Assert.Equal(0u, Isr(0x20));
        Assert.True(_pic.IntrAsserted);
        Assert.Equal(0x24, _pic.InterruptAcknowledge());
    }

    [Fact]
    public void RotateOnNonSpecificEoiMakesTheServicedLevelLowest()
    {
        _pic.Pulse(1);
        Assert.Equal(0x21, _pic.InterruptAcknowledge());
        _pic.PortWrite(0x20, 1, 0xA0);             // rotate on non-specific EOI
        _pic.Pulse(1);
        _pic.Pulse(3);
        Assert.Equal(0x23, _pic.InterruptAcknowledge()); // 2..7 now outrank 1
    }

    [Fact]
    public void RotateInAutoEoiMode()
    {
        Init(icw4: 0x03);
        _pic.PortWrite(0x20, 1, 0x80);             // set rotate in AEOI
        _pic.Pulse(2 + 4);
        _pic.Pulse(3);
        Assert.Equal(0x23, _pic.InterruptAcknowledge());
        _pic.Pulse(3);
        Assert.Equal(0x26, _pic.InterruptAcknowledge()); // 3 became lowest
    }

    [Fact]
    public void SetPriorityCommand()
    {
        _pic.PortWrite(0x20, 1, 0xC4);             // IRQ 4 lowest, so IRQ 5 highest
        _pic.Pulse(0);
        _pic.Pulse(6);
        Assert.Equal(0x26, _pic.InterruptAcknowledge());
    }

    [Fact]
    public void PollCommandActsAsAcknowledge()
    {
        _pic.PortWrite(0x21, 1, 0xff);             // masked requests are not polled
        _pic.Pulse(6);
        _pic.PortWrite(0x20, 1, 0x0C);
        Assert.Equal(0u, _pic.PortRead(0x20, 1));
        _pic.PortWrite(0x21, 1, 0x00);
        _pic.PortWrite(0x20, 1, 0x0C);
        Assert.Equal(0x86u, _pic.PortRead(0x20, 1));
        Assert.Equal(0x40u, Isr(0x20));
        Assert.Equal(0u, Irr(0x20));
    }

    [Fact]
    public void SpecialMaskModeLetsLowerLevelsInterrupt()
    {
        _pic.Pulse(3);
        _pic.InterruptAcknowledge();
        _pic.Pulse(5);
        Assert.False(_pic.IntrAsserted);
        _pic.PortWrite(0x21, 1, 0x08);             // mask the level in service
        _pic.PortWrite(0x20, 1, 0x68);             // enter special mask mode
        Assert.True(_pic.IntrAsserted);
        Assert.Equal(0x25, _pic.InterruptAcknowledge());
        _pic.PortWrite(0x20, 1, 0x20);             // non-specific EOI skips the masked in-service level 3
        Assert.Equal(0x08u, Isr(0x20));
        _pic.PortWrite(0x20, 1, 0x48);             // leave special mask mode
        _pic.PortWrite(0x20, 1, 0x63);
        Assert.Equal(0u, Isr(0x20));
    }

    [Fact]
    public void MaskedRequestsStayInIrr()
    {
        _pic.PortWrite(0x21, 1, 0x10);
        _pic.Pulse(4);
        Assert.False(_pic.IntrAsserted);
        Assert.Equal(0x10u, Irr(0x20));
        Assert.Equal(0x10u, _pic.PortRead(0x21, 1));
        _pic.PortWrite(0x21, 1, 0);
        Assert.True(_pic.IntrAsserted);
    }

    [Fact]
    public void ElcrBitsOfFixedEdgeIrqsReadZeroAndAreNotWritable()
    {
        _pic.PortWrite(0x4D0, 1, 0xff);
        _pic.PortWrite(0x4D1, 1, 0xff);
        Assert.Equal(0xF8u, _pic.PortRead(0x4D0, 1));
        Assert.Equal(0xDEu, _pic.PortRead(0x4D1, 1));
        foreach (int irq in new[] { 0, 1, 2, 8, 13 }) Assert.False(_pic.SetTriggerMode(irq, true));
        Assert.True(_pic.SetTriggerMode(8, false));
        Assert.True(_pic.SetTriggerMode(11, false));
        Assert.Equal(0xD6u, _pic.PortRead(0x4D1, 1));
    }

    [Fact]
    public void LevelTriggeredLineRequestsAgainAfterEoiWhileHigh()
    {
        Assert.True(_pic.SetTriggerMode(10, true));
        _pic.Assert(10);
        Assert.Equal(0x2A, _pic.InterruptAcknowledge());
        Assert.False(_pic.IntrAsserted);
        _pic.PortWrite(0xA0, 1, 0x20);
        _pic.PortWrite(0x20, 1, 0x20);
        Assert.True(_pic.IntrAsserted);            // still high: requests again
        Assert.Equal(0x2A, _pic.InterruptAcknowledge());
        _pic.Deassert(10);
        _pic.PortWrite(0xA0, 1, 0x20);
        _pic.PortWrite(0x20, 1, 0x20);
        Assert.False(_pic.IntrAsserted);
    }

    [Fact]
    public void SharedEdgeLineNeedsAllSourcesLowBeforeTheNextEdge()
    {
        _pic.Assert(4);
        _pic.Assert(4);
        Assert.Equal(0x24, _pic.InterruptAcknowledge());
        _pic.PortWrite(0x20, 1, 0x20);
        _pic.Deassert(4);
        _pic.Assert(4);                            // line never went low: no new edge
        Assert.False(_pic.IntrAsserted);
        _pic.Deassert(4);
        _pic.Deassert(4);
        _pic.Assert(4);
        Assert.True(_pic.IntrAsserted);
    }

    [Fact]
    public void SlaveInterruptsCascadeThroughIrq2()
    {
        _pic.Pulse(12);
        Assert.True(_pic.IntrAsserted);
        Assert.True(_pic.TryGetPendingVector(out int pending));
        Assert.Equal(0x2C, pending);
        Assert.Equal(0x2C, _pic.InterruptAcknowledge());
        Assert.Equal(0x04u, Isr(0x20));
        Assert.Equal(0x10u, Isr(0xA0));
        _pic.Pulse(3);                             // lower than the cascade in service
        Assert.False(_pic.IntrAsserted);
        _pic.Pulse(1);
        Assert.Equal(0x21, _pic.InterruptAcknowledge());
    }

    [Fact]
    public void SpecialFullyNestedModeLetsHigherSlaveLevelsThrough()
    {
        _pic.Pulse(12);
        _pic.InterruptAcknowledge();
        _pic.Pulse(9);
        Assert.False(_pic.IntrAsserted);           // fully nested: slave blocked by its own cascade in service
        Init(icw4: 0x11);                          // master in SFNM
        _pic.Pulse(12);
        _pic.InterruptAcknowledge();
        _pic.Pulse(9);
        Assert.True(_pic.IntrAsserted);
        Assert.Equal(0x29, _pic.InterruptAcknowledge());
    }

    [Fact]
    public void RequestThatGoesAwayGivesSpuriousIrq7()
    {
        Assert.True(_pic.SetTriggerMode(5, true));
        _pic.Assert(5);
        Assert.True(_pic.IntrAsserted);
        _pic.Deassert(5);
        Assert.False(_pic.IntrAsserted);
        Assert.Equal(0x27, _pic.InterruptAcknowledge());
        Assert.Equal(0u, Isr(0x20));
        // The cascade line follows the slave's output, so a vanished slave request drops the master's INTR too.
        Assert.True(_pic.SetTriggerMode(11, true));
        _pic.Assert(11);
        Assert.True(_pic.IntrAsserted);
        _pic.Deassert(11);
        Assert.False(_pic.IntrAsserted);
        Assert.Equal(0x27, _pic.InterruptAcknowledge());
        Assert.Equal(0u, Isr(0x20));
        Assert.Equal(0u, Isr(0xA0));
    }

    [Fact]
    public void PeekThenAcknowledgeLikeTheKvmGlue()
    {
        _pic.Pulse(14);
        Assert.True(_pic.TryGetPendingVector(out int v));
        Assert.Equal(0x2E, v);
        _pic.Acknowledge(v);
        Assert.Equal(0x04u, Isr(0x20));
        Assert.Equal(0x40u, Isr(0xA0));
        Assert.False(_pic.IntrAsserted);
        _pic.Acknowledge(0x99);                    // not ours: ignored
        Assert.Equal(0x04u, Isr(0x20));
    }

    [Fact]
    public void IntrChangedIsRaisedOnEdgesOfTheOutput()
    {
        int events = 0;
        _pic.IntrChanged += () => events++;
        _pic.Pulse(1);
        Assert.Equal(1, events);
        _pic.InterruptAcknowledge();
        Assert.Equal(2, events);
    }

    [Fact]
    public void SaveRestoreRoundTrip()
    {
        _pic.Pulse(3);
        _pic.InterruptAcknowledge();
        _pic.Pulse(6);
        _pic.PortWrite(0x21, 1, 0x80);
        var saved = StateCopy.Save(_pic);
        var pic2 = new Vatpic();
        StateCopy.Load(pic2, saved);
        Assert.Equal(0x80u, pic2.PortRead(0x21, 1));
        pic2.PortWrite(0x20, 1, 0x20);
        Assert.Equal(0x26, pic2.InterruptAcknowledge());
    }
}
