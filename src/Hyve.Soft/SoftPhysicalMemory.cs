// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Hyve.X86;

namespace Hyve.Soft;

/// <summary>
/// Guest-physical space as one software vCPU sees it: the VM's RAM, device memory and MMIO bus, with this vCPU's own
/// xAPIC page in front (each processor decodes its local APIC's page itself), and an open bus behind: reads of
/// addresses nothing claims return all ones and writes there are dropped, as on a PC.
/// </summary>
/// <remarks>
/// As <see cref="IGuestHostMemory"/> it hands the vCPU's TLB host addresses of whole RAM and ROM pages; a change of the
/// guest-physical map bumps <see cref="Version"/> so those are dropped before the next access.
/// </remarks>
internal sealed unsafe class SoftPhysicalMemory : IGuestHostMemory, IGuestPorts, IDisposable
{
    private readonly Vm vm;
    private readonly Vlapic lapic;
    private readonly VmPhysicalMemory _inner;
    private readonly Action<GuestMapping, bool> _onMapChange;

    public SoftPhysicalMemory(Vm vm, Vlapic lapic)
    {
        this.vm = vm;
        this.lapic = lapic;
        _inner = new VmPhysicalMemory(vm);
        _onMapChange = (_, _) => Version.Bump();
        _onHarvest = Version.Bump;
        vm.Memory.MappingChanged += _onMapChange;
        vm.Memory.DirtyHarvested += _onHarvest;
    }

    private readonly Action _onHarvest;

    /// <inheritdoc/>
    public MapVersion Version { get; } = new();

    /// <inheritdoc/>
    public byte* HostPage(ulong gpa, out bool writable)
    {
        ulong page = gpa & ~0xffful;
        writable = false;
        // The xAPIC window is decoded by the processor itself whatever memory lies behind it.
        if ((page >> 20) == 0xfee || IsApicPage(page)) return null;
        if (vm.Memory.TryGetSpan(page, 0x1000, MemProt.Write, out var s))
        {
            writable = true;
            // A watched segment (the framebuffer) learns of the page when a TLB maps it; a harvest drops the TLBs' host
            // pointers (Version), so the next access after it maps the page, and marks it, again.
            vm.Memory.MarkDirty(page, 0x1000);
            return (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(s));
        }
        // Read-only memory (the boot ROM): only when no MMIO range claims the page (MMIO wins over ROM, as in TryReadMmio).
        if (vm.Memory.TryGetSpan(page, 0x1000, MemProt.Read, out s) && !vm.Mmio.TryFind(page, out _) && !vm.Mmio.TryFind(page + 0xfff, out _))
            return (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(s));
        return null;
    }

    /// <summary>Stops following the guest-physical map.</summary>
    public void Dispose()
    {
        vm.Memory.MappingChanged -= _onMapChange;
        vm.Memory.DirtyHarvested -= _onHarvest;
    }

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
        vm.Mmio.Unclaimed?.Invoke(gpa, false, size);
        value = size >= 8 ? ulong.MaxValue : (1ul << (8 * size)) - 1;
        return true;
    }

    /// <inheritdoc/>
    public bool TryWriteMmio(ulong gpa, int size, ulong value)
    {
        Accesses++;
        if ((gpa >> 20) == 0xfee && IsApicPage(gpa)) { lapic.MmioWrite(gpa & 0xfff, size, value); return true; }
        if (!_inner.TryWriteMmio(gpa, size, value)) vm.Mmio.Unclaimed?.Invoke(gpa, true, size);
        return true;
    }

    /// <inheritdoc/>
    public uint In(ushort port, int size)
    {
        if (Accesses++ == 0) StartupTrace.FirstExit();
        return vm.Ports.Read(port, size);
    }

    /// <inheritdoc/>
    public void Out(ushort port, int size, uint value)
    {
        if (Accesses++ == 0) StartupTrace.FirstExit();
        vm.Ports.Write(port, size, value);
    }
}
