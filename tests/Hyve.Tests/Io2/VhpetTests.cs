// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io2;

public class VhpetTests
{
    private const ulong Conf = 0x10, Status = 0x20, Counter = 0xF0;
    private static ulong TConf(int n) => 0x100 + 0x20 * (ulong)n;
    private static ulong TCmp(int n) => 0x108 + 0x20 * (ulong)n;
    private static ulong TFsb(int n) => 0x110 + 0x20 * (ulong)n;
    private const ulong Level = 1 << 1, IntEnb = 1 << 2, Periodic = 1 << 3, ValSet = 1 << 6, FsbEn = 1 << 14;
    private static ulong Route(int pin) => (ulong)pin << 9;

    private readonly ManualClock _clock = new();
    private readonly RecordingIrqLines _irq = new();
    private readonly Vhpet _h;

    public VhpetTests() => _h = new Vhpet(_clock, _irq);

    // Clock nanoseconds until the counter has counted 'ticks' from an enable at time 0 (rounded up).
    private static long Ns(long ticks) => (ticks * 1_000_000_000 + Vhpet.Frequency - 1) / Vhpet.Frequency;

    [Fact]
    public void CapabilitiesDescribe32BitCounterEightTimersNoLegacyRoute()
    {
        ulong cap = _h.MmioRead(0, 8);
        Assert.Equal(59_604_644ul, cap >> 32);          // 10^15 / 2^24 fs
        Assert.Equal(7ul, (cap >> 8) & 0x1F);           // NUM_TIM_CAP = timers - 1
        Assert.Equal(0ul, cap & (1 << 13));             // COUNT_SIZE_CAP: 32-bit
        Assert.Equal(0ul, cap & (1 << 15));             // LEG_RT_CAP
        Assert.Equal(0x8086ul, (cap >> 16) & 0xFFFF);
        Assert.Equal(cap >> 32, _h.MmioRead(4, 4));
        ulong t0 = _h.MmioRead(TConf(0), 8);
        Assert.Equal((ulong)Vhpet.DefaultRouteCapability, t0 >> 32);
        Assert.NotEqual(0ul, t0 & (1 << 4));  // periodic capable
        Assert.NotEqual(0ul, t0 & (1 << 15)); // FSB capable
        Assert.Equal(0ul, t0 & (1 << 5));     // 32-bit comparator
        Assert.Equal(0xFFFF_FFFFul, _h.MmioRead(TCmp(0), 8));
    }

    [Fact]
    public void CounterRunsOnlyWhenEnabledAndIsWritableWhileHalted()
    {
        _clock.Advance(1_000_000);
        Assert.Equal(0ul, _h.MmioRead(Counter, 8));
        _h.MmioWrite(Counter, 4, 1000);
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(1_000_000_000);
        Assert.Equal(1000ul + 16_777_216, _h.MmioRead(Counter, 8));
        _h.MmioWrite(Counter, 8, 5); // accepted while running (bhyve): counting restarts from 5
        Assert.Equal(5ul, _h.MmioRead(Counter, 8));
        _h.MmioWrite(Conf, 4, 0);
        ulong halted = _h.MmioRead(Counter, 4);
        _clock.Advance(1_000_000_000);
        Assert.Equal(halted, _h.MmioRead(Counter, 4));
        Assert.Equal(0ul, _h.MmioRead(Counter + 4, 4));
        Assert.Equal(0ul, _h.MmioRead(Conf, 8) & 2); // LEG_RT_CNF cannot be set
        _h.MmioWrite(Conf, 4, 2);
        Assert.Equal(0ul, _h.MmioRead(Conf, 8));
    }

    [Fact]
    public void OneShotComparatorFiresAtTheRightCount()
    {
        _h.MmioWrite(TConf(0), 8, IntEnb | Route(20));
        _h.MmioWrite(TCmp(0), 4, 16_777);
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(Ns(16_777) - 1);
        Assert.Equal(0, _irq.PinPulses(20));
        _clock.Advance(1);
        Assert.Equal(1, _irq.PinPulses(20));
        Assert.True(_h.MmioRead(Counter, 4) >= 16_777);
        _clock.Advance(1_000_000_000);
        Assert.Equal(1, _irq.PinPulses(20)); // edge mode: no status bit, no repeat until the counter wraps
        Assert.Equal(0ul, _h.MmioRead(Status, 8));
    }

