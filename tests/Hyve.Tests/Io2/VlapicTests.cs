// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Xunit;
using R = Hyve.Vmm.Io.LapicRegisters;

namespace Hyve.Tests.Io2;

public class VlapicTests
{
    private readonly ManualClock _clock = new();
    private readonly LapicBus _bus = new();
    private readonly Vlapic[] _l = new Vlapic[4];
    private readonly RecordingCpu[] _cpu = new RecordingCpu[4];
    private readonly List<int> _eois = [];

    public VlapicTests()
    {
        for (int i = 0; i < 4; i++)
        {
            _cpu[i] = new RecordingCpu();
            _l[i] = new Vlapic((uint)i, i == 0, _clock, _bus, _cpu[i]);
            _bus.Add(_l[i]);
            W(i, R.Svr, 0x1FF); // software enable, spurious vector 0xFF
        }
        _bus.EoiHandler = _eois.Add;
    }

    private void W(int cpu, int reg, uint v) => _l[cpu].MmioWrite((ulong)reg, 4, v);
    private uint Rd(int cpu, int reg) => (uint)_l[cpu].MmioRead((ulong)reg, 4);
    private static bool Bit(Vlapic l, int regBase, int vector) => ((uint)l.MmioRead((ulong)(regBase + (vector >> 5) * 16), 4) & (1u << (vector & 31))) != 0;

    private void SendIpi(int from, uint dest, uint low)
    {
        W(from, R.IcrHigh, dest << 24);
        W(from, R.IcrLow, low);
    }

    [Fact]
    public void PowerOnStateMatchesTheSdm()
    {
        var l = new Vlapic(5, true, _clock, _bus);
        Assert.Equal(0xFEE0_0900ul, l.ApicBase);      // base, EN, BSP
        Assert.Equal(5u << 24, (uint)l.MmioRead(R.Id, 4));
        Assert.Equal(0x0006_0014u, (uint)l.MmioRead(R.Version, 4));
        Assert.Equal(0xFFu, (uint)l.MmioRead(R.Svr, 4));
        Assert.Equal(0xFFFF_FFFFu, (uint)l.MmioRead(R.Dfr, 4));
        foreach (int reg in new[] { R.LvtTimer, R.LvtThermal, R.LvtPerformance, R.LvtLint0, R.LvtLint1, R.LvtError, R.LvtCmci })
            Assert.Equal(0x10000u, (uint)l.MmioRead((ulong)reg, 4));
        Assert.False(new Vlapic(1, false, _clock, _bus).ApicBase is var b && (b & R.BaseBsp) != 0);
    }

    [Fact]
    public void OneShotTimerHonoursDivideAndCountsDown()
    {
        W(0, R.TimerDivide, 0x3);   // divide by 16
        W(0, R.LvtTimer, 0x40);     // one-shot, vector 0x40
        W(0, R.TimerInitialCount, 1000);
        _clock.Advance(8000);       // 500 ticks of 16 ns
        Assert.Equal(500u, Rd(0, R.TimerCurrentCount));
        Assert.False(Bit(_l[0], R.Irr, 0x40));
        _clock.Advance(7999);
        Assert.False(Bit(_l[0], R.Irr, 0x40));
        _clock.Advance(1);
        Assert.True(Bit(_l[0], R.Irr, 0x40));
        Assert.Equal(0u, Rd(0, R.TimerCurrentCount));
        Assert.Equal(1000u, Rd(0, R.TimerInitialCount));
    }

    [Fact]
    public void PeriodicTimerReloadsAndCurrentCountWraps()
    {
        W(0, R.TimerDivide, 0xB);            // divide by 1
        W(0, R.LvtTimer, (1u << 17) | 0x41); // periodic
        W(0, R.TimerInitialCount, 300_000);  // 300 us
        int fired = 0;
        for (int i = 0; i < 10; i++)
        {
            _clock.Advance(300_000);
            Assert.True(_l[0].TryGetPendingInterrupt(out int v));
            Assert.Equal(0x41, v);
            _l[0].AcknowledgeInterrupt(v);
            W(0, R.Eoi, 0);
            fired++;
        }
        Assert.Equal(10, fired);
        _clock.Advance(150_000);
        Assert.Equal(150_000u, Rd(0, R.TimerCurrentCount));
        W(0, R.LvtTimer, (1u << 17) | 0x41 | 0x10000); // masked: counts, no interrupt
        _clock.Advance(600_000);
        Assert.False(_l[0].TryGetPendingInterrupt(out _));
        Assert.Equal(150_000u, Rd(0, R.TimerCurrentCount));
    }

