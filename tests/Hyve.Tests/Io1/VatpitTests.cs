// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io1;

public class VatpitTests
{
    private readonly ManualClock _clock = new();
    private readonly RecordingIrq _irq = new();
    private readonly Vatpit _pit;

    public VatpitTests() => _pit = new Vatpit(_clock, _irq);

    private void Program(int channel, int mode, int count, bool bcd = false)
    {
        _pit.PortWrite(0x43, 1, (uint)(channel << 6 | 0x30 | mode << 1 | (bcd ? 1 : 0)));
        _pit.PortWrite((ushort)(0x40 + channel), 1, (uint)count & 0xff);
        _pit.PortWrite((ushort)(0x40 + channel), 1, (uint)count >> 8 & 0xff);
    }

    private int ReadCount(int channel)
    {
        uint lo = _pit.PortRead((ushort)(0x40 + channel), 1);
        uint hi = _pit.PortRead((ushort)(0x40 + channel), 1);
        return (int)(lo | hi << 8);
    }

    private bool Out2() => (_pit.PortRead(0x61, 1) & 0x20) != 0;

    [Fact]
    public void TickConversionRoundTrips()
    {
        Assert.Equal(Vatpit.Frequency, Vatpit.TickAt(1_000_000_000));
        for (long t = 0; t < 5000; t += 7)
        {
            long ns = Vatpit.NsOfTick(t);
            Assert.Equal(t, Vatpit.TickAt(ns));
            if (ns > 0) Assert.Equal(t - 1, Vatpit.TickAt(ns - 1));
        }
    }

    [Fact]
    public void Mode0OutputGoesHighAtTerminalCountAndRaisesIrq0Once()
    {
        Program(0, 0, 100);
        Assert.False(_pit.GetOutput(0));
        _clock.ToPitTick(51);
        Assert.Equal(50, ReadCount(0));
        _clock.ToPitTick(100);
        Assert.False(_pit.GetOutput(0));
        Assert.Equal(0, _irq.IsaPulses[0]);
        _clock.ToPitTick(101); // N + 1 clocks after the count was written
        Assert.True(_pit.GetOutput(0));
        Assert.Equal(1, _irq.IsaPulses[0]);
        _clock.ToPitTick(100_000);
        Assert.True(_pit.GetOutput(0));
        Assert.Equal(1, _irq.IsaPulses[0]);
    }

    [Fact]
    public void Mode0FirstByteOfCountDropsOutputAndStopsCounting()
    {
        Program(2, 0, 10);
        _pit.PortWrite(0x61, 1, 1);
        Program(2, 0, 10);
        _clock.ToPitTick(20);
        Assert.True(Out2());
        _pit.PortWrite(0x42, 1, 5);
        Assert.False(Out2());
        _clock.ToPitTick(100);
        Assert.False(Out2());
        _pit.PortWrite(0x42, 1, 0);
        _clock.ToPitTick(100 + 5);
        Assert.False(Out2());
        _clock.ToPitTick(100 + 6);
        Assert.True(Out2());
    }

    [Fact]
    public void Mode2RateGeneratorPulsesEveryCountClocks()
    {
        Program(0, 2, 1000);
        Assert.True(_pit.GetOutput(0));
        _clock.ToPitTick(1000);          // count reached 1: OUT low for one clock
        Assert.False(_pit.GetOutput(0));
        Assert.Equal(1, ReadCount(0));
        _clock.ToPitTick(1001);
        Assert.True(_pit.GetOutput(0));
        Assert.Equal(1000, ReadCount(0));
        Assert.Equal(1, _irq.IsaPulses[0]);
        _clock.ToPitTick(10_000);
        Assert.Equal(9, _irq.IsaPulses[0]);
        _clock.ToPitTick(10_001);
        Assert.Equal(10, _irq.IsaPulses[0]);
    }

    [Fact]
    public void Mode2OneKilohertzForASecondGivesAThousandInterrupts()
    {
        Program(0, 2, 1193); // Linux's LATCH for HZ=1000
        _clock.Advance(1_000_000_000);
        Assert.InRange(_irq.IsaPulses[0], 1000, 1001);
    }

    [Fact]
    public void Mode2NewCountTakesEffectAtNextReload()
    {
        Program(0, 2, 1000);
        _clock.ToPitTick(500);
        _pit.PortWrite(0x40, 1, 100);
        _pit.PortWrite(0x40, 1, 0);
        _clock.ToPitTick(1001);
        Assert.Equal(1, _irq.IsaPulses[0]);
        _clock.ToPitTick(1101);
        Assert.Equal(2, _irq.IsaPulses[0]);
        _clock.ToPitTick(2001);
        Assert.Equal(11, _irq.IsaPulses[0]);
    }