    [Fact]
    public void PeriodicReloadUsesValueSetForStartAndNextWriteForPeriod()
    {
        const uint P = 16_777; // about 1 ms
        _h.MmioWrite(TConf(1), 8, IntEnb | Periodic | ValSet | Route(21));
        _h.MmioWrite(TCmp(1), 4, 2 * P); // accumulator (first match)
        _h.MmioWrite(TCmp(1), 4, P);     // period
        Assert.Equal(0ul, _h.MmioRead(TConf(1), 8) & ValSet); // value-set clears itself
        Assert.Equal(2ul * P, _h.MmioRead(TCmp(1), 4));
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(Ns(2 * P - 1));
        Assert.Equal(0, _irq.PinPulses(21));
        _clock.Advance(Ns(5 * P + 100) - Ns(2 * P - 1));
        Assert.Equal(4, _irq.PinPulses(21)); // at 2P, 3P, 4P, 5P
        Assert.Equal(6ul * P, _h.MmioRead(TCmp(1), 4));
        // Without value-set a write in periodic mode changes only the period.
        _h.MmioWrite(TCmp(1), 4, 2 * P);
        Assert.Equal(6ul * P, _h.MmioRead(TCmp(1), 4));
        _clock.Advance(Ns(8 * P + 100) - Ns(5 * P + 100));
        Assert.Equal(6, _irq.PinPulses(21)); // at 6P, then 8P
        Assert.Equal(10ul * P, _h.MmioRead(TCmp(1), 4));
    }

    [Fact]
    public void TinyPeriodCannotFloodTheHost()
    {
        _h.MmioWrite(TConf(1), 8, IntEnb | Periodic | ValSet | Route(21));
        _h.MmioWrite(TCmp(1), 4, 10);
        _h.MmioWrite(TCmp(1), 4, 1); // one tick, 60 ns
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(1_000_000);
        Assert.InRange(_irq.PinPulses(21), 1, 11); // at most one per 100 us
    }

    [Fact]
    public void FsbDeliveryUsesTheRouteRegistersAddressAndData()
    {
        _h.MmioWrite(TFsb(2), 4, 0x4041);           // data (low half)
        _h.MmioWrite(TFsb(2) + 4, 4, 0xFEE0_1000);  // address (high half)
        _h.MmioWrite(TConf(2), 8, IntEnb | FsbEn | Level | Route(22));
        _h.MmioWrite(TCmp(2), 4, 100);
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(Ns(100));
        Assert.Single(_irq.Msis);
        Assert.Equal((0xFEE0_1000ul, 0x4041ul), _irq.Msis[0]);
        Assert.Equal(0, _irq.PinAsserts(22));
        Assert.Equal(0ul, _h.MmioRead(Status, 8));
    }

    [Fact]
    public void LevelStatusBitsAreWriteOneToClear()
    {
        _h.MmioWrite(TConf(3), 8, IntEnb | Level | Route(23));
        _h.MmioWrite(TCmp(3), 4, 50);
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(Ns(50));
        Assert.Equal(1ul << 3, _h.MmioRead(Status, 8));
        Assert.Equal(1, _irq.PinLevel[23]);
        _h.MmioWrite(Status, 4, 1 << 2); // another bit: no effect
        Assert.Equal(1ul << 3, _h.MmioRead(Status, 4));
        _h.MmioWrite(Status, 4, 1 << 3);
        Assert.Equal(0ul, _h.MmioRead(Status, 8));
        Assert.Equal(0, _irq.PinLevel[23]);
    }

    [Fact]
    public void CounterAndComparatorWrapAt32Bits()
    {
        _h.MmioWrite(Counter, 8, 0xFFFF_FF00);
        _h.MmioWrite(TConf(0), 8, IntEnb | Route(20));
        _h.MmioWrite(TCmp(0), 8, 0x10);
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(Ns(0x110) - 1);
        Assert.Equal(0, _irq.PinPulses(20));
        _clock.Advance(1);
        Assert.Equal(1, _irq.PinPulses(20));
        Assert.True(_h.MmioRead(Counter, 8) < 0x20);
    }

    [Fact]
    public void RouteCapabilityFollowsBhyvesRule()
    {
        Assert.Equal(0x00F0_0000u, Vhpet.RouteCapabilityFor(24));
        Assert.Equal(0xFF00_0000u, Vhpet.RouteCapabilityFor(32));
        Assert.Equal(0u, Vhpet.RouteCapabilityFor(16));
        _h.MmioWrite(TConf(0), 8, 1 << 8); // Tn_32MODE_CNF: read-only 0 on a 32-bit timer
        Assert.Equal(0ul, _h.MmioRead(TConf(0), 4) & (1 << 8));
    }

