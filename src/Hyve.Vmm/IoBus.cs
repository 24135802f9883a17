// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm;

/// <summary>A device that answers port I/O. Ports are absolute; size is 1, 2 or 4 bytes.</summary>
public interface IPortDevice
{
    /// <summary>Reads <paramref name="size"/> bytes at <paramref name="port"/>; unused high bits are ignored by the caller.</summary>
    uint PortRead(ushort port, int size);

    /// <summary>Writes the low <paramref name="size"/> bytes of <paramref name="value"/> to <paramref name="port"/>.</summary>
    void PortWrite(ushort port, int size, uint value);
}

/// <summary>A device that answers memory-mapped I/O. Offsets are relative to the registered base, so a range can move (PCI BARs).</summary>
public interface IMmioDevice
{
    /// <summary>Reads <paramref name="size"/> (1, 2, 4 or 8) bytes at <paramref name="offset"/> into the range.</summary>
    ulong MmioRead(ulong offset, int size);

    /// <summary>Writes the low <paramref name="size"/> bytes of <paramref name="value"/> at <paramref name="offset"/> into the range.</summary>
    void MmioWrite(ulong offset, int size, ulong value);
}

/// <summary>
/// The port-I/O bus: one slot per port, so dispatch on the exit path is two array loads.
/// Unclaimed ports read as all ones and ignore writes, as on a PC with nothing decoding them.
/// </summary>
public sealed class PortBus
{
    private readonly SparseTable<IPortDevice> _ports = new();

    /// <summary>Claims <paramref name="count"/> ports starting at <paramref name="first"/>; overlapping a claimed port is a host error.</summary>
    public void Register(ushort first, int count, IPortDevice device)
    {
        if (count <= 0 || first + count > 65536) throw new ArgumentOutOfRangeException(nameof(count));
        for (int p = first; p < first + count; p++)
            if (_ports[p] is not null) throw new InvalidOperationException($"I/O port 0x{p:x} is already claimed");
        for (int p = first; p < first + count; p++) _ports[p] = device;
    }

    /// <summary>Releases ports claimed by <paramref name="device"/> in the range.</summary>
    public void Unregister(ushort first, int count, IPortDevice device)
    {
        for (int p = first; p < first + count && p < 65536; p++)
            if (ReferenceEquals(_ports[p], device)) _ports[p] = null;
    }

    /// <summary>The device at a port, or null.</summary>
    public IPortDevice? Find(ushort port) => _ports[port];

    /// <summary>Called for an access no device claims (port, is-write, size) before it reads as all ones or is ignored;
    /// x86.strictio (-e) stops the VM here, as bhyve does. Null (the default) costs nothing.</summary>
    public Action<ushort, bool, int>? Unclaimed { get; set; }

    /// <summary>Performs a guest IN of <paramref name="size"/> bytes.</summary>
    public uint Read(ushort port, int size)
    {
        var d = _ports[port];
        if (d is null)
        {
            Unclaimed?.Invoke(port, false, size);
            return SizeMask(size);
        }
        return d.PortRead(port, size) & SizeMask(size);
    }

    /// <summary>Performs a guest OUT of <paramref name="size"/> bytes.</summary>
    public void Write(ushort port, int size, uint value)
    {
        var d = _ports[port];
        if (d is null) Unclaimed?.Invoke(port, true, size);
        else d.PortWrite(port, size, value & SizeMask(size));
    }

    private static uint SizeMask(int size) => size >= 4 ? 0xffff_ffffu : (1u << (size * 8)) - 1;
}

/// <summary>
/// The MMIO bus: non-overlapping ranges kept sorted by base, found by binary search.
/// Updates copy the array (rare: BAR moves) so lookups on vCPU threads need no lock.
/// Unclaimed addresses read as all ones and ignore writes.
/// </summary>
public sealed class MmioBus
{
    /// <summary>One registered range.</summary>
    public readonly record struct Range(ulong Base, ulong Length, IMmioDevice Device, string Name);

    private Range[] _ranges = [];
    private readonly object _gate = new();

    /// <summary>The ranges, sorted by base.</summary>
    public ReadOnlySpan<Range> Ranges => Volatile.Read(ref _ranges);

    /// <summary>Claims [<paramref name="baseAddress"/>, +<paramref name="length"/>) for <paramref name="device"/>.</summary>
    public void Register(ulong baseAddress, ulong length, IMmioDevice device, string name)
    {
        if (length == 0 || baseAddress + length < baseAddress) throw new ArgumentOutOfRangeException(nameof(length));
        lock (_gate)
        {
            foreach (var r in _ranges)
                if (baseAddress < r.Base + r.Length && r.Base < baseAddress + length)
                    throw new InvalidOperationException($"MMIO range {name} at 0x{baseAddress:x} overlaps {r.Name}");
            var next = new Range[_ranges.Length + 1];
            int i = 0, j = 0;
            while (i < _ranges.Length && _ranges[i].Base < baseAddress) next[j++] = _ranges[i++];
            next[j++] = new Range(baseAddress, length, device, name);
            while (i < _ranges.Length) next[j++] = _ranges[i++];
            Volatile.Write(ref _ranges, next);
        }
    }

    /// <summary>Releases the range of <paramref name="device"/> that starts at <paramref name="baseAddress"/>.</summary>
    public void Unregister(ulong baseAddress, IMmioDevice device)
    {
        lock (_gate)
        {
            var list = new List<Range>(_ranges);
            list.RemoveAll(r => r.Base == baseAddress && ReferenceEquals(r.Device, device));
            Volatile.Write(ref _ranges, list.ToArray());
        }
    }

    /// <summary>Finds the range holding <paramref name="address"/>; false when none does.</summary>
    public bool TryFind(ulong address, out Range range)
    {
        var ranges = Volatile.Read(ref _ranges);
        int lo = 0, hi = ranges.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >> 1;
            ref readonly var r = ref ranges[mid];
            if (address < r.Base) hi = mid - 1;
            else if (address - r.Base >= r.Length) lo = mid + 1;
            else { range = r; return true; }
        }
        range = default;
        return false;
    }

    /// <summary>Called for an access no device claims (address, is-write, size); x86.strictio (-e) stops the VM here.</summary>
    public Action<ulong, bool, int>? Unclaimed { get; set; }

    /// <summary>Performs a guest read; an access that runs off the end of a range is served by that range only up to its end.</summary>
    public ulong Read(ulong address, int size)
    {
        if (!TryFind(address, out var r))
        {
            Unclaimed?.Invoke(address, false, size);
            return ulong.MaxValue >> (64 - size * 8);
        }
        return r.Device.MmioRead(address - r.Base, size);
    }

    /// <summary>Performs a guest write.</summary>
    public void Write(ulong address, int size, ulong value)
    {
        if (TryFind(address, out var r)) r.Device.MmioWrite(address - r.Base, size, value);
        else Unclaimed?.Invoke(address, true, size);
    }
}
