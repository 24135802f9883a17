// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Hyve.X86;

namespace Hyve.Soft;

/// <summary>
/// Guest-physical space as one software vCPU sees it: the VM's RAM, device memory and MMIO bus, with this vCPU's own
/// xAPIC page in front (each processor decodes its local APIC's page itself), and an open bus behind: reads of
/// addresses nothing claims return all ones and writes there are dropped, as on a PC.
/// </summary>
internal sealed class SoftPhysicalMemory(Vm vm, Vlapic lapic) : IGuestPhysicalMemory, IGuestPorts
{
    private readonly VmPhysicalMemory _inner = new(vm);

    /// <summary>Port accesses and MMIO accesses handled so far (for the VM's activity probe).</summary>
    public long Accesses;

    /// <inheritdoc/>
    public bool TryGetSpan(ulong gpa, int length, out Span<byte> span) => _inner.TryGetSpan(gpa, length, out span);

    /// <inheritdoc/>
    public bool TryGetReadSpan(ulong gpa, int length, out ReadOnlySpan<byte> span) => _inner.TryGetReadSpan(gpa, length, out span);

    private bool IsApicPage(ulong gpa)
    {
        ulong b = lapic.ApicBase;
        // The page is decoded only while the APIC is enabled and in xAPIC mode.
        return (b & LapicRegisters.BaseEnable) != 0 && (b & LapicRegisters.BaseX2Apic) == 0
            && (gpa & ~0xffful) == (b & 0x000F_FFFF_FFFF_F000ul);
    }

    /// <inheritdoc/>
    public bool TryReadMmio(ulong gpa, int size, out ulong value)
    {
        Accesses++;
        if ((gpa >> 20) == 0xfee && IsApicPage(gpa)) { value = lapic.MmioRead(gpa & 0xfff, size); return true; }
        if (_inner.TryReadMmio(gpa, size, out value)) return true;
        value = size >= 8 ? ulong.MaxValue : (1ul << (8 * size)) - 1;
        return true;
    }

    /// <inheritdoc/>
    public bool TryWriteMmio(ulong gpa, int size, ulong value)
    {
        Accesses++;
        if ((gpa >> 20) == 0xfee && IsApicPage(gpa)) { lapic.MmioWrite(gpa & 0xfff, size, value); return true; }
        _inner.TryWriteMmio(gpa, size, value);
        return true;
    }

    /// <inheritdoc/>
    public uint In(ushort port, int size)
    {
        Accesses++;
        return vm.Ports.Read(port, size);
    }

    /// <inheritdoc/>
    public void Out(ushort port, int size, uint value)
    {
        Accesses++;
        vm.Ports.Write(port, size, value);
    }
}