    [Fact]
    public void UnsupportedRouteIsNotAccepted()
    {
        _h.MmioWrite(TConf(0), 8, Route(20));
        _h.MmioWrite(TConf(0), 8, Route(3));
        Assert.Equal(Route(20), _h.MmioRead(TConf(0), 8) & Route(31));
    }

    [Fact]
    public void MisalignedAndNarrowAccessesReadAllOnesAndAreIgnored()
    {
        Assert.Equal(0xFFFF_FFFFul, _h.MmioRead(2, 4));
        Assert.Equal(0xFFul, _h.MmioRead(0, 1));
        Assert.Equal(ulong.MaxValue, _h.MmioRead(4, 8));
        _h.MmioWrite(Conf, 2, 1);
        _h.MmioWrite(Conf + 4, 8, 1);
        Assert.Equal(0ul, _h.MmioRead(Conf, 8));
    }

    [Fact]
    public void ResetHaltsAndLowersLevels()
    {
        _h.MmioWrite(TConf(3), 8, IntEnb | Level | Route(23));
        _h.MmioWrite(TCmp(3), 4, 50);
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(Ns(60));
        Assert.Equal(1, _irq.PinLevel[23]);
        _h.Reset();
        Assert.Equal(0, _irq.PinLevel[23]);
        Assert.Equal(0ul, _h.MmioRead(Conf, 8));
        Assert.Equal(0ul, _h.MmioRead(Counter, 8));
    }

    [Fact]
    public void SaveRestoreContinuesCountingAndTimers()
    {
        _h.MmioWrite(TConf(0), 8, IntEnb | Route(20));
        _h.MmioWrite(TCmp(0), 4, 2000);
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(Ns(1000));
        uint counter = (uint)_h.MmioRead(Counter, 4);
        var s = StateCopy.Save(_h);
        var clock2 = new ManualClock();
        clock2.Advance(12345);
        var irq2 = new RecordingIrqLines();
        var h2 = new Vhpet(clock2, irq2);
        StateCopy.Load(h2, s);
        Assert.Equal(counter, (uint)h2.MmioRead(Counter, 4));
        clock2.Advance(Ns(1001));
        Assert.Equal(1, irq2.PinPulses(20));
    }

    // A snapshot holds the clock's callbacks while it writes (and a loaded host runs them late): a one-shot match that
    // came in that window has not been delivered. It must be delivered once the restored vCPUs run, not one 32-bit wrap
    // (5 minutes) later; the counter goes on from where the guest saw it, never backwards.
    [Fact]
    public void A_one_shot_match_that_fell_due_while_a_snapshot_held_the_clock_is_delivered_when_the_restore_resumes()
    {
        _h.MmioWrite(TConf(1), 8, IntEnb | Route(20));
        _h.MmioWrite(TCmp(1), 4, 2000);
        _h.MmioWrite(Conf, 4, 1);
        _clock.Advance(Ns(1990));
        _clock.AdvanceHeld(Ns(500)); // the match at 2000 passes while held
        uint seenByGuest = (uint)_h.MmioRead(Counter, 4);
        Assert.Equal(0, _irq.PinPulses(20));
        var s = StateCopy.Save(_h);
        var clock2 = new ManualClock();
        var irq2 = new RecordingIrqLines();
        var h2 = new Vhpet(clock2, irq2);
        StateCopy.Load(h2, s);
        Assert.Equal(seenByGuest, (uint)h2.MmioRead(Counter, 4));
        clock2.Advance(1_000);
        Assert.Equal(0, irq2.PinPulses(20)); // not before the vCPUs have their state
        ((IQuiescent)h2).Resume();
        Assert.Equal(1, irq2.PinPulses(20));
        clock2.Advance(1_000_000_000); // and only once
        Assert.Equal(1, irq2.PinPulses(20));

        // A match delivered before the snapshot is not delivered again.
        var s2 = StateCopy.Save(h2);
        var irq3 = new RecordingIrqLines();
        var h3 = new Vhpet(new ManualClock(), irq3);
        StateCopy.Load(h3, s2);
        ((IQuiescent)h3).Resume();
        Assert.Equal(0, irq3.PinPulses(20));
    }
}
