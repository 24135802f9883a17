// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.IO.Compression;

namespace Hyve.Vnc;

/// <summary>
/// RFB's ZRLE encoding (RFC 6143 7.7.6): a rectangle is cut into 64x64 tiles, each written as a solid colour, a packed
/// palette of 2-16 colours, plain RLE or raw CPIXELs (whichever is smallest of those), and the tile data of the
/// rectangle is compressed with zlib into one stream that lasts as long as the connection, flushed (Z_SYNC_FLUSH) at
/// the end of every rectangle. A CPIXEL is 3 bytes when a 32-bit true-colour format's components fit in 24 bits.
/// </summary>
public sealed class ZrleEncoder : IDisposable
{
    private readonly MemoryStream _compressed = new();
    private readonly ZLibStream _zlib;
    private readonly MemoryStream _raw = new();
    private readonly uint[] _pixels = new uint[FrameSource.Tile * FrameSource.Tile];
    private readonly uint[] _palette = new uint[16];
    private readonly byte[] _scratch = new byte[8];

    /// <summary>A fresh zlib stream (one per client connection).</summary>
    public ZrleEncoder() => _zlib = new ZLibStream(_compressed, CompressionLevel.Fastest, leaveOpen: true);

    /// <summary>Encodes the rectangle of <paramref name="frame"/> (row length <paramref name="stride"/>) and appends its
    /// ZRLE body (length and zlib data) to <paramref name="output"/>.</summary>
    public void Encode(ReadOnlySpan<uint> frame, int stride, int x, int y, int w, int h, in PixelFormat pf, Stream output)
    {
        _raw.SetLength(0);
        var (cpix, offset) = CpixelLayout(pf);
        for (int ty = y; ty < y + h; ty += FrameSource.Tile)
            for (int tx = x; tx < x + w; tx += FrameSource.Tile)
                EncodeTile(frame, stride, tx, ty, Math.Min(FrameSource.Tile, x + w - tx), Math.Min(FrameSource.Tile, y + h - ty), pf, cpix, offset);
        _compressed.SetLength(0);
        _zlib.Write(_raw.GetBuffer(), 0, (int)_raw.Length);
        _zlib.Flush();
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(len, (uint)_compressed.Length);
        output.Write(len);
        output.Write(_compressed.GetBuffer(), 0, (int)_compressed.Length);
    }

    /// <summary>CPIXEL size and which bytes of the full pixel it keeps (RFC 6143 7.7.6).</summary>
    public static (int Size, int Offset) CpixelLayout(in PixelFormat pf)
    {
        if (pf.BitsPerPixel != 32 || !pf.TrueColour || pf.Depth > 24) return (pf.BytesPerPixel, 0);
        uint mask = (uint)pf.RedMax << pf.RedShift | (uint)pf.GreenMax << pf.GreenShift | (uint)pf.BlueMax << pf.BlueShift;
        bool low = (mask & 0xff000000) == 0, high = (mask & 0xff) == 0;
        if (!low && !high) return (4, 0);
        // Keep the three bytes that carry the components, in the client's byte order.
        return (3, low == pf.BigEndian ? 1 : 0);
    }

    private void EncodeTile(ReadOnlySpan<uint> frame, int stride, int x, int y, int w, int h, in PixelFormat pf, int cpix, int cpixOffset)
    {
        int n = w * h;
        var px = _pixels.AsSpan(0, n);
        for (int row = 0; row < h; row++)
        {
            var src = frame.Slice((y + row) * stride + x, w);
            for (int i = 0; i < w; i++) px[row * w + i] = pf.Convert(src[i]);
        }
        int colours = 0;
        uint last = ~px[0];
        for (int i = 0; i < n && colours <= 16; i++)
        {
            uint p = px[i];
            if (p == last) continue;
            last = p;
            if (_palette.AsSpan(0, Math.Min(colours, 16)).IndexOf(p) < 0)
            {
                if (colours < 16) _palette[colours] = p;
                colours++;
            }
        }
        if (colours == 1)
        {
            _raw.WriteByte(1);
            Cpixel(px[0], pf, cpix, cpixOffset);
            return;
        }
        if (colours <= 16)
        {
            _raw.WriteByte((byte)colours);
            for (int i = 0; i < colours; i++) Cpixel(_palette[i], pf, cpix, cpixOffset);
            int bits = colours == 2 ? 1 : colours <= 4 ? 2 : 4;
            var pal = _palette.AsSpan(0, colours);
            for (int row = 0; row < h; row++)
            {
                int acc = 0, used = 0;
                for (int i = 0; i < w; i++)
                {
                    acc = acc << bits | pal.IndexOf(px[row * w + i]);
                    used += bits;
                    if (used == 8) { _raw.WriteByte((byte)acc); acc = 0; used = 0; }
                }
                if (used > 0) _raw.WriteByte((byte)(acc << (8 - used)));
            }
            return;
        }
        // Many colours: plain RLE when the runs make it smaller than raw.
        long rle = 0;
        for (int i = 0; i < n;)
        {
            int j = i + 1;
            while (j < n && px[j] == px[i]) j++;
            rle += cpix + (j - i - 1) / 255 + 1;
            i = j;
        }
        if (rle < (long)n * cpix)
        {
            _raw.WriteByte(128);
            for (int i = 0; i < n;)
            {
                int j = i + 1;
                while (j < n && px[j] == px[i]) j++;
                Cpixel(px[i], pf, cpix, cpixOffset);
                int len = j - i - 1;
                while (len >= 255) { _raw.WriteByte(255); len -= 255; }
                _raw.WriteByte((byte)len);
                i = j;
            }
            return;
        }
        _raw.WriteByte(0);
        for (int i = 0; i < n; i++) Cpixel(px[i], pf, cpix, cpixOffset);
    }

    private void Cpixel(uint value, in PixelFormat pf, int cpix, int offset)
    {
        pf.Put(value, _scratch);
        _raw.Write(_scratch, offset, cpix);
    }

    /// <summary>Ends the zlib stream.</summary>
    public void Dispose()
    {
        _zlib.Dispose();
        _compressed.Dispose();
        _raw.Dispose();
    }
}
