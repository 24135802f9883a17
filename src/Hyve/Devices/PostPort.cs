// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Devices;

/// <summary>
/// The POST diagnostic port 0x80: firmware writes progress codes there; a read returns the last byte written
/// (as the LPC's port-80 latch does), and the host can watch <see cref="Value"/>.
/// </summary>
public sealed class PostPort : IPortDevice, IDeviceState
{
    /// <summary>The port.</summary>
    public const ushort Port = 0x80;
    private int _value;

    /// <summary>The last code written.</summary>
    public byte Value => (byte)Volatile.Read(ref _value);

    /// <summary>Claims port 0x80 on <paramref name="ports"/>.</summary>
    public void Register(PortBus ports) => ports.Register(Port, 1, this);

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size) => (uint)Volatile.Read(ref _value);

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value) => Volatile.Write(ref _value, (byte)value);

    /// <inheritdoc/>
    public string StateName => "post-port";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Writes the latch.</summary>
    public void SaveState(BinaryWriter w) => w.Write(Value);

    /// <summary>Reads the latch.</summary>
    public void LoadState(BinaryReader r, int version) => Volatile.Write(ref _value, r.ReadByte());
}
