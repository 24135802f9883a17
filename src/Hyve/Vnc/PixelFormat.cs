// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;

namespace Hyve.Vnc;

/// <summary>
/// An RFB PIXEL_FORMAT (RFC 6143 7.4): bits per pixel (8, 16, 32), depth, byte order, true colour and the maxima and
/// shifts of the three components. Converts the server's 0x00RRGGBB pixels into a client's format.
/// </summary>
public readonly record struct PixelFormat(byte BitsPerPixel, byte Depth, bool BigEndian, bool TrueColour,
    ushort RedMax, ushort GreenMax, ushort BlueMax, byte RedShift, byte GreenShift, byte BlueShift)
{
    /// <summary>The server's own format: 32 bits, depth 24, little-endian, 8 bits per component (red at bit 16).</summary>
    public static PixelFormat Server { get; } = new(32, 24, false, true, 255, 255, 255, 16, 8, 0);

    /// <summary>Bytes per pixel on the wire.</summary>
    public int BytesPerPixel => BitsPerPixel / 8;

    /// <summary>Reads the 16-byte wire form.</summary>
    public static PixelFormat Read(ReadOnlySpan<byte> b) => new(b[0], b[1], b[2] != 0, b[3] != 0,
        BinaryPrimitives.ReadUInt16BigEndian(b[4..]), BinaryPrimitives.ReadUInt16BigEndian(b[6..]), BinaryPrimitives.ReadUInt16BigEndian(b[8..]),
        b[10], b[11], b[12]);

    /// <summary>Writes the 16-byte wire form.</summary>
    public void Write(Span<byte> b)
    {
        b[..16].Clear();
        b[0] = BitsPerPixel; b[1] = Depth; b[2] = (byte)(BigEndian ? 1 : 0); b[3] = (byte)(TrueColour ? 1 : 0);
        BinaryPrimitives.WriteUInt16BigEndian(b[4..], RedMax);
        BinaryPrimitives.WriteUInt16BigEndian(b[6..], GreenMax);
        BinaryPrimitives.WriteUInt16BigEndian(b[8..], BlueMax);
        b[10] = RedShift; b[11] = GreenShift; b[12] = BlueShift;
    }

    /// <summary>Why a client's format cannot be served, or null when it can (true colour, 8/16/32 bits, shifts in range).</summary>
    public string? Problem()
    {
        if (BitsPerPixel is not (8 or 16 or 32)) return $"bits-per-pixel {BitsPerPixel}";
        if (!TrueColour) return "colour-map pixel formats";
        if (RedShift >= BitsPerPixel || GreenShift >= BitsPerPixel || BlueShift >= BitsPerPixel) return "component shift beyond the pixel";
        return null;
    }

    /// <summary>The client's pixel value for 0x00RRGGBB.</summary>
    public uint Convert(uint rgb)
    {
        if (this == Server) return rgb & 0xffffff;
        uint r = (rgb >> 16) & 0xff, g = (rgb >> 8) & 0xff, b = rgb & 0xff;
        return (uint)((r * RedMax + 127) / 255) << RedShift | (uint)((g * GreenMax + 127) / 255) << GreenShift
            | (uint)((b * BlueMax + 127) / 255) << BlueShift;
    }

    /// <summary>Writes a converted pixel value (from <see cref="Convert"/>) in the client's byte order; returns its size.</summary>
    public int Put(uint value, Span<byte> dst)
    {
        switch (BitsPerPixel)
        {
            case 8: dst[0] = (byte)value; return 1;
            case 16:
                if (BigEndian) BinaryPrimitives.WriteUInt16BigEndian(dst, (ushort)value);
                else BinaryPrimitives.WriteUInt16LittleEndian(dst, (ushort)value);
                return 2;
            default:
                if (BigEndian) BinaryPrimitives.WriteUInt32BigEndian(dst, value);
                else BinaryPrimitives.WriteUInt32LittleEndian(dst, value);
                return 4;
        }
    }
}
