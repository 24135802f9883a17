// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Xunit;

namespace Hyve.Tests.Io1;

/// <summary>Random guest accesses: a device model never throws, whatever the guest does.</summary>
public class FuzzTests
{
    private static readonly int[] Sizes = [1, 2, 4, 8, 0, 3, -1];

    private static int Size(Random r) => r.Next(10) < 8 ? Sizes[r.Next(3)] : Sizes[r.Next(Sizes.Length)];

    [Fact]
    public void Pit()
    {
        var r = new Random(1);
        var clock = new ManualClock();
        var irq = new RecordingIrq();
        var pit = new Vatpit(clock, irq);
        for (int i = 0; i < 600_000; i++)
        {
            ushort port = r.Next(4) == 0 ? (ushort)r.Next(65536) : (ushort)(r.Next(2) == 0 ? 0x40 + r.Next(5) : 0x61);
            int size = Size(r);
            if (r.Next(2) == 0) pit.PortWrite(port, size, (uint)r.Next());
            else pit.PortRead(port, size);
            if (r.Next(50) == 0) clock.Advance(r.Next(10) == 0 ? r.Next(10_000_000) : r.Next(100_000));
            if (r.Next(100_000) == 0) pit.Reset();
        }
    }

    [Fact]
    public void Pic()
    {
        var r = new Random(2);
        var pic = new Vatpic();
        int[] ports = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1];
        for (int i = 0; i < 700_000; i++)
        {
            int op = r.Next(10);
            ushort port = r.Next(8) == 0 ? (ushort)r.Next(65536) : (ushort)ports[r.Next(ports.Length)];
            if (op < 4) pic.PortWrite(port, Size(r), (uint)r.Next());
            else if (op < 6) pic.PortRead(port, Size(r));
            else if (op == 6) pic.Assert(r.Next(-2, 18));
            else if (op == 7) pic.Deassert(r.Next(-2, 18));
            else if (op == 8) pic.Pulse(r.Next(-2, 18));
            else
            {
                if (pic.TryGetPendingVector(out int v))
                    Assert.Equal(v, pic.InterruptAcknowledge());
                else pic.InterruptAcknowledge();
                pic.SetTriggerMode(r.Next(-1, 17), r.Next(2) == 0);
                pic.Acknowledge(r.Next(-5, 300));
            }
        }
    }

    [Fact]
    public void Ioapic()
    {
        var r = new Random(3);
        var apic = new NullApic();
        var io = new Vioapic(apic);
        for (int i = 0; i < 700_000; i++)
        {
            int op = r.Next(10);
            ulong offset = r.Next(4) == 0 ? (ulong)r.NextInt64() : (ulong)(r.Next(2) * 0x10 + (r.Next(4) == 0 ? r.Next(8) : 0));
            if (op < 3) io.MmioWrite(offset, Size(r), (ulong)r.NextInt64());
            else if (op < 5) io.MmioWrite(0, 4, (ulong)r.Next(0x60));
            else if (op < 6) io.MmioRead(offset, Size(r));
            else if (op == 6) io.Assert(r.Next(-2, 40));
            else if (op == 7) io.Deassert(r.Next(-2, 40));
            else if (op == 8) io.Pulse(r.Next(-2, 40));
            else io.EndOfInterrupt(r.Next(-5, 300));
        }
        Assert.True(apic.Count > 0);
    }

    [Fact]
    public void PmTimerRouterAndExceptions()
    {
        var r = new Random(4);
        var clock = new ManualClock();
        var pm = new Vpmtmr(clock);
        var apic = new NullApic();
        var router = new InterruptRouter(new Vatpic(), new Vioapic(apic), apic);
        var events = new PendingEvents();
        for (int i = 0; i < 400_000; i++)
        {
            pm.PortRead((ushort)r.Next(0x400, 0x410), Size(r));
            pm.PortWrite((ushort)r.Next(65536), Size(r), (uint)r.Next());
            int line = r.Next(-3, 40);
            switch (r.Next(7))
            {
                case 0: router.IsaAssert(line); break;
                case 1: router.IsaDeassert(line); break;
                case 2: router.IsaPulse(line); break;
                case 3: router.IoapicAssert(line); break;
                case 4: router.IoapicDeassert(line); break;
                case 5: router.IoapicPulse(line); break;
                default: router.SetIsaTriggerMode(line, r.Next(2) == 0); break;
            }
            ExceptionNesting.Combine(r.Next(-10, 300), r.Next(-10, 300));
            events.RaiseException(r.Next(-2, 40), (uint)r.Next());
            events.TryTake(r.Next(2) == 0, r.Next(2) == 0, out _);
            if (r.Next(100) == 0) clock.Advance(r.Next(1_000_000));
        }
    }

    private sealed class NullApic : IApicBus
    {
        public int Count;
        public void DeliverMsi(ulong address, ulong data) => Count++;
    }
}

