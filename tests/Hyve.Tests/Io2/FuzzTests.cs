// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io2;

/// <summary>Hostile-guest fuzzing: random accesses of any offset, width and value never throw out of a device.</summary>
public class FuzzTests
{
    private static readonly int[] Widths = [1, 2, 3, 4, 5, 8, 0, -1, 16];

    [Fact]
    public void RtcSurvivesRandomPortAccesses()
    {
        var rng = new Random(1);
        var clock = new ManualClock();
        var irq = new NullIrq();
        var r = new Vrtc(clock, irq, 1_700_000_000);
        for (int i = 0; i < 2_000_000; i++)
        {
            ushort port = (ushort)(rng.Next(4) == 0 ? rng.Next(65536) : 0x70 + rng.Next(2));
            int size = rng.Next(8) == 0 ? Widths[rng.Next(Widths.Length)] : 1;
            if (rng.Next(2) == 0) r.PortWrite(port, size, (uint)rng.Next());
            else r.PortRead(port, size);
            if ((i & 255) == 0) clock.Advance(rng.Next(50_000_000));
            if ((i & 4095) == 0) { r.TryNvramWrite(rng.Next(-5, 140), (byte)rng.Next()); r.GetTime(); }
            if ((i & 65535) == 0) r.Reset();
        }
        StateCopy.Copy(r, r);
    }

    [Fact]
    public void HpetSurvivesRandomMmioAccesses()
    {
        var rng = new Random(2);
        var clock = new ManualClock();
        var h = new Vhpet(clock, new NullIrq());
        for (int i = 0; i < 2_000_000; i++)
        {
            // Bias towards real registers, with aligned sizes most of the time.
            ulong offset = rng.Next(3) switch
            {
                0 => (ulong)rng.NextInt64(),
                1 => (ulong)rng.Next(0x400) & ~7ul,
                _ => (ulong)rng.Next(0x500),
            };
            int size = rng.Next(3) == 0 ? Widths[rng.Next(Widths.Length)] : (rng.Next(2) == 0 ? 4 : 8);
            ulong value = rng.Next(4) == 0 ? 1ul : (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40);
            if (rng.Next(2) == 0) h.MmioWrite(offset, size, value);
            else h.MmioRead(offset, size);
            if ((i & 127) == 0) clock.Advance(rng.Next(2_000_000));
            if ((i & 65535) == 0) h.Reset();
        }
        StateCopy.Copy(h, h);
    }

    [Fact]
    public void LapicSurvivesRandomMmioAndMsrAccesses()
    {
        var rng = new Random(3);
        var clock = new ManualClock();
        var bus = new LapicBus();
        var lapics = new Vlapic[3];
        for (int i = 0; i < lapics.Length; i++) { lapics[i] = new Vlapic((uint)i, i == 0, clock, bus, new RecordingCpu()); bus.Add(lapics[i]); }
        bus.EoiHandler = _ => { };
        var page = new byte[1024];
        for (int i = 0; i < 3_000_000; i++)
        {
            var l = lapics[rng.Next(lapics.Length)];
            uint value = rng.Next(3) == 0 ? (uint)rng.Next(256) : (uint)rng.NextInt64();
            switch (rng.Next(8))
            {
                case 0:
                case 1:
                    l.MmioWrite((ulong)rng.Next(0x1100) & (rng.Next(2) == 0 ? ~0xFul : ~0ul), rng.Next(4) == 0 ? Widths[rng.Next(Widths.Length)] : 4, value);
                    break;
                case 2:
                    l.MmioRead((ulong)(rng.Next(4) == 0 ? rng.NextInt64() : rng.Next(0x1100)), Widths[rng.Next(Widths.Length)]);
                    break;
                case 3:
                    l.WriteMsr((uint)(0x800 + rng.Next(0x100)), rng.Next(4) == 0 ? (ulong)rng.NextInt64() : value);
                    break;
                case 4:
                    l.ReadMsr((uint)(rng.Next(8) == 0 ? rng.Next() : 0x800 + rng.Next(0x100)), out _);
                    break;
                case 5:
                    uint msr = rng.Next(2) == 0 ? LapicRegisters.MsrApicBase : LapicRegisters.MsrTscDeadline;
                    ulong v = rng.Next(3) == 0 ? (ulong)rng.NextInt64() : 0xFEE0_0000ul | ((ulong)(uint)rng.Next(4) << 10);
                    l.WriteMsr(msr, v);
                    break;
                case 6:
                    l.SetIrr(rng.Next(-10, 300), rng.Next(2) == 0);
                    if (l.TryGetPendingInterrupt(out int vec)) l.AcknowledgeInterrupt(vec);
                    l.AssertLocalInterrupt(rng.Next(-2, 9));
                    break;
                default:
                    if ((i & 1023) == 7) { l.ToKvmState(page); rng.NextBytes(page.AsSpan(0, rng.Next(1024))); l.FromKvmState(page); }
                    else bus.DeliverMsi(0xFEE0_0000ul | ((ulong)(uint)rng.Next(256) << 12) | (uint)rng.Next(16), (uint)rng.Next(0x10000));
                    break;
            }
            if ((i & 127) == 0) clock.Advance(rng.Next(1_000_000));
            if ((i & 65535) == 0) l.PowerOnReset();
        }
        foreach (var l in lapics) l.Restore(l.Save());
    }

    private sealed class NullIrq : IIrqLines
    {
        public void IsaAssert(int irq) { }
        public void IsaDeassert(int irq) { }
        public void PicAssert(int irq) { }
        public void PicDeassert(int irq) { }
        public void IsaPulse(int irq) { }
        public void IoapicAssert(int pin) { }
        public void IoapicDeassert(int pin) { }
        public void IoapicPulse(int pin) { }
        public void Msi(ulong address, ulong data) { }
    }
}
