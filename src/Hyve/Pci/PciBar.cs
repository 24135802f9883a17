// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;

namespace Hyve.Pci;

/// <summary>The kind of a base address register.</summary>
public enum PciBarKind
{
    /// <summary>I/O space (BAR bit 0 set).</summary>
    Io,
    /// <summary>32-bit memory space.</summary>
    Memory32,
    /// <summary>64-bit memory space (uses two BAR registers).</summary>
    Memory64,
    /// <summary>The expansion ROM BAR at 0x30.</summary>
    Rom,
}

/// <summary>
/// One BAR of a function: its kind, power-of-two size and current base, and what answers inside it:
/// an offset-based handler (MMIO or I/O, same interface so a range can move) or a device-memory segment
/// mapped straight into the guest.
/// </summary>
public sealed class PciBar
{
    internal PciBar(int index, PciBarKind kind, ulong size, bool prefetchable, IMmioDevice? handler, MemSegment? segment, MemProt prot)
    {
        Index = index; Kind = kind; Size = size; Prefetchable = prefetchable; Handler = handler; Segment = segment; Prot = prot;
    }

    /// <summary>BAR number 0-5, or 6 for the expansion ROM.</summary>
    public int Index { get; }
    /// <summary>I/O, 32-bit memory, 64-bit memory or ROM.</summary>
    public PciBarKind Kind { get; }
    /// <summary>Size in bytes, a power of two.</summary>
    public ulong Size { get; }
    /// <summary>Prefetchable memory (BAR bit 3).</summary>
    public bool Prefetchable { get; }
    /// <summary>The handler for accesses, with offsets relative to the BAR base (null for a devmem BAR).</summary>
    public IMmioDevice? Handler { get; }
    /// <summary>The device-memory segment mapped at the BAR (null for a handler BAR).</summary>
    public MemSegment? Segment { get; }
    /// <summary>Guest access rights of a devmem BAR.</summary>
    public MemProt Prot { get; }
    /// <summary>The base address currently programmed (guest view, without type bits).</summary>
    public ulong Address { get; internal set; }
    /// <summary>True while the BAR is decoded (registered on a bus or mapped).</summary>
    public bool Decoding { get; internal set; }
    /// <summary>Where it is decoded when <see cref="Decoding"/>.</summary>
    public ulong DecodedAt { get; internal set; }

    internal GuestMapping? Mapping;
    internal IoBarPort? Port;

    /// <summary>True for memory BARs (including the ROM).</summary>
    public bool IsMemory => Kind != PciBarKind.Io;
}

/// <summary>Adapts an offset-based BAR handler to the port bus, which passes absolute ports.</summary>
internal sealed class IoBarPort(IMmioDevice handler) : IPortDevice
{
    public ushort Base;

    public uint PortRead(ushort port, int size) => (uint)handler.MmioRead((ulong)(port - Base), size);

    public void PortWrite(ushort port, int size, uint value) => handler.MmioWrite((ulong)(port - Base), size, value);
}
