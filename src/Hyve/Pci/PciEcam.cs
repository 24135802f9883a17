// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;

namespace Hyve.Pci;

/// <summary>
/// The PCI Express enhanced configuration access mechanism: a memory range where offset bits 27:20 select the bus,
/// 19:15 the device, 14:12 the function and 11:0 the register of the 4 KiB configuration space.
/// Accesses must be naturally aligned; a qword is served as two dwords.
/// </summary>
public sealed class PciEcam(PciBus bus) : IMmioDevice
{
    /// <inheritdoc/>
    public ulong MmioRead(ulong offset, int size)
    {
        ulong ones = size >= 8 ? ulong.MaxValue : (1ul << (size * 8)) - 1;
        if (offset >= PciBus.EcamSize || (size != 1 && size != 2 && size != 4 && size != 8) || (offset & (ulong)(size - 1)) != 0) return ones;
        Decode(offset, out int b, out int s, out int f, out int reg);
        if (size == 8)
            return bus.ConfigRead(b, s, f, reg, 4) | (ulong)bus.ConfigRead(b, s, f, reg + 4, 4) << 32;
        return bus.ConfigRead(b, s, f, reg, size);
    }

    /// <inheritdoc/>
    public void MmioWrite(ulong offset, int size, ulong value)
    {
        if (offset >= PciBus.EcamSize || (size != 1 && size != 2 && size != 4 && size != 8) || (offset & (ulong)(size - 1)) != 0) return;
        Decode(offset, out int b, out int s, out int f, out int reg);
        if (size == 8)
        {
            bus.ConfigWrite(b, s, f, reg, 4, (uint)value);
            bus.ConfigWrite(b, s, f, reg + 4, 4, (uint)(value >> 32));
            return;
        }
        bus.ConfigWrite(b, s, f, reg, size, (uint)value);
    }

    private static void Decode(ulong offset, out int b, out int s, out int f, out int reg)
    {
        b = (int)(offset >> 20) & 0xff;
        s = (int)(offset >> 15) & 0x1f;
        f = (int)(offset >> 12) & 7;
        reg = (int)(offset & 0xfff);
    }
}
