// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Vmm;

namespace Hyve.Pci;

/// <summary>
/// The MSI-X capability (ID 11h, PCI Local Bus 3.0 section 6.8.2) with its table and pending-bit array in a memory
/// BAR of their own (table at offset 0, PBA on the next 4 KiB boundary, as bhyve lays them out). Each vector has
/// a mask bit; the function mask masks all; masked vectors set their pending bit and are sent on unmask.
/// </summary>
public sealed class MsiXCapability : IMmioDevice
{
    /// <summary>Capability length in configuration space.</summary>
    public const int Length = 12;
    private const int EntrySize = 16;
    private readonly PciDevice _dev;
    private readonly byte[] _table;
    private readonly byte[] _pba;
    private readonly MsiRoute?[] _routes;

    internal MsiXCapability(PciDevice dev, int vectors, int barIndex)
    {
        if (vectors < 1 || vectors > 2048) throw new ArgumentOutOfRangeException(nameof(vectors));
        _dev = dev;
        Vectors = vectors;
        _table = new byte[vectors * EntrySize];
        _pba = new byte[((vectors + 63) / 64) * 8];
        _routes = new MsiRoute?[vectors];
        PbaOffset = (_table.Length + 4095) & ~4095;
        ulong barSize = PciDevice.RoundPow2((ulong)(PbaOffset + _pba.Length));
        Offset = dev.AddCapability(0x11, Length);
        dev.SetConfig16(Offset + 2, (ushort)(vectors - 1));
        dev.SetConfig32(Offset + 4, (uint)barIndex);
        dev.SetConfig32(Offset + 8, (uint)PbaOffset | (uint)barIndex);
        // Function Mask (bit 14) and MSI-X Enable (bit 15) are the guest's.
        dev.SetWritable(Offset + 3, 1, 0xc0);
        ResetTable();
        Bar = dev.AddMemoryBar(barIndex, barSize, this);
    }

    /// <summary>Configuration-space offset of the capability.</summary>
    public int Offset { get; }
    /// <summary>Table entries.</summary>
    public int Vectors { get; }
    /// <summary>Offset of the PBA inside the BAR.</summary>
    public int PbaOffset { get; }
    /// <summary>The BAR holding table and PBA.</summary>
    public PciBar Bar { get; }
    /// <summary>MSI-X Enable.</summary>
    public bool Enabled => (_dev.GetConfig8(Offset + 3) & 0x80) != 0;
    /// <summary>Function Mask.</summary>
    public bool FunctionMasked => (_dev.GetConfig8(Offset + 3) & 0x40) != 0;

    /// <summary>True when vector <paramref name="vector"/> is masked in its table entry.</summary>
    public bool IsMasked(int vector) => (_table[vector * EntrySize + 12] & 1) != 0;

    /// <summary>True when vector <paramref name="vector"/> has a message pending.</summary>
    public bool IsPending(int vector) => (_pba[vector >> 3] & (1 << (vector & 7))) != 0;

    /// <summary>Signals vector <paramref name="vector"/>; false when MSI-X is off or the vector does not exist.</summary>
    public bool Send(int vector)
    {
        lock (_dev.SyncObject)
        {
            if (!Enabled || vector < 0 || vector >= Vectors) return false;
            if (FunctionMasked || IsMasked(vector)) _pba[vector >> 3] |= (byte)(1 << (vector & 7));
            else Deliver(vector);
            return true;
        }
    }

    private void Deliver(int vector)
    {
        var e = _table.AsSpan(vector * EntrySize);
        ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(e);
        uint data = BinaryPrimitives.ReadUInt32LittleEndian(e[8..]);
        // Each vector has its own route, which on KVM is an irqfd; masking stays here, so a masked vector never reaches it.
        if (_dev.Bus?.MsiRoutes is { } routes && routes.TryDeliver(_routes[vector] ??= routes.Add(), addr, data)) return;
        _dev.Bus?.Irq?.Msi(addr, data);
    }

    private void FlushPending()
    {
        if (!Enabled || FunctionMasked) return;
        for (int v = 0; v < Vectors; v++)
        {
            if (!IsPending(v) || IsMasked(v)) continue;
            _pba[v >> 3] &= (byte)~(1 << (v & 7));
            Deliver(v);
        }
    }

    /// <summary>Called (under the device lock) after the guest wrote the capability.</summary>
    internal void ConfigWritten() => FlushPending();

    /// <inheritdoc/>
    public ulong MmioRead(ulong offset, int size)
    {
        ulong ones = size >= 8 ? ulong.MaxValue : (1ul << (size * 8)) - 1;
        if ((size != 4 && size != 8) || (offset & (ulong)(size - 1)) != 0) return ones;
        lock (_dev.SyncObject)
        {
            if (offset + (ulong)size <= (ulong)_table.Length)
                return size == 4 ? BinaryPrimitives.ReadUInt32LittleEndian(_table.AsSpan((int)offset))
                                 : BinaryPrimitives.ReadUInt64LittleEndian(_table.AsSpan((int)offset));
            if (offset >= (ulong)PbaOffset && offset - (ulong)PbaOffset + (ulong)size <= (ulong)_pba.Length)
            {
                int o = (int)(offset - (ulong)PbaOffset);
                return size == 4 ? BinaryPrimitives.ReadUInt32LittleEndian(_pba.AsSpan(o))
                                 : BinaryPrimitives.ReadUInt64LittleEndian(_pba.AsSpan(o));
            }
        }
        return 0;
    }

    /// <inheritdoc/>
    public void MmioWrite(ulong offset, int size, ulong value)
    {
        // The table takes aligned dword and qword writes; the PBA is read-only.
        if ((size != 4 && size != 8) || (offset & (ulong)(size - 1)) != 0 || offset + (ulong)size > (ulong)_table.Length) return;
        lock (_dev.SyncObject)
        {
            for (int i = 0; i < size; i += 4)
            {
                int o = (int)offset + i;
                uint v = (uint)(value >> (i * 8));
                // Only bit 0 of Vector Control is defined.
                if ((o & 15) == 12) v &= 1;
                BinaryPrimitives.WriteUInt32LittleEndian(_table.AsSpan(o), v);
            }
            FlushPending();
        }
    }

    private void ResetTable()
    {
        Array.Clear(_table);
        Array.Clear(_pba);
        for (int v = 0; v < Vectors; v++) _table[v * EntrySize + 12] = 1;
    }

    internal byte[] SaveTable() => (byte[])_table.Clone();

    internal byte[] SavePending() => (byte[])_pba.Clone();

    internal void Restore(byte[]? table, byte[]? pending)
    {
        if (table is null || pending is null) { ResetTable(); return; }
        if (table.Length != _table.Length || pending.Length != _pba.Length) throw new InvalidDataException("MSI-X state size mismatch");
        table.CopyTo(_table, 0);
        pending.CopyTo(_pba, 0);
    }
}
