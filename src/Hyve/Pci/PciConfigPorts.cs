// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;

namespace Hyve.Pci;

/// <summary>
/// PCI configuration mechanism #1: a dword write to 0xCF8 latches enable (bit 31), bus (23:16), device (15:11),
/// function (10:8) and register (7:2); 0xCFC-0xCFF then reach that dword with byte, word or dword accesses.
/// With the enable bit clear the data port reads all ones and ignores writes.
/// </summary>
public sealed class PciConfigPorts(PciBus bus) : IPortDevice
{
    /// <summary>The address port.</summary>
    public const ushort AddressPort = 0xcf8;
    /// <summary>The first data port.</summary>
    public const ushort DataPort = 0xcfc;
    private uint _address;

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        if (port == AddressPort) return size == 4 ? Volatile.Read(ref _address) : 0xffff_ffffu;
        uint a = Volatile.Read(ref _address);
        int off = (int)(a & 0xfc) + (port - DataPort);
        if ((a & 0x8000_0000u) == 0 || port < DataPort || port > DataPort + 3 || off + size > PciDevice.LegacyConfigSize)
            return 0xffff_ffffu;
        return bus.ConfigRead((int)(a >> 16) & 0xff, (int)(a >> 11) & 0x1f, (int)(a >> 8) & 7, off, size);
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        if (port == AddressPort)
        {
            // Only dword accesses hit the address latch; bits 30:24 and 1:0 are reserved and read back as zero.
            if (size == 4) Volatile.Write(ref _address, value & 0x80ff_fffcu);
            return;
        }
        uint a = Volatile.Read(ref _address);
        int off = (int)(a & 0xfc) + (port - DataPort);
        if ((a & 0x8000_0000u) == 0 || port < DataPort || port > DataPort + 3 || off + size > PciDevice.LegacyConfigSize) return;
        bus.ConfigWrite((int)(a >> 16) & 0xff, (int)(a >> 11) & 0x1f, (int)(a >> 8) & 7, off, size, value);
    }
}
