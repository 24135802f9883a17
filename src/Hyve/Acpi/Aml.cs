// SPDX-License-Identifier: BSD-2-Clause
using System.Text;

namespace Hyve.Acpi;

/// <summary>The address space of an OperationRegion (ACPI 6.x, 19.6.100).</summary>
public enum AmlRegionSpace : byte
{
    /// <summary>Memory.</summary>
    SystemMemory = 0,
    /// <summary>Port I/O.</summary>
    SystemIO = 1,
    /// <summary>Configuration space of the PCI function the region's scope names with _ADR.</summary>
    PciConfig = 2,
}

/// <summary>The access width of a Field (FieldFlags bits 0-3).</summary>
public enum AmlAccess : byte
{
    /// <summary>Any width.</summary>
    Any = 0,
    /// <summary>Bytes.</summary>
    Byte = 1,
    /// <summary>Words.</summary>
    Word = 2,
    /// <summary>Double words.</summary>
    DWord = 3,
    /// <summary>Quad words.</summary>
    QWord = 4,
}

/// <summary>The update rule of a Field (FieldFlags bits 5-6).</summary>
public enum AmlUpdate : byte
{
    /// <summary>Preserve bits not written.</summary>
    Preserve = 0,
    /// <summary>Write ones to bits not written.</summary>
    WriteAsOnes = 1,
    /// <summary>Write zeros to bits not written.</summary>
    WriteAsZeros = 2,
}

/// <summary>One element of a Field's list: a named unit of some bits, or a skip to a byte offset.</summary>
public readonly record struct AmlFieldUnit(string? Name, int Bits, int OffsetBytes)
{
    /// <summary>A named field unit <paramref name="bits"/> wide.</summary>
    public static AmlFieldUnit Named(string name, int bits) => new(name, bits, -1);

    /// <summary>Skips to byte offset <paramref name="bytes"/> from the region's start (ASL Offset()).</summary>
    public static AmlFieldUnit Offset(int bytes) => new(null, 0, bytes);
}

/// <summary>
/// An AML byte-code encoder (ACPI 6.x chapter 20). Every method returns the encoding of one term, so terms
/// compose as nested calls the way ASL nests: <c>Aml.Device("COM1", Aml.Name("_HID", Aml.EisaId("PNP0501")))</c>.
/// Tables are built once at VM start, so byte arrays are fine here.
/// </summary>
public static class Aml
{
    private const byte ZeroOp = 0x00, OneOp = 0x01, OnesOp = 0xFF;
    private const byte BytePrefix = 0x0A, WordPrefix = 0x0B, DWordPrefix = 0x0C, StringPrefix = 0x0D, QWordPrefix = 0x0E;
    private const byte DualNamePrefix = 0x2E, MultiNamePrefix = 0x2F, RootChar = 0x5C, ParentPrefixChar = 0x5E;
    private const byte ExtOpPrefix = 0x5B;

    /// <summary>Concatenates terms into one term list.</summary>
    public static byte[] Concat(params IEnumerable<byte[]> parts)
    {
        var list = new List<byte>();
        foreach (var p in parts) list.AddRange(p);
        return [.. list];
    }

    // ---- Package length -------------------------------------------------------------------

    /// <summary>
    /// Encodes a PkgLength whose value is <paramref name="value"/> as is (1-4 bytes): values up to 63 in one byte,
    /// otherwise a lead byte holding the count of following bytes (bits 7-6) and the low nibble, then the rest.
    /// </summary>
    public static byte[] EncodePkgLength(int value)
    {
        if (value < 0 || value > 0x0FFF_FFFF) throw new ArgumentOutOfRangeException(nameof(value), "AML package length exceeds 2^28-1");
        if (value <= 0x3F) return [(byte)value];
        int follow = value <= 0xFFF ? 1 : value <= 0xF_FFFF ? 2 : 3;
        var b = new byte[follow + 1];
        b[0] = (byte)((follow << 6) | (value & 0x0F));
        for (int i = 1; i <= follow; i++) b[i] = (byte)(value >> (4 + 8 * (i - 1)));
        return b;
    }

    /// <summary>Prefixes <paramref name="body"/> with the PkgLength that counts itself and the body, as every package-bearing opcode needs.</summary>
    public static byte[] WithPkgLength(byte[] body)
    {
        // The encoded length includes the PkgLength bytes themselves, so try each size until it fits.
        for (int n = 1; n <= 4; n++)
        {
            int total = body.Length + n;
            if (total > 0x0FFF_FFFF) break;
            var enc = EncodePkgLength(total);
            if (enc.Length == n) return [.. enc, .. body];
        }
        throw new ArgumentOutOfRangeException(nameof(body), "AML package too large");
    }