    [Fact]
    public void Mode3SquareWaveEvenCount()
    {
        _pit.PortWrite(0x61, 1, 1);
        Program(2, 3, 10);
        var outs = new List<bool>();
        var counts = new List<int>();
        for (int t = 1; t <= 21; t++)
        {
            _clock.ToPitTick(t);
            outs.Add(Out2());
            _pit.PortWrite(0x43, 1, 0x80); // latch counter 2
            counts.Add(ReadCount(2));
        }
        // Ticks 1-5 high, 6-10 low, 11-15 high...
        Assert.Equal([true, true, true, true, true, false, false, false, false, false, true, true, true, true, true, false, false, false, false, false, true], outs);
        Assert.Equal([10, 8, 6, 4, 2, 10, 8, 6, 4, 2, 10], counts.GetRange(0, 11));
    }

    [Fact]
    public void Mode3SquareWaveOddCountIsHighOneClockLonger()
    {
        _pit.PortWrite(0x61, 1, 1);
        Program(2, 3, 7);
        var outs = new List<bool>();
        var counts = new List<int>();
        for (int t = 1; t <= 14; t++)
        {
            _clock.ToPitTick(t);
            outs.Add(Out2());
            _pit.PortWrite(0x43, 1, 0x80);
            counts.Add(ReadCount(2));
        }
        Assert.Equal([true, true, true, true, false, false, false, true, true, true, true, false, false, false], outs);
        Assert.Equal([7, 6, 4, 2, 7, 4, 2], counts.GetRange(0, 7));
    }

    [Fact]
    public void Mode3OnChannel0InterruptsOncePerPeriod()
    {
        Program(0, 3, 2000);
        _clock.ToPitTick(20_000);
        Assert.Equal(9, _irq.IsaPulses[0]);
        _clock.ToPitTick(20_001);
        Assert.Equal(10, _irq.IsaPulses[0]);
    }

    [Fact]
    public void Mode1OneShotIsTriggeredAndRetriggeredByGate()
    {
        Program(2, 1, 50);
        Assert.True(Out2());
        _clock.ToPitTick(100);
        Assert.True(Out2());                  // no trigger yet
        _pit.PortWrite(0x61, 1, 1);           // gate rises at tick 100
        _clock.ToPitTick(101);
        Assert.False(Out2());
        _clock.ToPitTick(130);
        _pit.PortWrite(0x61, 1, 0);
        _pit.PortWrite(0x61, 1, 1);           // retrigger at 130
        _clock.ToPitTick(151);
        Assert.False(Out2());                 // would have ended here without the retrigger
        _clock.ToPitTick(180);
        Assert.False(Out2());
        _clock.ToPitTick(181);
        Assert.True(Out2());
        _clock.ToPitTick(1000);
        Assert.True(Out2());
    }

    [Fact]
    public void Mode4SoftwareStrobeIsOneClockLow()
    {
        Program(0, 4, 20);
        _clock.ToPitTick(20);
        Assert.True(_pit.GetOutput(0));
        _clock.ToPitTick(21);
        Assert.False(_pit.GetOutput(0));
        Assert.Equal(0, _irq.IsaPulses[0]);
        _clock.ToPitTick(22);
        Assert.True(_pit.GetOutput(0));
        Assert.Equal(1, _irq.IsaPulses[0]);
        _clock.ToPitTick(100_000);
        Assert.Equal(1, _irq.IsaPulses[0]);
    }

    [Fact]
    public void Mode5HardwareStrobeFollowsGateTrigger()
    {
        Program(2, 5, 10);
        _clock.ToPitTick(50);
        Assert.True(Out2());
        _pit.PortWrite(0x61, 1, 1);
        _clock.ToPitTick(60);
        Assert.True(Out2());
        _clock.ToPitTick(61);
        Assert.False(Out2());
        _clock.ToPitTick(62);
        Assert.True(Out2());
    }

    [Fact]
    public void GateLowPausesMode0()
    {
        Program(2, 0, 100);                   // gate 2 is low: counting waits
        _clock.ToPitTick(500);
        Assert.False(Out2());
        _pit.PortWrite(0x61, 1, 1);
        _clock.ToPitTick(500 + 100);
        Assert.False(Out2());
        _clock.ToPitTick(500 + 101);
        Assert.True(Out2());
    }

    [Fact]
    public void CounterLatchFreezesTheReadValue()
    {
        Program(0, 2, 1000);
        _clock.ToPitTick(301);
        _pit.PortWrite(0x43, 1, 0x00);
        _clock.ToPitTick(600);
        Assert.Equal(700, ReadCount(0));
        Assert.Equal(1000 - 599, ReadCount(0)); // latch released: the live value again
    }

    [Fact]
    public void ReadBackLatchesStatusThenCount()
    {
        Program(0, 2, 1000);
        _pit.PortWrite(0x43, 1, 0x34);       // rewriting the control word: null count until loaded
        _pit.PortWrite(0x43, 1, 0xE2);       // read-back status only, counter 0
        Assert.Equal(0x40u | 0x30 | 0x04 | 0x80, _pit.PortRead(0x40, 1));
        _pit.PortWrite(0x40, 1, 0xe8);
        _pit.PortWrite(0x40, 1, 0x03);       // 1000
        _clock.ToPitTick(101);
        _pit.PortWrite(0x43, 1, 0xC2);       // status and count of counter 0
        _clock.ToPitTick(400);
        Assert.Equal(0x80u | 0x30 | 0x04, _pit.PortRead(0x40, 1)); // OUT high, count loaded, LSB/MSB, mode 2
        Assert.Equal(900, ReadCount(0));
    }