    [Fact]
    public void TinyPeriodicCountCannotFloodTheHost()
    {
        W(0, R.TimerDivide, 0xB);
        W(0, R.LvtTimer, (1u << 17) | 0x41);
        W(0, R.TimerInitialCount, 1); // 1 ns period
        _clock.Advance(1_000_000);
        Assert.InRange(_cpu[0].Pending, 1, 1 + 1_000_000 / Vlapic.MinPeriodicIntervalNs);
    }

    [Fact]
    public void ChangingTheDividerScalesTheRemainingTime()
    {
        W(0, R.TimerDivide, 0xB); // 1
        W(0, R.LvtTimer, 0x40);
        W(0, R.TimerInitialCount, 1000);
        _clock.Advance(400);
        W(0, R.TimerDivide, 0x0); // 2: the 600 remaining ticks now take 1200 ns
        Assert.Equal(600u, Rd(0, R.TimerCurrentCount));
        _clock.Advance(1199);
        Assert.False(Bit(_l[0], R.Irr, 0x40));
        _clock.Advance(1);
        Assert.True(Bit(_l[0], R.Irr, 0x40));
    }

    [Fact]
    public void TscDeadlineTimerFiresOnceAndClears()
    {
        W(0, R.LvtTimer, (2u << 17) | 0x42);
        W(0, R.TimerInitialCount, 5); // ignored in TSC-deadline mode
        Assert.Equal(0u, Rd(0, R.TimerInitialCount));
        Assert.True(_l[0].WriteMsr(R.MsrTscDeadline, 5000)); // default TSC = clock ns at 1 GHz
        Assert.True(_l[0].ReadMsr(R.MsrTscDeadline, out ulong d));
        Assert.Equal(5000ul, d);
        _clock.Advance(4999);
        Assert.False(Bit(_l[0], R.Irr, 0x42));
        _clock.Advance(1);
        Assert.True(Bit(_l[0], R.Irr, 0x42));
        _l[0].ReadMsr(R.MsrTscDeadline, out d);
        Assert.Equal(0ul, d);
        // Leaving TSC-deadline mode disarms; the MSR is ignored in count modes.
        _l[0].WriteMsr(R.MsrTscDeadline, 99_999);
        W(0, R.LvtTimer, 0x42);
        _l[0].WriteMsr(R.MsrTscDeadline, 99_999);
        _l[0].ReadMsr(R.MsrTscDeadline, out d);
        Assert.Equal(0ul, d);
    }

    [Fact]
    public void SwitchingFromPeriodicToTscDeadlineDisarmsTheCount()
    {
        W(0, R.LvtTimer, (1u << 17) | 0x43);
        W(0, R.TimerInitialCount, 1000);
        W(0, R.LvtTimer, (2u << 17) | 0x43);
        Assert.Equal(0u, Rd(0, R.TimerInitialCount));
        _clock.Advance(1_000_000);
        Assert.False(_l[0].TryGetPendingInterrupt(out _));
    }

    [Fact]
    public void TscDeadlineUsesTheTscDelegate()
    {
        ulong tsc = 1_000_000;
        var l = new Vlapic(9, false, _clock, _bus, null, tscHz: 2_000_000_000, readTsc: () => tsc);
        l.MmioWrite(R.Svr, 4, 0x1FF);
        l.MmioWrite(R.LvtTimer, 4, (2u << 17) | 0x50);
        l.WriteMsr(R.MsrTscDeadline, 1_000_000 + 2000); // 2000 TSC ticks at 2 GHz = 1000 ns
        _clock.Advance(999);
        Assert.False(l.TryGetPendingInterrupt(out _));
        tsc += 2000;
        _clock.Advance(1);
        Assert.True(l.TryGetPendingInterrupt(out int v));
        Assert.Equal(0x50, v);
    }