    // ---- Names ---------------------------------------------------------------------------

    /// <summary>Encodes one NameSeg: 1-4 characters, padded with '_' to four.</summary>
    public static byte[] NameSeg(string seg)
    {
        if (seg.Length is 0 or > 4) throw new ArgumentException($"AML name segment '{seg}' must be 1-4 characters", nameof(seg));
        var b = new byte[4];
        for (int i = 0; i < 4; i++)
        {
            char c = i < seg.Length ? seg[i] : '_';
            bool ok = c is (>= 'A' and <= 'Z') or '_' || (i > 0 && c is >= '0' and <= '9');
            if (!ok) throw new ArgumentException($"AML name segment '{seg}' has an invalid character '{c}'", nameof(seg));
            b[i] = (byte)c;
        }
        return b;
    }

    /// <summary>
    /// Encodes a NameString from ASL path syntax: optional leading '\' (root) or '^'s (parent), then segments
    /// separated by '.'; one segment is a bare NameSeg, two use DualNamePrefix, more use MultiNamePrefix, none NullName.
    /// </summary>
    public static byte[] NameString(string path)
    {
        var o = new List<byte>();
        int i = 0;
        if (path.StartsWith('\\')) { o.Add(RootChar); i = 1; }
        else while (i < path.Length && path[i] == '^') { o.Add(ParentPrefixChar); i++; }
        var rest = path[i..];
        var segs = rest.Length == 0 ? [] : rest.Split('.');
        switch (segs.Length)
        {
            case 0: o.Add(0x00); break;
            case 1: break;
            case 2: o.Add(DualNamePrefix); break;
            default:
                if (segs.Length > 255) throw new ArgumentException("AML path has too many segments", nameof(path));
                o.Add(MultiNamePrefix); o.Add((byte)segs.Length); break;
        }
        foreach (var s in segs) o.AddRange(NameSeg(s));
        return [.. o];
    }

    // ---- Data ----------------------------------------------------------------------------

    /// <summary>Encodes an integer in the shortest form: ZeroOp, OneOp, OnesOp (all 64 bits set) or a Byte/Word/DWord/QWord prefix.</summary>
    public static byte[] Integer(ulong v) => v switch
    {
        0 => [ZeroOp],
        1 => [OneOp],
        ulong.MaxValue => [OnesOp],
        <= 0xFF => [BytePrefix, (byte)v],
        <= 0xFFFF => [WordPrefix, (byte)v, (byte)(v >> 8)],
        <= 0xFFFF_FFFF => [DWordPrefix, (byte)v, (byte)(v >> 8), (byte)(v >> 16), (byte)(v >> 24)],
        _ => [QWordPrefix, .. BitConverter.GetBytes(v)],
    };

    /// <summary>Encodes an integer always as DWordConst (for values ASL writes as a 32-bit constant, like _PRT addresses).</summary>
    public static byte[] DWord(uint v) => [DWordPrefix, (byte)v, (byte)(v >> 8), (byte)(v >> 16), (byte)(v >> 24)];

    /// <summary>The constant Zero.</summary>
    public static byte[] Zero => [ZeroOp];

    /// <summary>The constant One.</summary>
    public static byte[] One => [OneOp];

    /// <summary>The constant Ones.</summary>
    public static byte[] Ones => [OnesOp];

    /// <summary>Encodes an ASCII string constant (NUL-terminated).</summary>
    public static byte[] String(string s)
    {
        foreach (char c in s)
            if (c is < (char)1 or > (char)0x7F) throw new ArgumentException("AML strings are ASCII without NUL", nameof(s));
        return [StringPrefix, .. Encoding.ASCII.GetBytes(s), 0];
    }

    /// <summary>Encodes a Buffer initialised with <paramref name="data"/>.</summary>
    public static byte[] Buffer(byte[] data) => [0x11, .. WithPkgLength([.. Integer((ulong)data.Length), .. data])];

    /// <summary>Encodes a Package of <paramref name="elements"/> (VarPackage when there are more than 255).</summary>
    public static byte[] Package(params IEnumerable<byte[]> elements)
    {
        var list = elements.ToList();
        var body = Concat(list);
        return list.Count <= 255
            ? [0x12, .. WithPkgLength([(byte)list.Count, .. body])]
            : [0x13, .. WithPkgLength([.. Integer((ulong)list.Count), .. body])];
    }

    /// <summary>Encodes ASL's ToUUID("xxxxxxxx-xxxx-...") as its 16-byte Buffer (first three fields little-endian).</summary>
    public static byte[] ToUuid(string uuid) => Buffer(Guid.Parse(uuid).ToByteArray());

