// SPDX-License-Identifier: BSD-2-Clause
using System.Numerics;

namespace Hyve.Pci;

/// <summary>
/// The MSI capability (ID 05h, PCI Local Bus 3.0 section 6.8.1): message address (32- or 64-bit), data, and
/// optional per-vector mask and pending bits. A masked vector's message is held pending and sent on unmask.
/// </summary>
public sealed class MsiCapability
{
    private readonly PciDevice _dev;
    private readonly int _addrHi, _data, _mask, _pending;

    internal MsiCapability(PciDevice dev, int vectors, bool is64, bool perVectorMask)
    {
        if (vectors < 1 || vectors > 32 || !BitOperations.IsPow2(vectors)) throw new ArgumentOutOfRangeException(nameof(vectors));
        _dev = dev;
        Vectors = vectors;
        Is64 = is64;
        PerVectorMask = perVectorMask;
        int len = is64 ? 0x0e : 0x0a;
        if (perVectorMask) len = is64 ? 0x18 : 0x14;
        Length = (len + 3) & ~3;
        Offset = dev.AddCapability(0x05, len);
        int mmc = BitOperations.Log2((uint)vectors);
        ushort ctrl = (ushort)(mmc << 1 | (is64 ? 0x80 : 0) | (perVectorMask ? 0x100 : 0));
        dev.SetConfig16(Offset + 2, ctrl);
        // Enable (bit 0) and Multiple Message Enable (bits 4-6) are the guest's.
        dev.SetWritable(Offset + 2, 1, 0x71);
        dev.SetWritable(Offset + 4, 1, 0xfc);
        dev.SetWritable(Offset + 5, 3, 0xff);
        _addrHi = is64 ? Offset + 8 : -1;
        if (is64) dev.SetWritable(_addrHi, 4, 0xff);
        _data = Offset + (is64 ? 0x0c : 0x08);
        dev.SetWritable(_data, 2, 0xff);
        _mask = perVectorMask ? _data + 4 : -1;
        _pending = perVectorMask ? _data + 8 : -1;
        if (perVectorMask)
        {
            uint m = vectors == 32 ? 0xffff_ffffu : (1u << vectors) - 1;
            for (int i = 0; i < 4; i++) dev.SetWritable(_mask + i, 1, (byte)(m >> (i * 8)));
        }
    }

    /// <summary>Configuration-space offset of the capability.</summary>
    public int Offset { get; }
    /// <summary>Capability length in bytes.</summary>
    public int Length { get; }
    /// <summary>Vectors the device can use (Multiple Message Capable).</summary>
    public int Vectors { get; }
    /// <summary>64-bit message address.</summary>
    public bool Is64 { get; }
    /// <summary>Per-vector masking capable.</summary>
    public bool PerVectorMask { get; }
    /// <summary>MSI Enable.</summary>
    public bool Enabled => (_dev.GetConfig8(Offset + 2) & 1) != 0;
    /// <summary>Vectors the guest enabled (Multiple Message Enable, capped at the capable count).</summary>
    public int EnabledVectors => Math.Min(1 << ((_dev.GetConfig8(Offset + 2) >> 4) & 7), Vectors);
    /// <summary>The message address the guest programmed.</summary>
    public ulong Address => _dev.GetConfig32(Offset + 4) | (Is64 ? (ulong)_dev.GetConfig32(_addrHi) << 32 : 0);
    /// <summary>The message data the guest programmed.</summary>
    public ushort Data => _dev.GetConfig16(_data);
    /// <summary>Mask bits (0 without per-vector masking).</summary>
    public uint MaskBits => PerVectorMask ? _dev.GetConfig32(_mask) : 0;
    /// <summary>Pending bits (0 without per-vector masking).</summary>
    public uint PendingBits => PerVectorMask ? _dev.GetConfig32(_pending) : 0;

    /// <summary>Signals vector <paramref name="vector"/>; false when MSI is off or the vector is not enabled.</summary>
    public bool Send(int vector)
    {
        lock (_dev.SyncObject)
        {
            if (!Enabled || vector < 0 || vector >= EnabledVectors) return false;
            if (PerVectorMask && (MaskBits & (1u << vector)) != 0)
            {
                _dev.SetConfig32(_pending, PendingBits | 1u << vector);
                return true;
            }
            Deliver(vector);
            return true;
        }
    }

    private void Deliver(int vector)
    {
        uint n = (uint)EnabledVectors;
        ulong data = (Data & ~(n - 1)) | (uint)vector;
        _dev.Bus?.Irq?.Msi(Address, data);
    }

    /// <summary>Called after the guest wrote the capability: unmasked pending vectors go out.</summary>
    internal void ConfigWritten()
    {
        if (!PerVectorMask || !Enabled) return;
        uint pend = PendingBits & ~MaskBits;
        if (pend == 0) return;
        for (int v = 0; v < EnabledVectors; v++)
        {
            if ((pend & (1u << v)) == 0) continue;
            _dev.SetConfig32(_pending, PendingBits & ~(1u << v));
            Deliver(v);
        }
    }
}