    [Fact]
    public void PhysicalDestinationReachesOneApic()
    {
        SendIpi(0, 2, 0x50);
        for (int i = 0; i < 4; i++) Assert.Equal(i == 2, Bit(_l[i], R.Irr, 0x50));
        SendIpi(0, 0xFF, 0x51); // physical broadcast
        for (int i = 0; i < 4; i++) Assert.True(Bit(_l[i], R.Irr, 0x51));
        Assert.Equal(0u, Rd(0, R.IcrLow) & (1 << 12)); // delivery status idle
    }

    [Fact]
    public void LogicalFlatDestinationMatchesAnyCommonBit()
    {
        for (int i = 0; i < 4; i++) W(i, R.Ldr, 1u << (24 + i));
        SendIpi(1, 0x05, (1u << 11) | 0x52);
        Assert.True(Bit(_l[0], R.Irr, 0x52));
        Assert.False(Bit(_l[1], R.Irr, 0x52));
        Assert.True(Bit(_l[2], R.Irr, 0x52));
        Assert.False(Bit(_l[3], R.Irr, 0x52));
    }

    [Fact]
    public void LogicalClusterDestinationMatchesClusterAndMember()
    {
        uint[] ldr = [0x11, 0x12, 0x21, 0x22];
        for (int i = 0; i < 4; i++) { W(i, R.Dfr, 0x0FFF_FFFF); W(i, R.Ldr, ldr[i] << 24); }
        Assert.Equal(0x0FFF_FFFFu, Rd(0, R.Dfr));
        SendIpi(0, 0x13, (1u << 11) | 0x53); // cluster 1, members 0 and 1
        Assert.Equal([true, true, false, false], _l.Select(l => Bit(l, R.Irr, 0x53)).ToArray());
        SendIpi(0, 0xF1, (1u << 11) | 0x54); // every cluster, member 0
        Assert.Equal([true, false, true, false], _l.Select(l => Bit(l, R.Irr, 0x54)).ToArray());
        SendIpi(0, 0x22, (1u << 11) | 0x55);
        Assert.Equal([false, false, false, true], _l.Select(l => Bit(l, R.Irr, 0x55)).ToArray());
    }

    [Fact]
    public void ShorthandsSelfAllAndAllButSelf()
    {
        W(1, R.IcrLow, (1u << 18) | 0x60);
        Assert.Equal([false, true, false, false], _l.Select(l => Bit(l, R.Irr, 0x60)).ToArray());
        W(1, R.IcrLow, (2u << 18) | 0x61);
        Assert.All(_l, l => Assert.True(Bit(l, R.Irr, 0x61)));
        W(1, R.IcrLow, (3u << 18) | 0x62);
        Assert.Equal([true, false, true, true], _l.Select(l => Bit(l, R.Irr, 0x62)).ToArray());
    }

    [Fact]
    public void LowestPriorityPicksTheLowestTprOrTheFocus()
    {
        for (int i = 0; i < 4; i++) W(i, R.Ldr, 1u << (24 + i));
        uint[] tpr = [0x30, 0x20, 0x10, 0x40];
        for (int i = 0; i < 4; i++) W(i, R.Tpr, tpr[i]);
        SendIpi(0, 0x0F, (1u << 11) | (1u << 8) | 0x70);
        Assert.Equal([false, false, true, false], _l.Select(l => Bit(l, R.Irr, 0x70)).ToArray());
        // APIC 3 already holds 0x71: it is the focus processor and wins despite its priority.
        _l[3].SetIrr(0x71, false);
        SendIpi(0, 0x0F, (1u << 11) | (1u << 8) | 0x71);
        Assert.Equal([false, false, false, true], _l.Select(l => Bit(l, R.Irr, 0x71)).ToArray());
    }

