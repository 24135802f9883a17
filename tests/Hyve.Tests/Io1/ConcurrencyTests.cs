// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io1;

public class ConcurrencyTests
{
    /// <summary>An APIC that EOIs level interrupts right away from the delivering thread, as a busy guest would.</summary>
    private sealed class EoiApic : IApicBus
    {
        public Vioapic? Ioapic;
        public int Count;
        public void DeliverMsi(ulong address, ulong data)
        {
            Interlocked.Increment(ref Count);
            if ((data & 1u << 15) != 0 && Count % 3 == 0) Ioapic!.EndOfInterrupt((int)(data & 0xff));
        }
    }

    [Fact]
    public void VcpuThreadsAndTheTimerThreadDoNotDeadlock()
    {
        using var clock = new TimerQueue();
        var apic = new EoiApic();
        var pic = new Vatpic();
        var io = new Vioapic(apic);
        apic.Ioapic = io;
        var router = new InterruptRouter(pic, io, apic);
        var pit = new Vatpit(clock, router);
        var bus = new PortBus();
        pic.RegisterPorts(bus);
        pit.RegisterPorts(bus);
        // The "CPU" acknowledges from the INTR notification, re-entering the PIC from its own callback.
        pic.IntrChanged += () => { if (pic.IntrAsserted) pic.InterruptAcknowledge(); };
        foreach (var (port, v) in new (ushort, uint)[] { (0x20, 0x11), (0x21, 0x20), (0x21, 4), (0x21, 3), (0xA0, 0x11), (0xA1, 0x28), (0xA1, 2), (0xA1, 3) })
            bus.Write(port, 1, v);
        for (int pin = 0; pin < 24; pin++)
        {
            io.MmioWrite(0, 4, (ulong)(0x10 + 2 * pin));
            io.MmioWrite(0x10, 4, (uint)(0x30 + pin) | (pin >= 16 ? 1u << 15 : 0u));
        }
        bus.Write(0x43, 1, 0x34);
        bus.Write(0x40, 1, 2);
        bus.Write(0x40, 1, 0);                             // the fastest rate the PIT allows
        var stop = DateTime.UtcNow.AddMilliseconds(400);
        var threads = Enumerable.Range(0, 3).Select(id => new Thread(() =>
        {
            var r = new Random(id);
            while (DateTime.UtcNow < stop)
            {
                int n = r.Next(16, 24);
                router.IoapicAssert(n);
                bus.Read(0x40, 1);
                bus.Write(0x20, 1, 0x20);
                router.IsaPulse(r.Next(1, 16));
                router.IoapicDeassert(n);
                bus.Read(0x61, 1);
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        foreach (var t in threads) Assert.True(t.Join(10_000), "a vCPU thread is stuck");
        Assert.True(apic.Count > 0);
        pit.Reset();
    }
}
