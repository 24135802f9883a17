// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Control;

namespace Hyve.Devices;

/// <summary>
/// The least of an 8042 keyboard controller: the status port 0x64 with no data pending and the
/// command 0xFE (pulse the reset line) that guests and firmware use to reboot; the data port 0x60 reads 0.
/// </summary>
public sealed class I8042(Vm vm) : IPortDevice
{
    /// <summary>Data port.</summary>
    public const ushort DataPort = 0x60;
    /// <summary>Status/command port.</summary>
    public const ushort CommandPort = 0x64;
    private const byte StatusSystemFlag = 0x04;

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size) => port == CommandPort ? StatusSystemFlag : 0u;

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        if (port == CommandPort && (byte)value == 0xfe) vm.Suspend(SuspendHow.Reset);
    }
}
