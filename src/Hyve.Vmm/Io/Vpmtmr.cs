// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.State;

namespace Hyve.Vmm.Io;

/// <summary>
/// The ACPI power-management timer (bhyve's vpmtmr): a free-running 32-bit counter at 3.579545 MHz of
/// <see cref="IClock"/> time, read at a port block the FADT names (PM_TMR_BLK, 0x408 in bhyve's ACPI tables).
/// The register is 4 bytes wide; a narrower read at an offset returns those bytes of it. Writes are ignored.
/// </summary>
public sealed class Vpmtmr : IPortDevice, IDeviceState
{
    /// <summary>The counter's frequency in Hz.</summary>
    public const long Frequency = 3_579_545;

    /// <summary>The port bhyve places the timer at.</summary>
    public const ushort DefaultPort = 0x408;

    /// <inheritdoc/>
    public string StateName => "vpmtmr";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    private readonly Lock _lock = new();
    private readonly IClock _clock;
    private long _baseNs;
    private uint _baseValue;

    /// <summary>Creates the timer at <paramref name="port"/> (4 ports claimed by <see cref="RegisterPorts"/>).</summary>
    public Vpmtmr(IClock clock, ushort port = DefaultPort)
    {
        ArgumentNullException.ThrowIfNull(clock);
        if (port > 0xfffc) throw new ArgumentOutOfRangeException(nameof(port));
        _clock = clock;
        Port = port;
        Reset();
    }

    /// <summary>The first port of the 4-byte register.</summary>
    public ushort Port { get; }

    /// <summary>The counter value now.</summary>
    public uint Counter
    {
        get
        {
            lock (_lock) return CounterAt(_clock.NowNs);
        }
    }

    /// <summary>Registers the 4 ports of the register on <paramref name="bus"/>.</summary>
    public void RegisterPorts(PortBus bus) => bus.Register(Port, 4, this);

    /// <summary>Restarts the count from 0, as at power-on.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _baseNs = _clock.NowNs;
            _baseValue = 0;
        }
    }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        int offset = port - Port;
        if ((uint)offset > 3) return 0xffff_ffff;
        uint v = Counter >> (8 * offset);
        // Bytes past the end of the register are not decoded by it.
        if (offset != 0) v |= 0xffff_ffffu << (8 * (4 - offset));
        return v;
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value) { }

    /// <summary>Writes the state: the counter value now.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_lock)
        {
            w.Write(CounterAt(_clock.NowNs));
        }
    }

    /// <summary>Reads state written by <see cref="SaveState"/>: counting continues from the saved value.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        uint value = r.ReadUInt32();
        lock (_lock)
        {
            _baseNs = _clock.NowNs;
            _baseValue = value;
        }
    }

    private uint CounterAt(long ns)
    {
        long d = Math.Max(0, ns - _baseNs);
        long ticks = d / 1_000_000_000 * Frequency + d % 1_000_000_000 * Frequency / 1_000_000_000;
        return unchecked(_baseValue + (uint)ticks);
    }
}
