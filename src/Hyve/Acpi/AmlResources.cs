// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Acpi;

/// <summary>The memory attribute of an address space descriptor (type-specific flags _MEM).</summary>
public enum AmlCacheability : byte
{
    /// <summary>Non-cacheable.</summary>
    NonCacheable = 0,
    /// <summary>Cacheable.</summary>
    Cacheable = 1,
    /// <summary>Write-combining.</summary>
    WriteCombining = 2,
    /// <summary>Prefetchable.</summary>
    Prefetchable = 3,
}

/// <summary>
/// Builds a ResourceTemplate (ACPI 6.x, 6.4): resource descriptors in a Buffer ending with an End Tag whose
/// checksum byte is 0 ("treat as valid"). Each method appends one descriptor; <see cref="ToBuffer"/> yields the AML Buffer.
/// </summary>
public sealed class AmlResourceTemplate
{
    private readonly List<byte> _bytes = [];

    /// <summary>The descriptors so far plus the End Tag, without the Buffer wrapper.</summary>
    public byte[] Descriptors => [.. _bytes, 0x79, 0x00];

    /// <summary>The ResourceTemplate as an AML Buffer object.</summary>
    public byte[] ToBuffer() => Aml.Buffer(Descriptors);

    private AmlResourceTemplate Add(params ReadOnlySpan<byte> b) { _bytes.AddRange(b); return this; }
    private void U16(ulong v) { _bytes.Add((byte)v); _bytes.Add((byte)(v >> 8)); }
    private void U32(ulong v) { for (int i = 0; i < 4; i++) _bytes.Add((byte)(v >> (8 * i))); }
    private void U64(ulong v) { for (int i = 0; i < 8; i++) _bytes.Add((byte)(v >> (8 * i))); }

    /// <summary>IO(Decode16, min, max, alignment, length): small descriptor 0x47.</summary>
    public AmlResourceTemplate Io(ushort min, ushort max, byte alignment, byte length)
    {
        Add(0x47, 0x01);
        U16(min); U16(max);
        return Add(alignment, length);
    }

    /// <summary>IO(Decode16, port, port, 1, length): a fixed range as bhyve writes them.</summary>
    public AmlResourceTemplate Io(ushort port, byte length) => Io(port, port, 1, length);

    /// <summary>FixedIO(base, length): small descriptor 0x4B (10-bit decode).</summary>
    public AmlResourceTemplate FixedIo(ushort port, byte length)
    {
        Add(0x4B);
        U16(port);
        return Add(length);
    }

    /// <summary>IRQNoFlags(){irqs}: small descriptor 0x22 (edge, active high, exclusive).</summary>
    public AmlResourceTemplate IrqNoFlags(params ReadOnlySpan<int> irqs) => Add(0x22, (byte)Mask(irqs), (byte)(Mask(irqs) >> 8));

    /// <summary>IRQ(Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared){irqs}: small descriptor 0x23 with its flags byte.</summary>
    public AmlResourceTemplate Irq(bool edge, bool activeLow, bool shared, params ReadOnlySpan<int> irqs) =>
        IrqMask(edge, activeLow, shared, Mask(irqs));

    /// <summary>IRQ descriptor with the IRQ set given as a bit mask.</summary>
    public AmlResourceTemplate IrqMask(bool edge, bool activeLow, bool shared, ushort mask)
    {
        byte flags = (byte)((edge ? 0x01 : 0) | (activeLow ? 0x08 : 0) | (shared ? 0x10 : 0));
        return Add(0x23, (byte)mask, (byte)(mask >> 8), flags);
    }

    /// <summary>Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared){gsis}: extended descriptor 0x89.</summary>
    public AmlResourceTemplate Interrupt(bool edge, bool activeLow, bool shared, params ReadOnlySpan<uint> gsis)
    {
        if (gsis.Length is 0 or > 255) throw new ArgumentOutOfRangeException(nameof(gsis));
        Add(0x89);
        U16((ulong)(2 + 4 * gsis.Length));
        Add((byte)(0x01 | (edge ? 0x02 : 0) | (activeLow ? 0x04 : 0) | (shared ? 0x08 : 0)), (byte)gsis.Length);
        foreach (var g in gsis) U32(g);
        return this;
    }

    /// <summary>Memory32Fixed(ReadWrite|ReadOnly, base, length): large descriptor 0x86.</summary>
    public AmlResourceTemplate Memory32Fixed(uint baseAddress, uint length, bool writeable = true)
    {
        Add(0x86, 0x09, 0x00, (byte)(writeable ? 1 : 0));
        U32(baseAddress); U32(length);
        return this;
    }

    /// <summary>WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, count).</summary>
    public AmlResourceTemplate WordBusNumber(ushort min, ushort max) => Word(2, 0, min, max);

    /// <summary>WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0, length).</summary>
    public AmlResourceTemplate WordIo(ushort min, ushort max) => Word(1, 0x03, min, max);

    private AmlResourceTemplate Word(byte type, byte typeFlags, ushort min, ushort max)
    {
        Add(0x88, 0x0D, 0x00, type, ProducerFixed, typeFlags);
        U16(0); U16(min); U16(max); U16(0); U16((ulong)(max - min + 1));
        return this;
    }

    // General flags of an address space descriptor: producer (bit 0 clear), positive decode, MinFixed (bit 2), MaxFixed (bit 3).
    private const byte ProducerFixed = 0x0C;

    private static byte MemoryFlags(AmlCacheability cache, bool writeable) => (byte)((writeable ? 1 : 0) | ((byte)cache << 1));

    /// <summary>DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, cache, ReadWrite, 0, min, max, 0, length).</summary>
    public AmlResourceTemplate DWordMemory(uint min, uint max, AmlCacheability cache = AmlCacheability.NonCacheable, bool writeable = true)
    {
        Add(0x87, 0x17, 0x00, 0x00, ProducerFixed, MemoryFlags(cache, writeable));
        U32(0); U32(min); U32(max); U32(0); U32((ulong)max - min + 1);
        return this;
    }

    /// <summary>QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, cache, ReadWrite, 0, min, max, 0, length).</summary>
    public AmlResourceTemplate QWordMemory(ulong min, ulong max, AmlCacheability cache = AmlCacheability.NonCacheable, bool writeable = true)
    {
        Add(0x8A, 0x2B, 0x00, 0x00, ProducerFixed, MemoryFlags(cache, writeable));
        U64(0); U64(min); U64(max); U64(0); U64(max - min + 1);
        return this;
    }

    private static ushort Mask(ReadOnlySpan<int> irqs)
    {
        ushort m = 0;
        foreach (var i in irqs)
        {
            if (i is < 0 or > 15) throw new ArgumentOutOfRangeException(nameof(irqs), "ISA IRQs are 0-15");
            m |= (ushort)(1 << i);
        }
        return m;
    }
}
