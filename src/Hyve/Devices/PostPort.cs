// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;

namespace Hyve.Devices;

/// <summary>Saved POST port state.</summary>
public sealed record PostPortState(int Version, byte Value);

/// <summary>
/// The POST diagnostic port 0x80: firmware writes progress codes there; a read returns the last byte written
/// (as the LPC's port-80 latch does), and the host can watch <see cref="Value"/>.
/// </summary>
public sealed class PostPort : IPortDevice
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

    /// <summary>Captures the latch.</summary>
    public PostPortState SaveState() => new(1, Value);

    /// <summary>Restores the latch.</summary>
    public void RestoreState(PostPortState state)
    {
        if (state.Version != 1) throw new InvalidDataException("POST port state: unsupported version");
        Volatile.Write(ref _value, state.Value);
    }
}