    /// <summary>
    /// Encodes an EISA ID ("PNP0A03") as the DWord ASL's EisaId() makes: three letters of five bits and four
    /// hex digits, stored big-endian.
    /// </summary>
    public static byte[] EisaId(string id) => DWord(EisaIdValue(id));

    /// <summary>The integer value of an EISA ID as AML holds it.</summary>
    public static uint EisaIdValue(string id)
    {
        if (id.Length != 7 || !char.IsAsciiLetterUpper(id[0]) || !char.IsAsciiLetterUpper(id[1]) || !char.IsAsciiLetterUpper(id[2]))
            throw new ArgumentException($"'{id}' is not an EISA ID", nameof(id));
        uint v = ((uint)(id[0] - 0x40) << 26) | ((uint)(id[1] - 0x40) << 21) | ((uint)(id[2] - 0x40) << 16)
                 | Convert.ToUInt32(id[3..], 16);
        return System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(v);
    }

    // ---- Namespace modifiers and objects --------------------------------------------------

    /// <summary>Scope(path) { terms }.</summary>
    public static byte[] Scope(string path, params IEnumerable<byte[]> terms) => [0x10, .. WithPkgLength([.. NameString(path), .. Concat(terms)])];

    /// <summary>Device(name) { terms }.</summary>
    public static byte[] Device(string name, params IEnumerable<byte[]> terms) => [ExtOpPrefix, 0x82, .. WithPkgLength([.. NameString(name), .. Concat(terms)])];

    /// <summary>Name(name, value).</summary>
    public static byte[] Name(string name, byte[] value) => [0x08, .. NameString(name), .. value];

    /// <summary>Method(name, argCount, Serialized/NotSerialized) { terms }.</summary>
    public static byte[] Method(string name, int argCount, bool serialized, params IEnumerable<byte[]> terms)
    {
        if (argCount is < 0 or > 7) throw new ArgumentOutOfRangeException(nameof(argCount));
        byte flags = (byte)(argCount | (serialized ? 0x08 : 0));
        return [0x14, .. WithPkgLength([.. NameString(name), flags, .. Concat(terms)])];
    }

    /// <summary>OperationRegion(name, space, offset, length).</summary>
    public static byte[] OperationRegion(string name, AmlRegionSpace space, ulong offset, ulong length) =>
        [ExtOpPrefix, 0x80, .. NameString(name), (byte)space, .. Integer(offset), .. Integer(length)];

    /// <summary>Field(region, access, NoLock/Lock, update) { units }.</summary>
    public static byte[] Field(string region, AmlAccess access, bool lockRule, AmlUpdate update, params IEnumerable<AmlFieldUnit> units)
    {
        var body = new List<byte>(NameString(region)) { (byte)((byte)access | (lockRule ? 0x10 : 0) | ((byte)update << 5)) };
        long bit = 0;
        foreach (var u in units)
        {
            if (u.Name is null)
            {
                long skip = (long)u.OffsetBytes * 8 - bit;
                if (skip < 0) throw new ArgumentException("Field offsets must not go backwards", nameof(units));
                if (skip == 0) continue;
                // A ReservedField is a zero byte and a PkgLength holding the bit count as is.
                body.Add(0x00); body.AddRange(EncodePkgLength((int)skip));
                bit += skip;
            }
            else
            {
                if (u.Bits <= 0) throw new ArgumentException("Field unit widths must be positive", nameof(units));
                body.AddRange(NameSeg(u.Name)); body.AddRange(EncodePkgLength(u.Bits));
                bit += u.Bits;
            }
        }
        return [ExtOpPrefix, 0x81, .. WithPkgLength([.. body])];
    }

    /// <summary>CreateByteField(buffer, byteIndex, name).</summary>
    public static byte[] CreateByteField(byte[] buffer, ulong index, string name) => [0x8C, .. buffer, .. Integer(index), .. NameString(name)];

    /// <summary>CreateWordField(buffer, byteIndex, name).</summary>
    public static byte[] CreateWordField(byte[] buffer, ulong index, string name) => [0x8B, .. buffer, .. Integer(index), .. NameString(name)];

    /// <summary>CreateDWordField(buffer, byteIndex, name).</summary>
    public static byte[] CreateDWordField(byte[] buffer, ulong index, string name) => [0x8A, .. buffer, .. Integer(index), .. NameString(name)];

    // ---- Operands ------------------------------------------------------------------------

