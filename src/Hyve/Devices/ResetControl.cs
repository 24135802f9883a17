// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vmm.State;

namespace Hyve.Devices;

/// <summary>
/// The PCH reset control register at port 0xCF9: writing RST_CPU (bit 2) with SYS_RST (bit 1) or alone
/// resets the machine; the other bits are kept and read back (Intel ICH datasheet, RST_CNT).
/// </summary>
public sealed class ResetControl(Vm vm) : IPortDevice, IDeviceState
{
    /// <summary>The port.</summary>
    public const ushort Port = 0xcf9;
    private byte _value;

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size) => _value;

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        if (size != 1) return;
        // The reset happens on the 0 -> 1 transition of RST_CPU; hardware clears it afterwards.
        _value = (byte)(value & 0x0a);
        if ((value & 0x04) != 0) vm.Suspend(SuspendHow.Reset);
    }

    /// <inheritdoc/>
    public string StateName => "reset-control";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Writes the kept bits of RST_CNT.</summary>
    public void SaveState(BinaryWriter w) => w.Write(_value);

    /// <summary>Reads the kept bits of RST_CNT.</summary>
    public void LoadState(BinaryReader r, int version) => _value = (byte)(r.ReadByte() & 0x0a);
}
