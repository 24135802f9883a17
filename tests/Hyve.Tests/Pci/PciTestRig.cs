// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Pci;
using Hyve.Vmm;

namespace Hyve.Tests.Pci;

/// <summary>Interrupt lines that record every edge, with current levels.</summary>
public sealed class RecordingIrq : IIrqLines
{
    public readonly List<string> Log = [];
    public readonly List<(ulong Address, ulong Data)> Msis = [];
    public readonly int[] Ioapic = new int[64];
    public readonly int[] Isa = new int[16];

    public void IsaAssert(int irq) { Isa[irq]++; Log.Add($"isa+{irq}"); }
    public void IsaDeassert(int irq) { Isa[irq]--; Log.Add($"isa-{irq}"); }
    public void IsaPulse(int irq) => Log.Add($"isa^{irq}");
    public void PicAssert(int irq) { Isa[irq]++; Log.Add($"pic+{irq}"); }
    public void PicDeassert(int irq) { Isa[irq]--; Log.Add($"pic-{irq}"); }
    public void IoapicAssert(int pin) { Ioapic[pin]++; Log.Add($"io+{pin}"); }
    public void IoapicDeassert(int pin) { Ioapic[pin]--; Log.Add($"io-{pin}"); }
    public void IoapicPulse(int pin) => Log.Add($"io^{pin}");
    public void Msi(ulong address, ulong data) => Msis.Add((address, data));
}

/// <summary>An MMIO/I/O BAR handler that remembers accesses and answers with its offset.</summary>
public sealed class RecordingBar : IMmioDevice
{
    public readonly List<(ulong Offset, int Size, ulong Value)> Writes = [];
    public ulong MmioRead(ulong offset, int size) => 0xab00 + offset;
    public void MmioWrite(ulong offset, int size, ulong value) => Writes.Add((offset, size, value));
}

/// <summary>A plain test function: vendor 0x1af4, device 0x1000 + tag, class 0xff.</summary>
public sealed class TestFunction(ushort device = 0x1000) : PciDevice(0x1af4, device, 0xff, 0x00, 0, 0x07);

/// <summary>Ports, MMIO, 16 MiB of memory, recording interrupts and a PCI host on them.</summary>
public sealed class PciTestRig : IDisposable
{
    public readonly PortBus Ports = new();
    public readonly MmioBus Mmio = new();
    public readonly GuestMemory Memory = new(16ul << 20);
    public readonly RecordingIrq Irq = new();
    public readonly PciBus Bus;

    public PciTestRig(MsiRouteTable? msiRoutes = null) => Bus = new PciBus(Ports, Mmio, Memory, () => Irq) { MsiRoutes = msiRoutes };

    /// <summary>Mechanism #1 read.</summary>
    public uint Cf8Read(int bus, int slot, int func, int offset, int size)
    {
        Ports.Write(0xcf8, 4, 0x8000_0000u | (uint)(bus << 16 | slot << 11 | func << 8 | (offset & 0xfc)));
        return Ports.Read((ushort)(0xcfc + (offset & 3)), size);
    }

    /// <summary>Mechanism #1 write.</summary>
    public void Cf8Write(int bus, int slot, int func, int offset, int size, uint value)
    {
        Ports.Write(0xcf8, 4, 0x8000_0000u | (uint)(bus << 16 | slot << 11 | func << 8 | (offset & 0xfc)));
        Ports.Write((ushort)(0xcfc + (offset & 3)), size, value);
    }

    /// <summary>ECAM read.</summary>
    public ulong EcamRead(int bus, int slot, int func, int offset, int size) =>
        Mmio.Read(PciBus.DefaultEcamBase + (ulong)(bus << 20 | slot << 15 | func << 12 | offset), size);

    /// <summary>ECAM write.</summary>
    public void EcamWrite(int bus, int slot, int func, int offset, int size, ulong value) =>
        Mmio.Write(PciBus.DefaultEcamBase + (ulong)(bus << 20 | slot << 15 | func << 12 | offset), size, value);

    public void Dispose() => Memory.Dispose();
}
