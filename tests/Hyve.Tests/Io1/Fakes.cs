// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;

namespace Hyve.Tests.Io1;

/// <summary>Records interrupt messages.</summary>
internal sealed class RecordingApic : IApicBus
{
    public readonly List<(ulong Address, uint Data)> Messages = [];
    public void DeliverMsi(ulong address, ulong data)
    {
        lock (Messages) Messages.Add((address, (uint)data));
    }
}

/// <summary>Counts IRQ line activity.</summary>
internal sealed class RecordingIrq : IIrqLines
{
    public readonly int[] IsaPulses = new int[16];
    public int Other;
    public void IsaAssert(int irq) => Other++;
    public void IsaDeassert(int irq) => Other++;
    public void PicAssert(int irq) => Other++;
    public void PicDeassert(int irq) => Other++;
    public void IsaPulse(int irq) { if ((uint)irq < 16) IsaPulses[irq]++; }
    public void IoapicAssert(int pin) => Other++;
    public void IoapicDeassert(int pin) => Other++;
    public void IoapicPulse(int pin) => Other++;
    public void Msi(ulong address, ulong data) => Other++;
}

internal static class ClockExt
{
    /// <summary>Moves a manual clock to the first nanosecond of PIT tick <paramref name="tick"/>.</summary>
    public static void ToPitTick(this ManualClock c, long tick)
    {
        long target = Vatpit.NsOfTick(tick);
        if (target > c.NowNs) c.Advance(target - c.NowNs);
    }

    public static void ToNs(this ManualClock c, long ns)
    {
        if (ns > c.NowNs) c.Advance(ns - c.NowNs);
    }
}