    [Fact]
    public void IllegalVectorOnSendIsLatchedIntoEsrOnWriteAndRaisesErrorLvt()
    {
        W(0, R.LvtError, 0xFE);
        SendIpi(0, 1, 0x05);
        Assert.False(Bit(_l[1], R.Irr, 0x05));
        Assert.Equal(0u, Rd(0, R.Esr)); // not visible until ESR is written
        W(0, R.Esr, 0);
        Assert.Equal(R.EsrSendIllegalVector, Rd(0, R.Esr));
        Assert.True(Bit(_l[0], R.Irr, 0xFE));
        W(0, R.Esr, 0);
        Assert.Equal(0u, Rd(0, R.Esr));
    }

    [Fact]
    public void IllegalVectorOnReceiveIsRefused()
    {
        Assert.False(_l[2].SetIrr(3, false));
        W(2, R.Esr, 0);
        Assert.Equal(R.EsrReceiveIllegalVector, Rd(2, R.Esr));
        // An LVT carrying vector 0-15 produces the same error when it fires.
        W(1, R.LvtLint0, 0x0A);
        _l[1].AssertLocalInterrupt((int)LapicLvt.Lint0);
        W(1, R.Esr, 0);
        Assert.Equal(R.EsrReceiveIllegalVector, Rd(1, R.Esr));
    }

    [Fact]
    public void TaskAndProcessorPriorityMaskInterrupts()
    {
        var l = _l[0];
        l.SetIrr(0x45, false);
        W(0, R.Tpr, 0x50);
        Assert.False(l.TryGetPendingInterrupt(out _));
        Assert.Equal(0x50u, Rd(0, R.Ppr));
        W(0, R.Tpr, 0x30);
        Assert.True(l.TryGetPendingInterrupt(out int v));
        Assert.Equal(0x45, v);
        l.AcknowledgeInterrupt(0x45);
        Assert.True(Bit(l, R.Isr, 0x45));
        Assert.False(Bit(l, R.Irr, 0x45));
        Assert.Equal(0x40u, Rd(0, R.Ppr));
        l.SetIrr(0x41, false); // same class as the one in service: held
        Assert.False(l.TryGetPendingInterrupt(out _));
        l.SetIrr(0x51, false);
        Assert.True(l.TryGetPendingInterrupt(out v));
        Assert.Equal(0x51, v);
        W(0, R.Eoi, 0);
        Assert.Equal(0x30u, Rd(0, R.Ppr));
        Assert.True(l.TryGetPendingInterrupt(out v));
        Assert.Equal(0x51, v);
    }

    [Fact]
    public void EoiOfALevelTriggeredVectorNotifiesTheIoapic()
    {
        var l = _l[1];
        l.SetIrr(0x60, levelTriggered: true);
        l.SetIrr(0x61, levelTriggered: false);
        Assert.True(Bit(l, R.Tmr, 0x60));
        l.AcknowledgeInterrupt(0x61);
        W(1, R.Eoi, 0);
        Assert.Empty(_eois);
        l.AcknowledgeInterrupt(0x60);
        W(1, R.Eoi, 0);
        Assert.Equal([0x60], _eois);
    }

    [Fact]
    public void EoiBroadcastSuppressionWhenOffered()
    {
        var plain = new Vlapic(7, false, _clock, _bus);
        plain.MmioWrite(R.Svr, 4, 0x11FF);
        Assert.Equal(0x1FFul, plain.MmioRead(R.Svr, 4)); // bit 12 reserved without the capability
        var l = new Vlapic(8, false, _clock, _bus, eoiBroadcastSuppression: true);
        Assert.NotEqual(0ul, l.MmioRead(R.Version, 4) & (1 << 24));
        l.MmioWrite(R.Svr, 4, 0x11FF);
        l.SetIrr(0x60, true);
        l.AcknowledgeInterrupt(0x60);
        l.MmioWrite(R.Eoi, 4, 0);
        Assert.Empty(_eois);
    }