/// <summary>Corrupt snapshot data is a host error (an exception from Restore), never a device that later throws.</summary>
public class CorruptStateTests
{
    private static void RestoreGarbage(int version, Action<BinaryReader> restore, Action exercise, int seed)
    {
        var r = new Random(seed);
        for (int i = 0; i < 2000; i++)
        {
            var bytes = new byte[r.Next(0, 600)];
            r.NextBytes(bytes);
            if (bytes.Length >= 4 && r.Next(4) != 0) BitConverter.GetBytes(version).CopyTo(bytes, 0);
            try { restore(new BinaryReader(new MemoryStream(bytes))); }
            catch (InvalidDataException) { }
            catch (EndOfStreamException) { }
            exercise();
        }
    }

    // A section of random bytes (sometimes the right length) goes through the inventory's checks into the device.
    private static void LoadGarbage(IDeviceState device, Action exercise, int seed)
    {
        var r = new Random(seed);
        int length = StateCopy.Save(device).Data.Length;
        for (int i = 0; i < 2000; i++)
        {
            var bytes = new byte[r.Next(4) == 0 ? r.Next(0, 600) : length];
            r.NextBytes(bytes);
            try { StateCopy.Load(device, new StateSection(device.StateName, "0", device.StateVersion, device.OldestStateVersion, bytes)); }
            catch (InvalidDataException) { }
            exercise();
        }
    }

    [Fact]
    public void Devices()
    {
        var clock = new ManualClock();
        var apic = new RecordingApic();
        var pic = new Vatpic();
        var io = new Vioapic(apic);
        var pit = new Vatpit(clock, new RecordingIrq());
        var pm = new Vpmtmr(clock);
        var ev = new PendingEvents();
        var r = new Random(9);
        void Exercise()
        {
            for (int i = 0; i < 20; i++)
            {
                pic.PortWrite((ushort)(0x20 + r.Next(2) * 0x80 + r.Next(2)), 1, (uint)r.Next(256));
                pic.InterruptAcknowledge();
                pic.Pulse(r.Next(16));
                io.MmioWrite(0, 4, (ulong)r.Next(0x50));
                io.MmioWrite(0x10, 4, (ulong)r.Next());
                io.EndOfInterrupt(r.Next(256));
                io.Assert(r.Next(32));
                pit.PortWrite((ushort)(0x40 + r.Next(4)), 1, (uint)r.Next(256));
                pit.PortRead((ushort)(0x40 + r.Next(3)), 1);
                pit.PortRead(0x61, 1);
                pm.PortRead(0x408, 4);
                ev.TryTake(true, false, out _);
            }
            clock.Advance(r.Next(1_000_000));
        }
        LoadGarbage(pic, Exercise, 1);
        LoadGarbage(io, Exercise, 2);
        LoadGarbage(pit, Exercise, 3);
        LoadGarbage(pm, Exercise, 4);
        RestoreGarbage(PendingEvents.StateVersion, ev.Restore, Exercise, 5);
    }
}
