// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;

namespace Hyve.Acpi;

/// <summary>A field in a table that holds the guest-physical address of another table, patched at placement.</summary>
/// <param name="Offset">Byte offset of the field in the table.</param>
/// <param name="Size">Width of the field: 4 or 8 bytes.</param>
/// <param name="Target">Signature of the table it points to.</param>
public readonly record struct AcpiPointer(int Offset, int Size, string Target);

/// <summary>A checksum byte and the byte range it covers (the ACPI rule: the range sums to 0 mod 256).</summary>
/// <param name="Offset">Byte offset of the checksum byte.</param>
/// <param name="Start">First byte covered.</param>
/// <param name="Length">Number of bytes covered.</param>
public readonly record struct AcpiChecksum(int Offset, int Start, int Length);

/// <summary>
/// One built table: its bytes with every pointer field still zero, the pointers to patch and the checksums to
/// recompute once they are patched. <see cref="AcpiLayout"/> places a set of them.
/// </summary>
public sealed class AcpiTable
{
    /// <summary>Creates a table from its bytes, pointers and checksums.</summary>
    public AcpiTable(string signature, byte[] bytes, int alignment, IReadOnlyList<AcpiPointer> pointers, IReadOnlyList<AcpiChecksum> checksums)
    {
        Signature = signature;
        Bytes = bytes;
        Alignment = alignment;
        Pointers = pointers;
        Checksums = checksums;
        foreach (var c in checksums) Bytes[c.Offset] = ChecksumOf(Bytes.AsSpan(c.Start, c.Length), Bytes[c.Offset]);
    }

    /// <summary>The table's signature ("RSD PTR " for the RSDP); the name pointers use.</summary>
    public string Signature { get; }

    /// <summary>The table's bytes (pointer fields zero, checksums valid for that state).</summary>
    public byte[] Bytes { get; }

    /// <summary>Required alignment of its guest-physical address.</summary>
    public int Alignment { get; }

    /// <summary>Fields pointing at other tables.</summary>
    public IReadOnlyList<AcpiPointer> Pointers { get; }

    /// <summary>Checksum bytes, in the order they must be computed (RSDP: the 20-byte one before the extended one).</summary>
    public IReadOnlyList<AcpiChecksum> Checksums { get; }

    /// <summary>The value for a checksum byte currently holding <paramref name="current"/> so that <paramref name="range"/> sums to zero.</summary>
    public static byte ChecksumOf(ReadOnlySpan<byte> range, byte current)
    {
        byte sum = 0;
        foreach (var b in range) sum += b;
        return (byte)(current - sum);
    }

    /// <summary>Recomputes every checksum of a copy of this table laid at <paramref name="image"/>.</summary>
    internal void FixChecksums(Span<byte> image)
    {
        foreach (var c in Checksums) image[c.Offset] = ChecksumOf(image.Slice(c.Start, c.Length), image[c.Offset]);
    }
}

/// <summary>Little-endian table writer with ACPI's common System Description Table header.</summary>
internal sealed class TableWriter
{
    /// <summary>OEM ID in every header.</summary>
    public const string OemId = "HYVE  ";
    /// <summary>Creator ID in every header.</summary>
    public const string CreatorId = "HYVE";
    /// <summary>Size of the System Description Table header.</summary>
    public const int HeaderSize = 36;

    private readonly List<byte> _b = [];
    private readonly List<AcpiPointer> _pointers = [];

    public int Position => _b.Count;

    public byte[] ToArray() => [.. _b];

    public TableWriter U8(int v) { _b.Add((byte)v); return this; }
    public TableWriter U16(int v) { _b.Add((byte)v); _b.Add((byte)(v >> 8)); return this; }
    public TableWriter U32(uint v) { for (int i = 0; i < 4; i++) _b.Add((byte)(v >> (8 * i))); return this; }
    public TableWriter U64(ulong v) { for (int i = 0; i < 8; i++) _b.Add((byte)(v >> (8 * i))); return this; }
    public TableWriter Zeros(int n) { for (int i = 0; i < n; i++) _b.Add(0); return this; }
    public TableWriter Bytes(ReadOnlySpan<byte> bytes) { _b.AddRange(bytes); return this; }

    /// <summary>Writes an ASCII field of exactly <paramref name="width"/> bytes, padded with spaces.</summary>
    public TableWriter Ascii(string s, int width)
    {
        var bytes = Encoding.ASCII.GetBytes(s.PadRight(width));
        if (bytes.Length != width) throw new ArgumentException($"'{s}' does not fit {width} bytes");
        _b.AddRange(bytes);
        return this;
    }

    /// <summary>A pointer field to <paramref name="target"/>, zero until placement.</summary>
    public TableWriter Pointer(int size, string target)
    {
        _pointers.Add(new AcpiPointer(_b.Count, size, target));
        return Zeros(size);
    }

    /// <summary>A Generic Address Structure (ACPI 6.x 5.2.3.2).</summary>
    public TableWriter Gas(byte space, byte bitWidth, byte bitOffset, byte accessSize, ulong address) =>
        U8(space).U8(bitWidth).U8(bitOffset).U8(accessSize).U64(address);

    /// <summary>The SDT header; length and checksum are filled when the table is finished.</summary>
    public TableWriter Header(string signature, byte revision, string oemTableId)
    {
        Ascii(signature, 4).U32(0).U8(revision).U8(0).Ascii(OemId, 6).Ascii(oemTableId, 8).U32(1).Ascii(CreatorId, 4).U32(1);
        return this;
    }

    /// <summary>Completes an SDT: stores its length and checksum.</summary>
    public AcpiTable Finish(string signature, int alignment = 16)
    {
        var bytes = _b.ToArray();
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), (uint)bytes.Length);
        return new AcpiTable(signature, bytes, alignment, _pointers, [new AcpiChecksum(9, 0, bytes.Length)]);
    }

    /// <summary>Completes a table with custom checksums (RSDP) or none (FACS).</summary>
    public AcpiTable Finish(string signature, int alignment, IReadOnlyList<AcpiChecksum> checksums) =>
        new(signature, _b.ToArray(), alignment, _pointers, checksums);
}