    [Fact]
    public void SoftwareDisableMasksLvtsAndRefusesFixedInterrupts()
    {
        W(0, R.LvtTimer, 0x40);
        W(0, R.Svr, 0xFF);
        Assert.Equal(0x10040u, Rd(0, R.LvtTimer));
        W(0, R.LvtTimer, 0x40);
        Assert.Equal(0x10040u, Rd(0, R.LvtTimer)); // cannot unmask while disabled
        Assert.False(_l[0].SetIrr(0x40, false));
        // INIT, SIPI and NMI are still accepted.
        SendIpi(1, 0, 4u << 8);
        Assert.Equal(1, _cpu[0].Nmis);
    }

    [Fact]
    public void ReservedLvtBitsAreIgnored()
    {
        W(0, R.LvtError, 0xFFFF_FFFF);
        Assert.Equal(0x100FFu, Rd(0, R.LvtError));
        W(0, R.LvtLint0, 0xFFFF_FFFF);
        Assert.Equal(0x1A7FFu, Rd(0, R.LvtLint0));
        W(0, R.LvtThermal, 0xFFFF_FFFF);
        Assert.Equal(0x107FFu, Rd(0, R.LvtThermal));
    }

    [Fact]
    public void InitSipiAndNmiReachTheTargetVcpu()
    {
        W(2, R.Tpr, 0x20);
        SendIpi(0, 2, (5u << 8) | (1u << 14)); // INIT assert
        Assert.Equal(1, _cpu[2].Inits);
        Assert.Equal(0u, Rd(2, R.Tpr));          // INIT reset the APIC
        Assert.Equal(0xFFu, Rd(2, R.Svr));
        Assert.Equal(2u << 24, Rd(2, R.Id));     // but not its ID
        SendIpi(0, 2, (5u << 8) | (1u << 15));   // INIT level de-assert: ignored
        Assert.Equal(1, _cpu[2].Inits);
        SendIpi(0, 2, (6u << 8) | 0x9A);         // SIPI
        Assert.Equal([0x9A], _cpu[2].Sipis);
        SendIpi(0, 3, 4u << 8);                  // NMI
        Assert.Equal(1, _cpu[3].Nmis);
        SendIpi(0, 3, 2u << 8);                  // SMI: ignored
        Assert.Equal(1, _cpu[3].Nmis);
    }

    [Fact]
    public void LocalInterruptPinsExtIntAndNmi()
    {
        W(0, R.LvtLint0, 7u << 8);   // ExtINT, unmasked
        W(0, R.LvtLint1, 4u << 8);   // NMI
        Assert.True(_l[0].AssertLocalInterrupt((int)LapicLvt.Lint0));
        Assert.True(_l[0].AssertLocalInterrupt((int)LapicLvt.Lint1));
        Assert.Equal(1, _cpu[0].ExtInts);
        Assert.Equal(1, _cpu[0].Nmis);
        W(0, R.LvtThermal, 0x77);
        _l[0].AssertLocalInterrupt((int)LapicLvt.Thermal);
        Assert.True(Bit(_l[0], R.Irr, 0x77));
        Assert.False(_l[0].AssertLocalInterrupt(7));
        Assert.False(_l[0].AssertLocalInterrupt(-1));
    }

