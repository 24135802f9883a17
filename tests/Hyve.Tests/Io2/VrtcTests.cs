// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io2;

public class VrtcTests
{
    private const long Ms = 1_000_000, Sec = 1_000_000_000;
    private static readonly long Evening = new DateTimeOffset(2025, 11, 25, 23, 59, 59, TimeSpan.Zero).ToUnixTimeSeconds();

    private readonly ManualClock _clock = new();
    private readonly RecordingIrqLines _irq = new();

    private Vrtc Make(long t) => new(_clock, _irq, t);
    private static byte Rd(Vrtc r, int i) { r.PortWrite(0x70, 1, (uint)i); return (byte)r.PortRead(0x71, 1); }
    private static void Wr(Vrtc r, int i, byte v) { r.PortWrite(0x70, 1, (uint)i); r.PortWrite(0x71, 1, v); }

    [Fact]
    public void TwelveHourBcdShowsPmBitWithHourEleven()
    {
        var r = Make(Evening);
        Wr(r, 0x0B, 0x00); // BCD, 12-hour
        Assert.Equal(0x91, Rd(r, 4));
        Assert.Equal(0x59, Rd(r, 2));
        Assert.Equal(0x59, Rd(r, 0));
        Assert.Equal(0x25, Rd(r, 7));
        Assert.Equal(0x11, Rd(r, 8));
        Assert.Equal(0x25, Rd(r, 9));
        Assert.Equal(0x20, Rd(r, Vrtc.CenturyOffset));
        Assert.Equal(3, Rd(r, 6)); // Tuesday, Sunday = 1
    }

    [Theory]
    [InlineData(0x06, 23, 0x17)]  // binary, 24-hour
    [InlineData(0x04, 23, 0x8B)]  // binary, 12-hour: 11 PM
    [InlineData(0x02, 23, 0x23)]  // BCD, 24-hour
    [InlineData(0x00, 0, 0x12)]   // BCD, 12-hour: midnight is 12 AM
    [InlineData(0x00, 12, 0x92)]  // BCD, 12-hour: noon is 12 PM
    public void HourFormats(byte regB, int hour, byte expected)
    {
        var t = new DateTimeOffset(2024, 2, 29, hour, 7, 8, TimeSpan.Zero).ToUnixTimeSeconds();
        var r = Make(t);
        Wr(r, 0x0B, regB);
        Assert.Equal(expected, Rd(r, 4));
        bool binary = (regB & 4) != 0;
        Assert.Equal(binary ? 8 : 0x08, Rd(r, 0));
        Assert.Equal(binary ? 29 : 0x29, Rd(r, 7));
    }

    [Fact]
    public void TimeRollsOverAtMidnightAndLocalOffsetApplies()
    {
        var r = new Vrtc(_clock, _irq, Evening, utcOffsetSeconds: 3600);
        Assert.Equal(0x00, Rd(r, 4)); // 00:59:59 on the 26th
        Assert.Equal(0x26, Rd(r, 7));
        _clock.Advance(Sec);
        Assert.Equal(0x01, Rd(r, 4));
        Assert.Equal(0x00, Rd(r, 2));
        Assert.Equal(Evening + 3601, r.GetTime());
    }

    [Fact]
    public void UpdateEndedInterruptOncePerSecond()
    {
        var r = Make(Evening);
        Wr(r, 0x0B, 0x12); // UIE, 24h BCD
        int seen = 0;
        for (int s = 0; s < 5; s++)
        {
            _clock.Advance(Sec);
            Assert.Equal(1, _irq.IsaLevel[8]);
            byte c = Rd(r, 0x0C);
            Assert.Equal(0x90, c & 0x90); // IRQF | UF (PF and AF may be set too: flags do not need enables)
            Assert.Equal(0, _irq.IsaLevel[8]);
            seen++;
        }
        Assert.Equal(5, _irq.IsaAsserts(8));
        Assert.Equal(5, seen);
        Assert.Equal(0, Rd(r, 0x0C)); // cleared by the read
    }

    [Fact]
    public void AlarmWithDontCareBytesFiresOncePerMinute()
    {
        var r = Make(Evening); // 23:59:59
        Wr(r, 0x0B, 0x22);    // AIE, 24h BCD
        Wr(r, 1, 0x30);       // seconds = 30
        Wr(r, 3, 0xC0);       // any minute
        Wr(r, 5, 0xFF);       // any hour
        int alarms = 0;
        for (int s = 0; s < 120; s++)
        {
            _clock.Advance(Sec);
            byte c = Rd(r, 0x0C);
            if ((c & 0x20) != 0) { alarms++; Assert.Equal(0x30, Rd(r, 0)); Assert.True((c & 0x80) != 0); }
        }
        Assert.Equal(2, alarms);
        Assert.Equal(2, _irq.IsaAsserts(8));
    }

