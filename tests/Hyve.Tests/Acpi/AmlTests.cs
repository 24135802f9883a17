// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Acpi;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>AML encodings against the ACPI 6.x grammar (chapter 20).</summary>
public class AmlTests
{
    /// <summary>Decodes a PkgLength per ACPI 20.2.4; returns (value, bytes used).</summary>
    private static (int Value, int Size) DecodePkgLength(ReadOnlySpan<byte> b)
    {
        int follow = b[0] >> 6;
        if (follow == 0) return (b[0] & 0x3F, 1);
        int v = b[0] & 0x0F;
        for (int i = 1; i <= follow; i++) v |= b[i] << (4 + 8 * (i - 1));
        return (v, follow + 1);
    }

    /// <summary>Concatenates bytes (ints) and ASCII strings.</summary>
    private static byte[] C(params object[] parts)
    {
        var l = new List<byte>();
        foreach (var p in parts)
            if (p is string s) l.AddRange(System.Text.Encoding.ASCII.GetBytes(s));
            else l.Add(Convert.ToByte(p));
        return [.. l];
    }

    [Theory]
    [InlineData(0, new byte[] { 0x00 })]
    [InlineData(63, new byte[] { 0x3F })]
    [InlineData(64, new byte[] { 0x40, 0x04 })]
    [InlineData(4095, new byte[] { 0x4F, 0xFF })]
    [InlineData(4096, new byte[] { 0x80, 0x00, 0x01 })]
    [InlineData(0xFFFFF, new byte[] { 0x8F, 0xFF, 0xFF })]
    [InlineData(0x100000, new byte[] { 0xC0, 0x00, 0x00, 0x01 })]
    [InlineData(0xFFFFFFF, new byte[] { 0xCF, 0xFF, 0xFF, 0xFF })]
    public void PkgLength_value_encodings_at_the_size_boundaries(int value, byte[] expected)
    {
        Assert.Equal(expected, Aml.EncodePkgLength(value));
        Assert.Equal((value, expected.Length), DecodePkgLength(expected));
    }