    [Fact]
    public void X2ApicMsrRules()
    {
        var l = _l[1];
        ulong xapic = l.ApicBase;
        Assert.False(l.ReadMsr(0x802, out _));                                  // not in x2APIC mode yet
        Assert.True(l.WriteMsr(R.MsrApicBase, xapic | R.BaseX2Apic));
        Assert.True(l.X2ApicMode);
        Assert.True(l.ReadMsr(0x802, out ulong id)); Assert.Equal(1ul, id);
        Assert.True(l.ReadMsr(0x80D, out ulong ldr)); Assert.Equal(0x2ul, ldr); // cluster 0, bit 1
        Assert.False(l.ReadMsr(0x80E, out _));                                  // no DFR
        Assert.False(l.ReadMsr(0x80B, out _));                                  // EOI is write-only
        Assert.False(l.ReadMsr(0x83F, out _));                                  // SELF IPI is write-only
        Assert.False(l.WriteMsr(0x802, 5));                                     // ID read-only
        Assert.False(l.WriteMsr(0x80D, 5));                                     // LDR read-only
        Assert.False(l.WriteMsr(0x80B, 1));                                     // EOI must be 0
        Assert.False(l.WriteMsr(0x828, 1));                                     // ESR must be written with 0
        Assert.False(l.WriteMsr(0x808, 1ul << 32));                             // upper half reserved
        Assert.False(l.ReadMsr(0x831, out _));                                  // no ICR high in x2APIC
        Assert.False(l.WriteMsr(0x830, 1u << 16 | 0x40));                       // ICR reserved bit
        Assert.Equal(ulong.MaxValue >> 32, l.MmioRead(R.Tpr, 4));               // MMIO page not decoded
        Assert.True(l.WriteMsr(0x83F, 0x66));
        Assert.True(Bit2(l, 0x66));
        // 64-bit ICR with a 32-bit destination: physical to APIC 3.
        Assert.True(l.WriteMsr(0x830, (3ul << 32) | 0x67));
        Assert.True(_l[3].TryGetPendingInterrupt(out int v));
        Assert.Equal(0x67, v);
        Assert.True(l.ReadMsr(0x830, out ulong icr)); Assert.Equal((3ul << 32) | 0x67, icr);
        // Illegal transitions.
        Assert.False(l.WriteMsr(R.MsrApicBase, xapic));                         // x2APIC -> xAPIC
        Assert.True(l.WriteMsr(R.MsrApicBase, xapic & ~(R.BaseEnable | R.BaseX2Apic)));
        Assert.False(l.WriteMsr(R.MsrApicBase, xapic | R.BaseX2Apic));          // disabled -> x2APIC
        Assert.False(l.WriteMsr(R.MsrApicBase, (xapic & ~R.BaseEnable) | R.BaseX2Apic)); // EXTD without EN
        Assert.False(l.WriteMsr(R.MsrApicBase, xapic | 1));                     // reserved bit
        Assert.True(l.WriteMsr(R.MsrApicBase, xapic));
        Assert.Equal(0xFFu, (uint)l.MmioRead(R.Svr, 4)); // re-enabled in the power-up state
    }

    private static bool Bit2(Vlapic l, int vector) => l.ReadMsr((uint)(0x820 + (vector >> 5)), out ulong w) && (w & (1ul << (vector & 31))) != 0;

    [Fact]
    public void X2ApicLogicalClusterDestination()
    {
        foreach (var l in _l) Assert.True(l.WriteMsr(R.MsrApicBase, l.ApicBase | R.BaseX2Apic));
        // x2APIC logical ID: cluster = id >> 4, member bit = 1 << (id & 15). APICs 0-3 are cluster 0, bits 0-3.
        Assert.True(_l[0].WriteMsr(0x830, (0x0000_000Aul << 32) | (1u << 11) | 0x68));
        Assert.Equal([false, true, false, true], _l.Select(l => Bit2(l, 0x68)).ToArray());
        Assert.True(_l[0].WriteMsr(0x830, (0xFFFF_FFFFul << 32) | 0x69)); // broadcast
        Assert.All(_l, l => Assert.True(Bit2(l, 0x69)));
    }

    [Fact]
    public void MsiAndIoapicMessagesAreResolvedByTheBus()
    {
        _bus.DeliverMsi(0xFEE0_2000, 0x0000_4079); // dest 2, physical, fixed, vector 0x79
        Assert.True(_l[2].TryGetPendingInterrupt(out int v));
        Assert.Equal(0x79, v);
        _bus.DeliverInterrupt(1, false, LapicDeliveryMode.Fixed, 0x7A, levelTriggered: true);
        Assert.True(Bit(_l[1], R.Tmr, 0x7A));
        _bus.DeliverMsi(0x1234_0000, 0x41); // not an interrupt address
        Assert.False(_l[0].TryGetPendingInterrupt(out _));
    }