    [Fact]
    public void PeriodicInterruptAt1024Hz()
    {
        var r = Make(Evening);
        Wr(r, 0x0A, 0x26); // 32.768 kHz, rate 6 = 1024 Hz
        Wr(r, 0x0B, 0x42); // PIE
        Rd(r, 0x0C);
        int flags = 0;
        for (int i = 0; i < 10_000; i++)
        {
            _clock.Advance(100_000); // 100 us, shorter than a period so no tick is missed
            if ((Rd(r, 0x0C) & 0xC0) == 0xC0) flags++;
        }
        Assert.Equal(1024, flags);
        Assert.Equal(1024, _irq.IsaAsserts(8));
    }

    [Fact]
    public void TimerDrivenPeriodicInterruptsAreLevelUntilCIsRead()
    {
        var r = Make(Evening);
        Wr(r, 0x0A, 0x2F); // 2 Hz
        Wr(r, 0x0B, 0x42);
        _irq.OnIsaAssert = _ => Rd(r, 0x0C); // an interrupt handler that acknowledges
        _clock.Advance(10 * Sec);
        Assert.Equal(20, _irq.IsaAsserts(8));
        _irq.OnIsaAssert = null;
        _clock.Advance(10 * Sec);
        Assert.Equal(21, _irq.IsaAsserts(8)); // without a read of C the line stays high: no new edges
        Assert.Equal(1, _irq.IsaLevel[8]);
    }

    [Fact]
    public void SetBitFreezesAndGuestSetsTime()
    {
        var r = Make(Evening);
        Wr(r, 0x0B, 0x82 | 0x10); // SET (also clears UIE), 24h BCD
        Assert.Equal(0x82, Rd(r, 0x0B));
        _clock.Advance(5 * Sec);
        Assert.Equal(0x59, Rd(r, 0));
        Wr(r, 0, 0x00); Wr(r, 2, 0x30); Wr(r, 4, 0x12);
        Wr(r, 7, 0x01); Wr(r, 8, 0x07); Wr(r, 9, 0x30); Wr(r, Vrtc.CenturyOffset, 0x20);
        _clock.Advance(3 * Sec);
        Assert.Equal(0x00, Rd(r, 0));
        Wr(r, 0x0B, 0x02);
        long expected = new DateTimeOffset(2030, 7, 1, 12, 30, 0, TimeSpan.Zero).ToUnixTimeSeconds();
        Assert.Equal(expected, r.GetTime());
        _clock.Advance(Sec);
        Assert.Equal(0x01, Rd(r, 0));
        Assert.Equal(expected + 1, r.GetTime());
    }

    [Fact]
    public void InvalidGuestDateStopsTheClock()
    {
        var r = Make(Evening);
        Wr(r, 0x0B, 0x82);
        Wr(r, 8, 0x13); // month 13
        Wr(r, 0x0B, 0x02);
        Assert.Equal(Vrtc.BrokenTime, r.GetTime());
        r.SetTime(Evening);
        Assert.Equal(Evening, r.GetTime());
    }

    [Fact]
    public void DividerResetStopsTimeAndFirstUpdateIsHalfASecondLater()
    {
        var r = Make(Evening);
        Wr(r, 0x0A, 0x70);
        _clock.Advance(10 * Sec);
        Assert.Equal(Evening, r.GetTime());
        Wr(r, 0x0A, 0x26);
        _clock.Advance(499 * Ms);
        Assert.Equal(Evening, r.GetTime());
        _clock.Advance(2 * Ms);
        Assert.Equal(Evening + 1, r.GetTime());
    }

    [Fact]
    public void UpdateInProgressIsSetJustBeforeTheUpdate()
    {
        var r = Make(Evening);
        _clock.Advance(500 * Ms);
        Assert.Equal(0, Rd(r, 0x0A) & 0x80);
        _clock.Advance(500 * Ms - 100_000); // 100 us before the second ends
        Assert.Equal(0x80, Rd(r, 0x0A) & 0x80);
        _clock.Advance(200_000);
        Assert.Equal(0, Rd(r, 0x0A) & 0x80);
    }

    [Fact]
    public void RegisterDReportsValidTimeAndCIsReadOnly()
    {
        var r = Make(Evening);
        Assert.Equal(0x80, Rd(r, 0x0D));
        Wr(r, 0x0D, 0);
        Assert.Equal(0x80, Rd(r, 0x0D));
        Wr(r, 0x0C, 0xFF);
        Assert.Equal(0, Rd(r, 0x0C));
    }

    [Fact]
    public void NvramSurvivesResetButEnablesDoNot()
    {
        var r = Make(Evening);
        Wr(r, 0x40, 0xA5);
        r.NvramWrite(0x41, 0x5A);
        Wr(r, 0x0B, 0x72); // PIE AIE UIE
        _clock.Advance(2 * Sec);
        Assert.Equal(1, _irq.IsaLevel[8]);
        r.Reset();
        Assert.Equal(0, _irq.IsaLevel[8]);
        Assert.Equal(0x02, Rd(r, 0x0B));
        Assert.Equal(0xA5, r.NvramRead(0x40));
        Assert.Equal(0x5A, Rd(r, 0x41));
        Assert.Equal(Evening + 2, r.GetTime());
    }