    /// <summary>ArgN (0-6).</summary>
    public static byte[] Arg(int n) => n is >= 0 and <= 6 ? [(byte)(0x68 + n)] : throw new ArgumentOutOfRangeException(nameof(n));

    /// <summary>LocalN (0-7).</summary>
    public static byte[] Local(int n) => n is >= 0 and <= 7 ? [(byte)(0x60 + n)] : throw new ArgumentOutOfRangeException(nameof(n));

    /// <summary>A reference to a named object (a NameString used as an operand or target).</summary>
    public static byte[] Ref(string path) => NameString(path);

    /// <summary>Invokes the method at <paramref name="path"/> with <paramref name="args"/> (its definition fixes the count).</summary>
    public static byte[] Call(string path, params IEnumerable<byte[]> args) => [.. NameString(path), .. Concat(args)];

    /// <summary>The null target: the result is not stored.</summary>
    public static byte[] NoTarget => [0x00];

    // ---- Statements and expressions ------------------------------------------------------

    /// <summary>Return(value).</summary>
    public static byte[] Return(byte[] value) => [0xA4, .. value];

    /// <summary>If(predicate) { terms }.</summary>
    public static byte[] If(byte[] predicate, params IEnumerable<byte[]> terms) => [0xA0, .. WithPkgLength([.. predicate, .. Concat(terms)])];

    /// <summary>Else { terms } (must directly follow an If).</summary>
    public static byte[] Else(params IEnumerable<byte[]> terms) => [0xA1, .. WithPkgLength(Concat(terms))];

    /// <summary>Store(source, destination).</summary>
    public static byte[] Store(byte[] source, byte[] destination) => [0x70, .. source, .. destination];

    /// <summary>LEqual(a, b).</summary>
    public static byte[] LEqual(byte[] a, byte[] b) => [0x93, .. a, .. b];

    /// <summary>LLess(a, b).</summary>
    public static byte[] LLess(byte[] a, byte[] b) => [0x95, .. a, .. b];

    /// <summary>LGreater(a, b).</summary>
    public static byte[] LGreater(byte[] a, byte[] b) => [0x94, .. a, .. b];

    /// <summary>LNot(a).</summary>
    public static byte[] LNot(byte[] a) => [0x92, .. a];

    /// <summary>LAnd(a, b).</summary>
    public static byte[] LAnd(byte[] a, byte[] b) => [0x90, .. a, .. b];

    /// <summary>LOr(a, b).</summary>
    public static byte[] LOr(byte[] a, byte[] b) => [0x91, .. a, .. b];

    /// <summary>And(a, b, target).</summary>
    public static byte[] And(byte[] a, byte[] b, byte[]? target = null) => [0x7B, .. a, .. b, .. target ?? NoTarget];

    /// <summary>Or(a, b, target).</summary>
    public static byte[] Or(byte[] a, byte[] b, byte[]? target = null) => [0x7D, .. a, .. b, .. target ?? NoTarget];

    /// <summary>Add(a, b, target).</summary>
    public static byte[] Add(byte[] a, byte[] b, byte[]? target = null) => [0x72, .. a, .. b, .. target ?? NoTarget];

    /// <summary>Subtract(a, b, target).</summary>
    public static byte[] Subtract(byte[] a, byte[] b, byte[]? target = null) => [0x74, .. a, .. b, .. target ?? NoTarget];

    /// <summary>ShiftLeft(value, count, target).</summary>
    public static byte[] ShiftLeft(byte[] value, byte[] count, byte[]? target = null) => [0x79, .. value, .. count, .. target ?? NoTarget];

    /// <summary>ShiftRight(value, count, target).</summary>
    public static byte[] ShiftRight(byte[] value, byte[] count, byte[]? target = null) => [0x7A, .. value, .. count, .. target ?? NoTarget];

    /// <summary>LNotEqual(a, b), which AML spells LNot(LEqual(a, b)).</summary>
    public static byte[] LNotEqual(byte[] a, byte[] b) => LNot(LEqual(a, b));

    /// <summary>Increment(name).</summary>
    public static byte[] Increment(byte[] name) => [0x75, .. name];

    /// <summary>Decrement(name); as an expression it yields the decremented value.</summary>
    public static byte[] Decrement(byte[] name) => [0x76, .. name];

    /// <summary>FindSetRightBit(value, target): one plus the index of the lowest set bit, or 0.</summary>
    public static byte[] FindSetRightBit(byte[] value, byte[]? target = null) => [0x82, .. value, .. target ?? NoTarget];

    /// <summary>Notify(object, value).</summary>
    public static byte[] Notify(byte[] obj, byte[] value) => [0x86, .. obj, .. value];
}