    [Fact]
    public void KvmStateHasKvmsLayout()
    {
        W(2, R.Tpr, 0x20);
        W(2, R.LvtTimer, 0x40);
        W(2, R.TimerInitialCount, 1000);
        _clock.Advance(250);
        var page = new LapicState();
        _l[2].ToKvmState(page.Bytes);
        Assert.Equal(2u << 24, page[R.Id]);
        Assert.Equal(0x0006_0014u, page[R.Version]);
        Assert.Equal(0x20u, page[R.Tpr]);
        Assert.Equal(0x1FFu, page[R.Svr]);
        Assert.Equal(1000u, page[R.TimerInitialCount]);
        Assert.Equal(875u, page[R.TimerCurrentCount]); // divide by 2: 125 ticks gone
    }

    [Fact]
    public void KvmStateRoundTripIsLossless()
    {
        var a = _l[1];
        W(1, R.Tpr, 0x30);
        W(1, R.Ldr, 0x0400_0000);
        W(1, R.Dfr, 0x0FFF_FFFF);
        W(1, R.LvtLint0, 0x0000_8733);
        W(1, R.LvtError, 0xEE);
        W(1, R.LvtCmci, 0x1_0099);
        W(1, R.TimerDivide, 0x9);
        W(1, R.LvtTimer, (1u << 17) | 0x44);
        W(1, R.TimerInitialCount, 123_456);
        a.SetIrr(0x90, true);
        a.SetIrr(0xA1, false);
        a.AcknowledgeInterrupt(0xA1);
        a.SetIrr(0xB2, true);
        SendIpi(1, 3, 0x02);       // illegal vector: an error not yet latched
        W(1, R.IcrHigh, 0x0300_0000);
        _clock.Advance(77_777);

        var p1 = new byte[1024];
        a.ToKvmState(p1);
        var b = new Vlapic(1, false, _clock, new LapicBus());
        b.FromKvmState(p1);
        var p2 = new byte[1024];
        b.ToKvmState(p2);
        Assert.Equal(p1, p2);
        // Both keep running identically.
        _clock.Advance(1_000_000);
        a.ToKvmState(p1);
        b.ToKvmState(p2);
        Assert.Equal(p1, p2);
        a.MmioWrite(R.Esr, 4, 0);
        b.MmioWrite(R.Esr, 4, 0);
        Assert.Equal(R.EsrSendIllegalVector, (uint)b.MmioRead(R.Esr, 4));
        Assert.Equal(a.MmioRead(R.Esr, 4), b.MmioRead(R.Esr, 4));
    }

    [Fact]
    public void AOneShotCountdownThatEndedWhileTheClockWasHeldFiresAfterTheRestore()
    {
        W(0, R.TimerDivide, 0xB);   // divide by 1
        W(0, R.LvtTimer, 0x41);     // one-shot, vector 0x41
        W(0, R.TimerInitialCount, 1000);
        _clock.AdvanceHeld(5000);   // past the end, but the checkpoint holds timer delivery
        var s = _l[0].Save();
        var b = new Vlapic(0, true, _clock, new LapicBus());
        b.Restore(s);
        Assert.False(b.TryGetPendingInterrupt(out _));
        _clock.Advance(10);
        Assert.True(b.TryGetPendingInterrupt(out int v));
        Assert.Equal(0x41, v);
    }

    [Fact]
    public void SnapshotRoundTripKeepsX2ApicModeAndTscDeadline()
    {
        var a = _l[3];
        a.WriteMsr(R.MsrApicBase, a.ApicBase | R.BaseX2Apic);
        a.WriteMsr(0x832, (2u << 17) | 0x45);
        a.WriteMsr(R.MsrTscDeadline, 10_000);
        a.WriteMsr(0x808, 0x10);
        var s = a.Save();
        var b = new Vlapic(3, false, _clock, new LapicBus());
        b.Restore(s);
        Assert.True(b.X2ApicMode);
        Assert.True(b.ReadMsr(0x802, out ulong id)); Assert.Equal(3ul, id);
        Assert.True(b.ReadMsr(R.MsrTscDeadline, out ulong d)); Assert.Equal(10_000ul, d);
        Assert.Equal(s.Page, b.Save().Page);
        _clock.Advance(10_000);
        Assert.True(b.TryGetPendingInterrupt(out int v));
        Assert.Equal(0x45, v);
    }
}