    [Fact]
    public void PkgLength_beyond_28_bits_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Aml.EncodePkgLength(0x1000_0000));
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(62, 1)]      // 62 + 1 = 63: the largest one-byte package
    [InlineData(63, 2)]      // 63 + 1 = 64 does not fit one byte, so 63 + 2 = 65
    [InlineData(4093, 2)]    // 4093 + 2 = 4095: the largest two-byte package
    [InlineData(4094, 3)]    // 4094 + 2 = 4096 does not fit two bytes
    [InlineData(0xFFFFC, 3)] // 0xFFFFC + 3 = 0xFFFFF
    [InlineData(0xFFFFD, 4)]
    public void Package_length_counts_itself_and_grows_at_the_boundaries(int bodyLength, int lengthBytes)
    {
        var body = new byte[bodyLength];
        var enc = Aml.WithPkgLength(body);
        var (value, size) = DecodePkgLength(enc);
        Assert.Equal(lengthBytes, size);
        Assert.Equal(enc.Length, value);
        Assert.Equal(bodyLength + lengthBytes, enc.Length);
    }

    [Theory]
    [InlineData(0UL, new byte[] { 0x00 })]
    [InlineData(1UL, new byte[] { 0x01 })]
    [InlineData(2UL, new byte[] { 0x0A, 0x02 })]
    [InlineData(0xFFUL, new byte[] { 0x0A, 0xFF })]
    [InlineData(0x100UL, new byte[] { 0x0B, 0x00, 0x01 })]
    [InlineData(0xFFFFUL, new byte[] { 0x0B, 0xFF, 0xFF })]
    [InlineData(0x10000UL, new byte[] { 0x0C, 0x00, 0x00, 0x01, 0x00 })]
    [InlineData(0xFFFFFFFFUL, new byte[] { 0x0C, 0xFF, 0xFF, 0xFF, 0xFF })]
    [InlineData(0x100000000UL, new byte[] { 0x0E, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00 })]
    [InlineData(ulong.MaxValue, new byte[] { 0xFF })]
    public void Integers_take_the_shortest_encoding(ulong value, byte[] expected)
    {
        Assert.Equal(expected, Aml.Integer(value));
    }

    [Fact]
    public void Name_strings_pad_segments_and_use_root_parent_dual_and_multi_prefixes()
    {
        Assert.Equal("_SB_"u8.ToArray(), Aml.NameString("_SB"));
        Assert.Equal(C(0x5C, "_SB_"), Aml.NameString("\\_SB"));
        Assert.Equal(C(0x5C, 0x2E, "_SB_PC00"), Aml.NameString("\\_SB.PC00"));
        Assert.Equal(C(0x5C, 0x2F, 0x04, "_SB_PC00ISA_LNKA"), Aml.NameString("\\_SB.PC00.ISA.LNKA"));
        Assert.Equal(C(0x5E, 0x5E, "PIRA"), Aml.NameString("^^PIRA"));
        Assert.Equal(C(0x5E, 0x2E, "ISA_LNKB"), Aml.NameString("^ISA.LNKB"));
        Assert.Equal(new byte[] { 0x5C, 0x00 }, Aml.NameString("\\"));
    }

    [Theory]
    [InlineData("1ABC")]
    [InlineData("ABCDE")]
    [InlineData("pc00")]
    [InlineData("A-B")]
    public void Invalid_name_segments_are_refused(string seg)
    {
        Assert.Throws<ArgumentException>(() => Aml.NameString(seg));
    }

    [Theory]
    [InlineData("PNP0A03", 0x030AD041u)]
    [InlineData("PNP0A08", 0x080AD041u)]
    [InlineData("PNP0501", 0x0105D041u)]
    [InlineData("PNP0C0F", 0x0F0CD041u)]
    public void EisaId_packs_three_letters_and_four_hex_digits(string id, uint expected)
    {
        Assert.Equal(expected, Aml.EisaIdValue(id));
        Assert.Equal([0x0C, (byte)expected, (byte)(expected >> 8), (byte)(expected >> 16), (byte)(expected >> 24)], Aml.EisaId(id));
    }

    [Fact]
    public void Strings_buffers_and_packages()
    {
        Assert.Equal(C(0x0D, "ACPI0007", 0x00), Aml.String("ACPI0007"));
        Assert.Equal(new byte[] { 0x11, 0x05, 0x0A, 0x02, 0xAA, 0xBB }, Aml.Buffer([0xAA, 0xBB]));
        Assert.Equal(new byte[] { 0x12, 0x05, 0x02, 0x0A, 0x05, 0x00 }, Aml.Package(Aml.Integer(5), Aml.Zero));
        var big = Aml.Package(Enumerable.Range(0, 300).Select(_ => Aml.Zero));
        Assert.Equal(0x13, big[0]); // VarPackageOp: more than 255 elements
    }

    [Fact]
    public void Methods_carry_argument_count_and_serialize_flag()
    {
        var m = Aml.Method("_SRS", 1, true, Aml.Return(Aml.Zero));
        Assert.Equal(C(0x14, 0x08, "_SRS", 0x09, 0xA4, 0x00), m);
        var pic = Aml.Method("_PIC", 1, false, Aml.Store(Aml.Arg(0), Aml.Ref("PICM")));
        Assert.Equal(C(0x14, 0x0C, "_PIC", 0x01, 0x70, 0x68, "PICM"), pic);
    }

    [Fact]
    public void Scope_device_name_and_opregion_encodings()
    {
        Assert.Equal(C(0x10, 0x06, 0x5C, "_SB_"), Aml.Scope("\\_SB"));
        Assert.Equal(C(0x5B, 0x82, 0x05, "COM1"), Aml.Device("COM1"));
        Assert.Equal(C(0x08, "_UID", 0x01), Aml.Name("_UID", Aml.One));
        Assert.Equal(C(0x5B, 0x80, "LPCR", 0x02, 0x00, 0x0B, 0x00, 0x01),
            Aml.OperationRegion("LPCR", AmlRegionSpace.PciConfig, 0, 0x100));
    }

    [Fact]
    public void Field_lists_named_units_and_offsets_as_reserved_bits()
    {
        var f = Aml.Field("LPCR", AmlAccess.Byte, true, AmlUpdate.WriteAsZeros,
            AmlFieldUnit.Offset(0x60), AmlFieldUnit.Named("PIRA", 8), AmlFieldUnit.Offset(0x68), AmlFieldUnit.Named("PIRE", 8));
        // Flags: ByteAcc (1) | Lock (0x10) | WriteAsZeros (2 << 5).
        var body = C("LPCR", 0x51, 0x00, 0x40, 0x30, "PIRA", 0x08, 0x00, 0x38, "PIRE", 0x08);
        Assert.Equal([0x5B, 0x81, (byte)(body.Length + 1), .. body], f);
    }

    [Fact]
    public void Control_flow_and_arithmetic_encodings()
    {
        Assert.Equal(new byte[] { 0xA0, 0x06, 0x93, 0x68, 0x01, 0xA4, 0x00 }, Aml.If(Aml.LEqual(Aml.Arg(0), Aml.One), Aml.Return(Aml.Zero)));
        Assert.Equal(new byte[] { 0xA1, 0x03, 0xA4, 0x01 }, Aml.Else(Aml.Return(Aml.One)));
        Assert.Equal(new byte[] { 0x7B, 0x68, 0x0A, 0x0F, 0x60 }, Aml.And(Aml.Arg(0), Aml.Integer(15), Aml.Local(0)));
        Assert.Equal(new byte[] { 0x79, 0x01, 0x60, 0x00 }, Aml.ShiftLeft(Aml.One, Aml.Local(0)));
        Assert.Equal(new byte[] { 0x82, 0x69, 0x67 }, Aml.FindSetRightBit(Aml.Arg(1), Aml.Local(7)));
        Assert.Throws<ArgumentOutOfRangeException>(() => Aml.Arg(7));
        Assert.Throws<ArgumentOutOfRangeException>(() => Aml.Local(8));
    }

    [Fact]
    public void Resource_descriptors_have_their_small_and_large_layouts_and_an_end_tag()
    {
        var rt = new AmlResourceTemplate().Io(0x3F8, 8).IrqNoFlags(4).Descriptors;
        Assert.Equal(new byte[] { 0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00 }, rt);

        var irq = new AmlResourceTemplate().Irq(edge: false, activeLow: true, shared: true, 5, 10).Descriptors;
        Assert.Equal(new byte[] { 0x23, 0x20, 0x04, 0x18, 0x79, 0x00 }, irq);

        var m = new AmlResourceTemplate().Memory32Fixed(0xFED00000, 0x400).Descriptors;
        Assert.Equal(new byte[] { 0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0xD0, 0xFE, 0x00, 0x04, 0x00, 0x00, 0x79, 0x00 }, m);

        var ext = new AmlResourceTemplate().Interrupt(edge: false, activeLow: true, shared: true, 20).Descriptors;
        Assert.Equal(new byte[] { 0x89, 0x06, 0x00, 0x0D, 0x01, 20, 0, 0, 0, 0x79, 0x00 }, ext);

        var w = new AmlResourceTemplate().WordIo(0x0D00, 0xFFFF).Descriptors;
        Assert.Equal(16 + 2, w.Length);
        Assert.Equal(new byte[] { 0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03 }, w[..6]);
        Assert.Equal(new byte[] { 0x00, 0xF3 }, w[14..16]); // length 0xF300

        var dw = new AmlResourceTemplate().DWordMemory(0xC0000000, 0xDFFFFFFF).Descriptors;
        Assert.Equal(26 + 2, dw.Length);
        var qw = new AmlResourceTemplate().QWordMemory(0x10_0000_0000, 0x1F_FFFF_FFFF).Descriptors;
        Assert.Equal(46 + 2, qw.Length);
        Assert.Equal(0x8A, qw[0]);

        var buf = new AmlResourceTemplate().IrqNoFlags(8).ToBuffer();
        Assert.Equal(new byte[] { 0x11, 0x08, 0x0A, 0x05, 0x22, 0x00, 0x01, 0x79, 0x00 }, buf);
    }
}