    [Fact]
    public void StatusReportsModeBitsAndBcdAsWritten()
    {
        _pit.PortWrite(0x43, 1, 0x7F);       // counter 1, LSB/MSB, mode 7, BCD
        _pit.PortWrite(0x43, 1, 0xE4);       // read-back status of counter 1
        Assert.Equal(0x80u | 0x40 | 0x30 | 0x0F, _pit.PortRead(0x41, 1));
        _pit.PortWrite(0x43, 1, 0x51);       // counter 1, LSB only, mode 0, BCD
        _pit.PortWrite(0x41, 1, 0x99);
        _clock.ToPitTick(1 + 9);
        _pit.PortWrite(0x43, 1, 0x40);       // latch counter 1
        Assert.Equal(0x90u, _pit.PortRead(0x41, 1)); // 99 - 9 = 90 in BCD
    }

    [Fact]
    public void LsbOnlyAndMsbOnlyAccess()
    {
        _pit.PortWrite(0x43, 1, 0x10);       // counter 0 LSB only mode 0
        _pit.PortWrite(0x40, 1, 200);
        _clock.ToPitTick(51);
        Assert.Equal(150u, _pit.PortRead(0x40, 1));
        _pit.PortWrite(0x43, 1, 0x20);       // counter 0 MSB only mode 0
        _pit.PortWrite(0x40, 1, 2);          // 512
        _clock.ToPitTick(51 + 1 + 256);
        Assert.Equal(1u, _pit.PortRead(0x40, 1));
    }

    [Fact]
    public void Port61Out2RisesAfterProgrammedCountAsLinuxCalibrationExpects()
    {
        _clock.Advance(123_456_789);
        // pit_calibrate_tsc: gate on, speaker off, channel 2 mode 0 LSB/MSB, 10 ms count.
        _pit.PortWrite(0x61, 1, (_pit.PortRead(0x61, 1) & ~2u) | 1);
        _pit.PortWrite(0x43, 1, 0xB0);
        const int latch = 11932;
        _pit.PortWrite(0x42, 1, latch & 0xff);
        long writeTick = Vatpit.TickAt(_clock.NowNs);
        long writeNs = _clock.NowNs;
        _pit.PortWrite(0x42, 1, latch >> 8);
        Assert.False(Out2());
        long riseNs = Vatpit.NsOfTick(writeTick + latch + 1);
        _clock.ToNs(riseNs - 1);
        Assert.False(Out2());
        _clock.ToNs(riseNs);
        Assert.True(Out2());
        Assert.InRange(riseNs - writeNs, 10_000_000, 10_002_000);
        Assert.Equal(1u, _pit.PortRead(0x61, 1) & 1);
    }

    [Fact]
    public void Port61RefreshBitToggles()
    {
        var seen = new HashSet<uint>();
        for (int i = 0; i < 10; i++)
        {
            seen.Add(_pit.PortRead(0x61, 1) & 0x10);
            _clock.Advance(15_085);
        }
        Assert.Equal(2, seen.Count);
    }

    [Fact]
    public void LiveReadsAlternateLsbAndMsbLikeQuickPitCalibrate()
    {
        _pit.PortWrite(0x61, 1, 1);
        _pit.PortWrite(0x43, 1, 0xB0);
        _pit.PortWrite(0x42, 1, 0xff);
        _pit.PortWrite(0x42, 1, 0xff);
        int lastMsb = 0x100;
        for (int i = 0; i < 20; i++)
        {
            _clock.Advance(50_000);          // about 60 clocks
            _pit.PortRead(0x42, 1);
            int msb = (int)_pit.PortRead(0x42, 1);
            Assert.True(msb <= lastMsb);
            lastMsb = msb;
        }
        Assert.True(lastMsb < 0xff);
    }

    [Fact]
    public void SaveRestoreKeepsPhase()
    {
        Program(0, 2, 1000);
        _clock.ToPitTick(1500);
        var saved = StateCopy.Save(_pit);
        var clock2 = new ManualClock();
        clock2.Advance(777_777);
        var irq2 = new RecordingIrq();
        var pit2 = new Vatpit(clock2, irq2);
        StateCopy.Load(pit2, saved);
        pit2.PortWrite(0x43, 1, 0x00);
        uint lo = pit2.PortRead(0x40, 1), hi = pit2.PortRead(0x40, 1);
        Assert.Equal(501u, lo | hi << 8);
        clock2.Advance(Vatpit.NsOfTick(10_000));
        Assert.InRange(irq2.IsaPulses[0], 10, 11);
    }

    [Fact]
    public void ResetStopsInterrupts()
    {
        Program(0, 2, 100);
        _clock.ToPitTick(1000);
        int n = _irq.IsaPulses[0];
        _pit.Reset();
        _clock.ToPitTick(100_000);
        Assert.Equal(n, _irq.IsaPulses[0]);
    }
}
