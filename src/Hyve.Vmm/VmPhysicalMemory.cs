// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;

namespace Hyve.Vmm;

/// <summary>
/// The VM's guest-physical space as the instruction engine sees it: RAM and device memory as spans, every other
/// address through the MMIO bus (so an emulated instruction reaches the same IOAPIC, HPET and PCI models as an
/// ordinary MMIO exit), and the port bus for IN/OUT.
/// </summary>
public sealed class VmPhysicalMemory(Vm vm) : IGuestPhysicalMemory, IGuestPorts
{
    /// <summary>Writable memory only: the engine writes through these spans, so read-only device memory (the boot ROM)
    /// is served by <see cref="TryReadMmio"/> instead, and writes to it are dropped. A span into a dirty-logged segment
    /// marks its pages (the engine may write through it).</summary>
    public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
    {
        if (!vm.Memory.TryGetSpan(gpa, length, MemProt.Write, out span)) return false;
        vm.Memory.MarkDirty(gpa, length);
        return true;
    }

    /// <summary>Readable memory, the boot ROM included: fetches and reads from ROM are span copies, not MMIO callbacks.</summary>
    public bool TryGetReadSpan(ulong gpa, int length, out ReadOnlySpan<byte> span)
    {
        bool ok = vm.Memory.TryGetSpan(gpa, length, MemProt.Read, out var s);
        span = s;
        return ok;
    }

    /// <inheritdoc/>
    public bool TryReadMmio(ulong gpa, int size, out ulong value)
    {
        if (vm.Mmio.TryFind(gpa, out var r))
        {
            value = r.Device.MmioRead(gpa - r.Base, size);
            return true;
        }
        // A read of read-only device memory that did not fit one span (rare): byte by byte.
        if (vm.Memory.TryGetSpan(gpa, size, MemProt.Read, out var s))
        {
            value = 0;
            for (int i = 0; i < size; i++) value |= (ulong)s[i] << (8 * i);
            return true;
        }
        value = 0;
        return false;
    }

    /// <inheritdoc/>
    public bool TryWriteMmio(ulong gpa, int size, ulong value)
    {
        if (vm.Mmio.TryFind(gpa, out var r))
        {
            r.Device.MmioWrite(gpa - r.Base, size, value);
            return true;
        }
        // Writes to the boot ROM are dropped, as the ROM would.
        return vm.Memory.FindMapping(gpa) is not null;
    }

    /// <inheritdoc/>
    public uint In(ushort port, int size) => vm.Ports.Read(port, size);

    /// <inheritdoc/>
    public void Out(ushort port, int size, uint value) => vm.Ports.Write(port, size, value);
}