    [Fact]
    public void ControlToolReadsEveryByteButRefusesClockRegisterWrites()
    {
        var r = Make(Evening);
        Assert.Equal(Rd(r, 0x0B), r.NvramRead(0x0B));
        Assert.Equal(0x80, r.NvramRead(0x0D)); // VRT: the battery is good
        Assert.Throws<ArgumentException>(() => r.NvramRead(128));
        Assert.Throws<ArgumentException>(() => r.NvramWrite(0x0B, 1));
        Assert.Throws<ArgumentException>(() => r.NvramWrite(128, 1));
        Assert.Throws<ArgumentException>(() => r.NvramRead(-1));
        Assert.False(r.TryNvramWrite(0x0A, 0));
        Assert.True(r.TryNvramWrite(0x0E, 7));
        Assert.Equal(7, r.NvramRead(0x0E));
        Assert.Equal(0x20, r.NvramRead(Vrtc.CenturyOffset));
        Assert.False(r.TryNvramWrite(Vrtc.CenturyOffset, 0x19)); // part of the date: refused as bhyve does
    }

    [Fact]
    public void AlarmSecondIsNotLostWhenCIsReadLate()
    {
        var r = Make(Evening);
        Wr(r, 0x0B, 0x22); // AIE
        Wr(r, 1, 0x05); Wr(r, 3, 0xFF); Wr(r, 5, 0xFF); // every minute at :05
        _irq.OnIsaAssert = null;
        // Read C only after ten seconds: the second :05 lies in between.
        _clock.Advance(10 * Sec);
        Assert.Equal(0xA0, Rd(r, 0x0C) & 0xA0);
    }

    [Fact]
    public void PowerOnStateIsBhyves()
    {
        var r = Make(Evening);
        Assert.Equal(0x0D, r.Index);
        Assert.Equal(0x20, Rd(r, 0x0A));
        Assert.Equal(0x02, Rd(r, 0x0B));
        _clock.Advance(10 * Sec);
        Assert.Equal(0x10, Rd(r, 0x0C)); // UF only: no periodic rate selected
    }

    [Fact]
    public void IndexPortKeepsNmiMaskBit()
    {
        var r = Make(Evening);
        r.PortWrite(0x70, 1, 0x8F);
        Assert.True(r.NmiMasked);
        Assert.Equal(0x0F, r.Index);
        r.PortWrite(0x70, 1, 0x0F);
        Assert.False(r.NmiMasked);
    }

    [Fact]
    public void MemorySizeBytesMatchBhyve()
    {
        var r = Make(Evening);
        r.SetMemorySize(2UL << 30, 2UL << 30);
        Assert.Equal(0x80, r.NvramRead(0x15)); Assert.Equal(0x02, r.NvramRead(0x16));
        Assert.Equal(0x00, r.NvramRead(0x17)); Assert.Equal(0xFC, r.NvramRead(0x18)); // 63 MiB in KiB
        Assert.Equal(0x00, r.NvramRead(0x30)); Assert.Equal(0xFC, r.NvramRead(0x31));
        Assert.Equal(0x00, r.NvramRead(0x34)); Assert.Equal(0x7F, r.NvramRead(0x35)); // (2G-16M)/64K = 0x7F00
        Assert.Equal(0x00, r.NvramRead(0x5b)); Assert.Equal(0x80, r.NvramRead(0x5c)); Assert.Equal(0x00, r.NvramRead(0x5d));
        r.SetMemorySize(8UL << 20, 0);
        Assert.Equal(7 * 1024, r.NvramRead(0x17) | r.NvramRead(0x18) << 8);
        Assert.Equal(0, r.NvramRead(0x34) | r.NvramRead(0x35));
    }

    [Fact]
    public void SaveRestoreKeepsTimeAndNvram()
    {
        var r = Make(Evening);
        r.NvramWrite(0x50, 0x33);
        _clock.Advance(1500 * Ms);
        var s = StateCopy.Save(r);
        var clock2 = new ManualClock();
        clock2.Advance(77 * Sec);
        var r2 = new Vrtc(clock2, new RecordingIrqLines(), 0);
        StateCopy.Load(r2, s);
        Assert.Equal(Evening + 1, r2.GetTime());
        Assert.Equal(0x33, r2.NvramRead(0x50));
        clock2.Advance(500 * Ms);
        Assert.Equal(Evening + 2, r2.GetTime());
        Assert.Throws<InvalidDataException>(() => StateCopy.Load(r2, s with { Version = 99 }));
        Assert.Throws<InvalidDataException>(() => StateCopy.Load(r2, s with { Data = s.Data[..100] }));
    }

    [Fact]
    public void WideAccessesAreIgnored()
    {
        var r = Make(Evening);
        Assert.Equal(0xFFFF_FFFFu, r.PortRead(0x71, 2));
        r.PortWrite(0x70, 4, 0x40);
        Assert.Equal(0x0D, r.Index); // unchanged
    }
}
