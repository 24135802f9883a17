// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.IO.Compression;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Hyve.Vnc;

namespace Hyve.Tests.Vnc;

/// <summary>One rectangle of a FramebufferUpdate as the decoder saw it.</summary>
public sealed record RfbRect(int X, int Y, int W, int H, int Encoding);

/// <summary>
/// A small RFB client written from RFC 6143 for the tests: the handshake at a chosen protocol version, security None or
/// VNC authentication, SetPixelFormat, SetEncodings, update requests, key events, and a decoder for Raw, CopyRect, ZRLE
/// (every subencoding) and DesktopSize that keeps the client's picture as 0x00RRGGBB pixels.
/// </summary>
public sealed class RfbTestClient : IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _s;
    private readonly ChunkStream _zin = new();
    private ZLibStream? _zlib;

    /// <summary>Connects (no handshake yet).</summary>
    public RfbTestClient(EndPoint ep)
    {
        _socket = ep is UnixDomainSocketEndPoint ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(ep.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        _socket.ReceiveTimeout = 20000;
        _socket.Connect(ep);
        _s = new NetworkStream(_socket, true);
    }

    /// <summary>Server's version line.</summary>
    public string ServerVersion { get; private set; } = "";
    /// <summary>Security types the server offered (3.7/3.8) or chose (3.3).</summary>
    public byte[] SecurityTypes { get; private set; } = [];
    /// <summary>Framebuffer width.</summary>
    public int Width { get; private set; }
    /// <summary>Framebuffer height.</summary>
    public int Height { get; private set; }
    /// <summary>The desktop name.</summary>
    public string Name { get; private set; } = "";
    /// <summary>The server's pixel format.</summary>
    public PixelFormat ServerFormat { get; private set; }
    /// <summary>The format asked for (what the decoder reads).</summary>
    public PixelFormat Format { get; private set; } = PixelFormat.Server;
    /// <summary>The picture, 0x00RRGGBB.</summary>
    public uint[] Pixels { get; private set; } = [];
    /// <summary>Bytes received in updates so far.</summary>
    public long UpdateBytes { get; private set; }

    /// <summary>Runs the handshake; returns the SecurityResult (0 ok; -1 when the version has none).</summary>
    public int Handshake(int minor = 8, string? password = null)
    {
        var v = new byte[12];
        _s.ReadExactly(v);
        ServerVersion = Encoding.ASCII.GetString(v);
        _s.Write(Encoding.ASCII.GetBytes($"RFB 003.00{minor}\n"));
        byte type;
        if (minor == 3)
        {
            type = (byte)ReadU32();
            SecurityTypes = [type];
        }
        else
        {
            int n = _s.ReadByte();
            SecurityTypes = new byte[n];
            _s.ReadExactly(SecurityTypes);
            type = password is null ? (byte)1 : (byte)2;
            _s.WriteByte(type);
        }
        if (type == 2)
        {
            var challenge = new byte[16];
            _s.ReadExactly(challenge);
            _s.Write(VncDes.Response(password ?? "", challenge));
        }
        int result = -1;
        if (type == 2 || minor == 8)
        {
            result = (int)ReadU32();
            if (result != 0) return result;
        }
        _s.WriteByte(1); // shared
        var init = new byte[24];
        _s.ReadExactly(init);
        Width = BinaryPrimitives.ReadUInt16BigEndian(init);
        Height = BinaryPrimitives.ReadUInt16BigEndian(init.AsSpan(2));
        ServerFormat = PixelFormat.Read(init.AsSpan(4, 16));
        var name = new byte[BinaryPrimitives.ReadUInt32BigEndian(init.AsSpan(20))];
        _s.ReadExactly(name);
        Name = Encoding.UTF8.GetString(name);
        Pixels = new uint[Width * Height];
        return result;
    }

    /// <summary>Reads a failure reason string (3.8).</summary>
    public string ReadReason()
    {
        var b = new byte[ReadU32()];
        _s.ReadExactly(b);
        return Encoding.UTF8.GetString(b);
    }

    /// <summary>Sends SetPixelFormat.</summary>
    public void SetPixelFormat(PixelFormat pf)
    {
        var b = new byte[20];
        pf.Write(b.AsSpan(4));
        _s.Write(b);
        Format = pf;
    }

    /// <summary>Sends SetEncodings.</summary>
    public void SetEncodings(params int[] encodings)
    {
        var b = new byte[4 + 4 * encodings.Length];
        b[0] = 2;
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(2), (ushort)encodings.Length);
        for (int i = 0; i < encodings.Length; i++) BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(4 + 4 * i), encodings[i]);
        _s.Write(b);
    }

    /// <summary>Sends FramebufferUpdateRequest for the whole screen.</summary>
    public void Request(bool incremental)
    {
        var b = new byte[10];
        b[0] = 3; b[1] = (byte)(incremental ? 1 : 0);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), (ushort)Width);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(8), (ushort)Height);
        _s.Write(b);
    }

    /// <summary>Sends a key press or release.</summary>
    public void Key(uint keysym, bool down)
    {
        var b = new byte[8];
        b[0] = 4; b[1] = (byte)(down ? 1 : 0);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(4), keysym);
        _s.Write(b);
    }

    /// <summary>Sends a PointerEvent: position and button mask (bit 0 left, 1 middle, 2 right, 3/4 wheel up/down).</summary>
    public void Pointer(int x, int y, int buttons)
    {
        var b = new byte[6];
        b[0] = 5; b[1] = (byte)buttons;
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(2), (ushort)x);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4), (ushort)y);
        _s.Write(b);
    }

    /// <summary>Types <paramref name="text"/> (ASCII; '\r' is Return), pausing between keys.</summary>
    public void Type(string text, int pauseMs = 150)
    {
        foreach (char c in text)
        {
            uint sym = c == '\r' ? 0xff0du : c;
            Key(sym, true);
            Thread.Sleep(pauseMs / 2);
            Key(sym, false);
            Thread.Sleep(pauseMs / 2);
        }
    }

    /// <summary>Sends raw bytes (for malformed messages).</summary>
    public void Send(params byte[] b) => _s.Write(b);

    /// <summary>True once the server has closed the connection (reads EOF within the timeout).</summary>
    public bool ClosedByServer(int ms = 5000)
    {
        _socket.ReceiveTimeout = ms;
        try
        {
            var b = new byte[4096];
            while (true) if (_s.Read(b) == 0) return true;
        }
        catch (IOException) { return false; }
    }

    /// <summary>Reads one server message; for a FramebufferUpdate decodes it and returns its rectangles.</summary>
    public List<RfbRect> ReadUpdate()
    {
        while (true)
        {
            int type = _s.ReadByte();
            if (type < 0) throw new EndOfStreamException("server closed");
            if (type == 0) break;
            if (type == 2) continue; // Bell
            if (type == 3) { var h = new byte[7]; _s.ReadExactly(h); var t = new byte[BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(3))]; _s.ReadExactly(t); continue; }
            throw new InvalidDataException($"unexpected server message {type}");
        }
        var hdr = new byte[3];
        _s.ReadExactly(hdr);
        int count = BinaryPrimitives.ReadUInt16BigEndian(hdr.AsSpan(1));
        var rects = new List<RfbRect>();
        UpdateBytes += 4;
        for (int i = 0; i < count; i++)
        {
            var r = new byte[12];
            _s.ReadExactly(r);
            UpdateBytes += 12;
            int x = BinaryPrimitives.ReadUInt16BigEndian(r), y = BinaryPrimitives.ReadUInt16BigEndian(r.AsSpan(2));
            int w = BinaryPrimitives.ReadUInt16BigEndian(r.AsSpan(4)), h = BinaryPrimitives.ReadUInt16BigEndian(r.AsSpan(6));
            int enc = BinaryPrimitives.ReadInt32BigEndian(r.AsSpan(8));
            rects.Add(new RfbRect(x, y, w, h, enc));
            switch (enc)
            {
                case 0: DecodeRaw(x, y, w, h); break;
                case 1:
                {
                    var sxy = new byte[4];
                    _s.ReadExactly(sxy);
                    UpdateBytes += 4;
                    int sx = BinaryPrimitives.ReadUInt16BigEndian(sxy), sy = BinaryPrimitives.ReadUInt16BigEndian(sxy.AsSpan(2));
                    var copy = new uint[w * h];
                    for (int row = 0; row < h; row++) Array.Copy(Pixels, (sy + row) * Width + sx, copy, row * w, w);
                    for (int row = 0; row < h; row++) Array.Copy(copy, row * w, Pixels, (y + row) * Width + x, w);
                    break;
                }
                case 16: DecodeZrle(x, y, w, h); break;
                case -223:
                    Width = w; Height = h;
                    Pixels = new uint[w * h];
                    break;
                default: throw new InvalidDataException($"unexpected encoding {enc}");
            }
        }
        return rects;
    }

    // The client's pixel value back to 0x00RRGGBB (components scaled back to 8 bits).
    private uint ToRgb(uint p)
    {
        var f = Format;
        uint r = (p >> f.RedShift) & f.RedMax, g = (p >> f.GreenShift) & f.GreenMax, b = (p >> f.BlueShift) & f.BlueMax;
        return (uint)(r * 255 / f.RedMax) << 16 | (uint)(g * 255 / f.GreenMax) << 8 | (uint)(b * 255 / f.BlueMax);
    }

    private uint ReadPixel(Stream s, int size)
    {
        var b = new byte[4];
        s.ReadExactly(b, 0, size);
        return size switch
        {
            1 => b[0],
            2 => Format.BigEndian ? BinaryPrimitives.ReadUInt16BigEndian(b) : BinaryPrimitives.ReadUInt16LittleEndian(b),
            _ => Format.BigEndian ? BinaryPrimitives.ReadUInt32BigEndian(b) : BinaryPrimitives.ReadUInt32LittleEndian(b),
        };
    }

    private void DecodeRaw(int x, int y, int w, int h)
    {
        int bpp = Format.BytesPerPixel;
        for (int row = 0; row < h; row++)
            for (int col = 0; col < w; col++)
                Pixels[(y + row) * Width + x + col] = ToRgb(ReadPixel(_s, bpp));
        UpdateBytes += (long)w * h * bpp;
    }

    private uint ReadCpixel(Stream s)
    {
        var (size, offset) = ZrleEncoder.CpixelLayout(Format);
        if (size == Format.BytesPerPixel) return ToRgb(ReadPixel(s, size));
        var b = new byte[4];
        s.ReadExactly(b, offset, 3);
        uint p = Format.BigEndian ? BinaryPrimitives.ReadUInt32BigEndian(b) : BinaryPrimitives.ReadUInt32LittleEndian(b);
        return ToRgb(p);
    }

    private void DecodeZrle(int x, int y, int w, int h)
    {
        var lb = new byte[4];
        _s.ReadExactly(lb);
        var data = new byte[BinaryPrimitives.ReadUInt32BigEndian(lb)];
        _s.ReadExactly(data);
        UpdateBytes += 4 + data.Length;
        _zin.Append(data);
        _zlib ??= new ZLibStream(_zin, CompressionMode.Decompress);
        var z = _zlib;
        for (int ty = y; ty < y + h; ty += 64)
            for (int tx = x; tx < x + w; tx += 64)
            {
                int tw = Math.Min(64, x + w - tx), th = Math.Min(64, y + h - ty);
                int sub = z.ReadByte();
                var tile = new uint[tw * th];
                if (sub == 0) for (int i = 0; i < tile.Length; i++) tile[i] = ReadCpixel(z);
                else if (sub == 1) Array.Fill(tile, ReadCpixel(z));
                else if (sub >= 2 && sub <= 16)
                {
                    var pal = new uint[sub];
                    for (int i = 0; i < sub; i++) pal[i] = ReadCpixel(z);
                    int bits = sub == 2 ? 1 : sub <= 4 ? 2 : 4;
                    for (int row = 0; row < th; row++)
                    {
                        int have = 0, acc = 0;
                        for (int col = 0; col < tw; col++)
                        {
                            if (have == 0) { acc = z.ReadByte(); have = 8; }
                            have -= bits;
                            tile[row * tw + col] = pal[(acc >> have) & ((1 << bits) - 1)];
                        }
                    }
                }
                else if (sub == 128 || sub >= 130)
                {
                    uint[]? pal = null;
                    if (sub >= 130) { pal = new uint[sub - 128]; for (int i = 0; i < pal.Length; i++) pal[i] = ReadCpixel(z); }
                    for (int i = 0; i < tile.Length;)
                    {
                        uint colour; int len = 1;
                        if (pal is null) colour = ReadCpixel(z);
                        else
                        {
                            int idx = z.ReadByte();
                            colour = pal[idx & 0x7f];
                            if ((idx & 0x80) == 0) { tile[i++] = colour; continue; }
                        }
                        int b;
                        do { b = z.ReadByte(); len += b; } while (b == 255);
                        for (int k = 0; k < len; k++) tile[i++] = colour;
                    }
                }
                else throw new InvalidDataException($"ZRLE subencoding {sub}");
                for (int row = 0; row < th; row++) Array.Copy(tile, row * tw, Pixels, (ty + row) * Width + tx, tw);
            }
    }

    private uint ReadU32()
    {
        var b = new byte[4];
        _s.ReadExactly(b);
        return BinaryPrimitives.ReadUInt32BigEndian(b);
    }

    /// <summary>Closes the connection.</summary>
    public void Dispose()
    {
        _zlib?.Dispose();
        _s.Dispose();
    }

    // A stream fed with the ZRLE chunks, read by one long-lived inflater.
    private sealed class ChunkStream : Stream
    {
        private readonly Queue<byte[]> _chunks = new();
        private int _pos;
        public void Append(byte[] b) { if (b.Length > 0) _chunks.Enqueue(b); }
        public override int Read(byte[] buffer, int offset, int count)
        {
            if (_chunks.Count == 0) return 0;
            var c = _chunks.Peek();
            int n = Math.Min(count, c.Length - _pos);
            Array.Copy(c, _pos, buffer, offset, n);
            _pos += n;
            if (_pos == c.Length) { _chunks.Dequeue(); _pos = 0; }
            return n;
        }
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
