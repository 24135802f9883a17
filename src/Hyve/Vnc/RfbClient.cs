// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace Hyve.Vnc;

/// <summary>
/// One VNC connection (RFC 6143): the handshake (version, security None or VNC authentication, ClientInit,
/// ServerInit) and the client's messages on a reader thread; framebuffer updates on a writer thread that wakes when the
/// client asks and the picture has changed. Each tile's generation sent is remembered, so an incremental update carries
/// exactly the tiles changed since, merged into runs along a tile row, in ZRLE when the client lists it (else Raw), after
/// a CopyRect when the picture scrolled since the client's last complete update, and after a DesktopSize rectangle when
/// the mode changed. A malformed message ends this connection with one line on stderr.
/// </summary>
internal sealed class RfbClient
{
    private const int EncRaw = 0, EncCopyRect = 1, EncZrle = 16, EncDesktopSize = -223;
    private const int MaxEncodings = 1024;
    private const int MaxCutText = 1 << 20;

    private readonly RfbServer _server;
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly string _peer;
    private readonly object _lock = new();
    private readonly MemoryStream _body = new();
    private readonly byte[] _buf = new byte[64];
    private ZrleEncoder? _zrle;
    private PixelFormat _pf = PixelFormat.Server;
    private bool _useZrle, _copyRect, _desktopSize;
    private bool _requested, _wantFlag, _signalled, _immediate, _closed;
    private int _reqX, _reqY, _reqW, _reqH;
    private long[] _sentTileGen = [];
    private int _sentSizeGeneration = -1;
    private long _syncedAt = -1;
    private int _clientW, _clientH;

    public RfbClient(RfbServer server, Socket socket)
    {
        _server = server;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _peer = socket.RemoteEndPoint?.ToString() is { Length: > 0 } p ? p : "local";
    }

    public void Start() => new Thread(ReaderLoop) { IsBackground = true, Name = "vnc-client" }.Start();

    // ---- reader --------------------------------------------------------------------------------------------

    private void ReaderLoop()
    {
        try
        {
            if (!Handshake()) { Close(null); return; }
            new Thread(WriterLoop) { IsBackground = true, Name = "vnc-update" }.Start();
            _server.ClientReady();
            while (!_closed) ReadMessage();
        }
        catch (RfbProtocolException e) { Close(e.Message); }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or EndOfStreamException) { Close(null); }
    }

    private bool Handshake()
    {
        _stream.Write("RFB 003.008\n"u8);
        Span<byte> v = stackalloc byte[12];
        _stream.ReadExactly(v);
        if (!v.StartsWith("RFB "u8) || v[7] != '.' || v[11] != '\n' || !Digits(v.Slice(4, 3)) || !Digits(v.Slice(8, 3)))
            throw new RfbProtocolException("bad protocol version string");
        int major = (v[4] - '0') * 100 + (v[5] - '0') * 10 + (v[6] - '0');
        int minor = (v[8] - '0') * 100 + (v[9] - '0') * 10 + (v[10] - '0');
        if (major != 3) throw new RfbProtocolException($"unsupported protocol version {major}.{minor}");
        // 3.3 and unknown minors below 7 speak 3.3 (RFC 6143 7.1.1); 3.8 and anything newer speak 3.8.
        int version = minor >= 8 ? 8 : minor == 7 ? 7 : 3;
        byte type = _server.Password is null ? (byte)1 : (byte)2;
        if (version == 3)
        {
            WriteU32(type);
        }
        else
        {
            _stream.Write([1, type]);
            int chosen = _stream.ReadByte();
            if (chosen < 0) throw new EndOfStreamException();
            if (chosen != type)
            {
                if (version == 8) { WriteU32(1); WriteString("security type not offered"); }
                throw new RfbProtocolException($"chose security type {chosen}, offered {type}");
            }
        }
        if (type == 2)
        {
            var challenge = new byte[16];
            using (var r = File.OpenRead("/dev/urandom")) r.ReadExactly(challenge);
            _stream.Write(challenge);
            var response = new byte[16];
            _stream.ReadExactly(response);
            var expected = VncDes.Response(_server.Password!, challenge);
            if (!System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(response, expected))
            {
                WriteU32(1);
                if (version == 8) WriteString("authentication failed");
                Console.Error.WriteLine($"hyve: vnc client {_peer}: authentication failed");
                return false;
            }
            WriteU32(0);
        }
        else if (version == 8) WriteU32(0);
        // ClientInit: the shared flag. Every connection is shared, as bhyve's server treats them.
        if (_stream.ReadByte() < 0) throw new EndOfStreamException();
        Span<byte> init = stackalloc byte[24];
        byte[] name = Encoding.UTF8.GetBytes(_server.Name);
        // A fresh look first, so ServerInit carries the size of the mode the guest has set by now (a client without
        // DesktopSize keeps the size it was told).
        if (_server.Source.Tick()) _server.PictureChanged();
        lock (_server.Source.Gate)
        {
            _clientW = _server.Source.Width;
            _clientH = _server.Source.Height;
            _sentSizeGeneration = _server.Source.SizeGeneration;
            _sentTileGen = new long[_server.Source.TilesX * _server.Source.TilesY];
            Array.Fill(_sentTileGen, -1);
        }
        BinaryPrimitives.WriteUInt16BigEndian(init, (ushort)_clientW);
        BinaryPrimitives.WriteUInt16BigEndian(init[2..], (ushort)_clientH);
        PixelFormat.Server.Write(init[4..]);
        BinaryPrimitives.WriteUInt32BigEndian(init[20..], (uint)name.Length);
        lock (_lock)
        {
            _stream.Write(init);
            _stream.Write(name);
        }
        return true;
    }

    private static bool Digits(ReadOnlySpan<byte> s)
    {
        foreach (byte b in s) if (b < '0' || b > '9') return false;
        return true;
    }

    private void ReadMessage()
    {
        int type = _stream.ReadByte();
        if (type < 0) throw new EndOfStreamException();
        var b = _buf.AsSpan();
        switch (type)
        {
            case 0: // SetPixelFormat
            {
                _stream.ReadExactly(b[..19]);
                var pf = PixelFormat.Read(b.Slice(3, 16));
                if (pf.Problem() is string why) throw new RfbProtocolException($"SetPixelFormat: unsupported {why}");
                lock (_lock)
                {
                    _pf = pf;
                    Array.Fill(_sentTileGen, -1); // what the client has is in the old format
                    _syncedAt = -1;
                }
                break;
            }
            case 2: // SetEncodings
            {
                _stream.ReadExactly(b[..3]);
                int n = BinaryPrimitives.ReadUInt16BigEndian(b[1..]);
                if (n > MaxEncodings) throw new RfbProtocolException($"SetEncodings: {n} encodings");
                bool zrle = false, raw = false, copy = false, desk = false, zrleFirst = false;
                for (int i = 0; i < n; i++)
                {
                    _stream.ReadExactly(b[..4]);
                    int e = BinaryPrimitives.ReadInt32BigEndian(b);
                    if (e == EncZrle && !zrle) { zrle = true; if (!raw) zrleFirst = true; }
                    else if (e == EncRaw) raw = true;
                    else if (e == EncCopyRect) copy = true;
                    else if (e == EncDesktopSize) desk = true;
                }
                lock (_lock)
                {
                    // The client's order is its preference; Raw is always possible.
                    _useZrle = zrle && zrleFirst;
                    if (_useZrle) _zrle ??= new ZrleEncoder();
                    _copyRect = copy;
                    _desktopSize = desk;
                }
                break;
            }
            case 3: // FramebufferUpdateRequest
            {
                _stream.ReadExactly(b[..9]);
                bool incremental = b[0] != 0;
                int x = BinaryPrimitives.ReadUInt16BigEndian(b[1..]), y = BinaryPrimitives.ReadUInt16BigEndian(b[3..]);
                int w = BinaryPrimitives.ReadUInt16BigEndian(b[5..]), h = BinaryPrimitives.ReadUInt16BigEndian(b[7..]);
                lock (_lock)
                {
                    (_reqX, _reqY, _reqW, _reqH) = (x, y, w, h);
                    if (!incremental) MarkRegion(x, y, w, h);
                    _requested = true;
                    if (!_wantFlag) { _wantFlag = true; _server.Wants(true); }
                    // A full request is answered at once; an incremental one waits for the refresher's next change,
                    // so a fast client gets at most one update per refresh, not one per round trip.
                    if (!incremental) { _signalled = true; _immediate = true; }
                    Monitor.PulseAll(_lock);
                }
                break;
            }
            case 4: // KeyEvent
                _stream.ReadExactly(b[..7]);
                _server.Keyboard?.Invoke(BinaryPrimitives.ReadUInt32BigEndian(b[3..]), b[0] != 0);
                _server.InputArrived();
                break;
            case 5: // PointerEvent
                _stream.ReadExactly(b[..5]);
                _server.Pointer?.Invoke(BinaryPrimitives.ReadUInt16BigEndian(b[1..]), BinaryPrimitives.ReadUInt16BigEndian(b[3..]), b[0], _clientW, _clientH);
                _server.InputArrived();
                break;
            case 6: // ClientCutText: read and ignore (the guest has no clipboard channel)
            {
                _stream.ReadExactly(b[..7]);
                int len = BinaryPrimitives.ReadInt32BigEndian(b[3..]);
                if (len < 0 || len > MaxCutText) throw new RfbProtocolException($"ClientCutText of {len} bytes");
                var skip = new byte[Math.Min(len, 4096)];
                while (len > 0) { int k = Math.Min(len, skip.Length); _stream.ReadExactly(skip, 0, k); len -= k; }
                break;
            }
            default:
                throw new RfbProtocolException($"unknown message type {type}");
        }
    }

    private void MarkRegion(int x, int y, int w, int h)
    {
        int tilesX = _server.Source.TilesX;
        for (int ty = y / FrameSource.Tile; ty * FrameSource.Tile < Math.Min(y + h, _clientH); ty++)
            for (int tx = x / FrameSource.Tile; tx * FrameSource.Tile < Math.Min(x + w, _clientW); tx++)
            {
                int t = ty * tilesX + tx;
                if ((uint)t < (uint)_sentTileGen.Length) _sentTileGen[t] = -1;
            }
        _syncedAt = -1;
    }

    // ---- writer --------------------------------------------------------------------------------------------

    /// <summary>The picture changed: wake the writer.</summary>
    public void Signal()
    {
        lock (_lock)
        {
            _signalled = true;
            Monitor.PulseAll(_lock);
        }
    }

    private void WriterLoop()
    {
        try
        {
            while (true)
            {
                bool immediate;
                lock (_lock)
                {
                    while (!_closed && !(_signalled && _requested)) Monitor.Wait(_lock);
                    if (_closed) return;
                    _signalled = false;
                    immediate = _immediate;
                    _immediate = false;
                }
                // A full request gets a fresh look first, so it is answered with the newest picture.
                if (immediate && _server.Source.Tick()) _server.PictureChanged();
                if (!BuildUpdate()) continue;
                lock (_lock)
                {
                    _requested = false;
                    if (_wantFlag) { _wantFlag = false; _server.Wants(false); }
                }
                _stream.Write(_body.GetBuffer(), 0, (int)_body.Length);
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { Close(null); }
    }

    // Builds a FramebufferUpdate into _body; false when nothing in the requested region changed.
    private bool BuildUpdate()
    {
        var src = _server.Source;
        PixelFormat pf;
        bool zrle, copyRect, desktopSize;
        int rx, ry, rw, rh;
        lock (_lock) { pf = _pf; zrle = _useZrle; copyRect = _copyRect; desktopSize = _desktopSize; (rx, ry, rw, rh) = (_reqX, _reqY, _reqW, _reqH); }
        _body.SetLength(0);
        _body.Write([0, 0, 0, 0]); // type, padding, rectangle count (filled in below)
        int rects = 0;
        lock (src.Gate)
        lock (_lock)
        {
            if (_sentSizeGeneration != src.SizeGeneration)
            {
                _sentSizeGeneration = src.SizeGeneration;
                if (desktopSize)
                {
                    _clientW = src.Width;
                    _clientH = src.Height;
                    Header(0, 0, _clientW, _clientH, EncDesktopSize);
                    rects++;
                    rx = ry = 0; rw = _clientW; rh = _clientH;
                }
                _sentTileGen = new long[src.TilesX * src.TilesY];
                Array.Fill(_sentTileGen, -1);
                _syncedAt = -1;
            }
            int w = Math.Min(_clientW, src.Width), h = Math.Min(_clientH, src.Height);
            bool full = rx == 0 && ry == 0 && rw >= _clientW && rh >= _clientH && _clientW == src.Width && _clientH == src.Height;
            var gens = src.TileGenerations;
            var dirty = gens;
            long since = -1;
            // A client that had the whole picture just before a scroll gets the move as a CopyRect and then only
            // the tiles whose content changed beyond it.
            if (copyRect && full && src.LastScroll is ScrollEvent s && s.PrevGeneration == _syncedAt && s.Generation == src.Generation)
            {
                Header(0, s.DstY, src.Width, s.Height, EncCopyRect);
                Span<byte> sxy = stackalloc byte[4];
                BinaryPrimitives.WriteUInt16BigEndian(sxy, 0);
                BinaryPrimitives.WriteUInt16BigEndian(sxy[2..], (ushort)s.SrcY);
                _body.Write(sxy);
                rects++;
                dirty = src.TileContentGenerations;
                since = _syncedAt;
            }
            var frame = src.Pixels;
            for (int ty = 0; ty < src.TilesY; ty++)
            {
                int y0 = ty * FrameSource.Tile, th = Math.Min(FrameSource.Tile, src.Height - y0);
                if (y0 >= h || y0 + th <= ry || y0 >= ry + rh) continue;
                th = Math.Min(th, h - y0);
                int run = -1;
                for (int tx = 0; tx <= src.TilesX; tx++)
                {
                    bool send = false;
                    if (tx < src.TilesX)
                    {
                        int t = ty * src.TilesX + tx;
                        int x0 = tx * FrameSource.Tile;
                        bool inside = x0 < w && x0 + FrameSource.Tile > rx && x0 < rx + rw;
                        send = inside && (since >= 0 ? dirty[t] > since || _sentTileGen[t] < 0 : gens[t] > _sentTileGen[t]);
                        if (inside) _sentTileGen[t] = gens[t];
                    }
                    if (send) { if (run < 0) run = tx; continue; }
                    if (run < 0) continue;
                    int x = run * FrameSource.Tile, rwid = Math.Min(tx * FrameSource.Tile, w) - x;
                    Rect(frame, src.Width, x, y0, rwid, th, pf, zrle);
                    rects++;
                    run = -1;
                }
            }
            if (full) _syncedAt = src.Generation;
        }
        if (rects == 0) return false;
        var buf = _body.GetBuffer();
        BinaryPrimitives.WriteUInt16BigEndian(buf.AsSpan(2), (ushort)rects);
        return true;
    }

    private void Header(int x, int y, int w, int h, int encoding)
    {
        Span<byte> r = stackalloc byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(r, (ushort)x);
        BinaryPrimitives.WriteUInt16BigEndian(r[2..], (ushort)y);
        BinaryPrimitives.WriteUInt16BigEndian(r[4..], (ushort)w);
        BinaryPrimitives.WriteUInt16BigEndian(r[6..], (ushort)h);
        BinaryPrimitives.WriteInt32BigEndian(r[8..], encoding);
        _body.Write(r);
    }

    private void Rect(ReadOnlySpan<uint> frame, int stride, int x, int y, int w, int h, in PixelFormat pf, bool zrle)
    {
        if (zrle && _zrle is not null)
        {
            Header(x, y, w, h, EncZrle);
            _zrle.Encode(frame, stride, x, y, w, h, pf, _body);
            return;
        }
        Header(x, y, w, h, EncRaw);
        int bpp = pf.BytesPerPixel;
        var line = new byte[w * bpp];
        for (int row = 0; row < h; row++)
        {
            var src = frame.Slice((y + row) * stride + x, w);
            for (int i = 0; i < w; i++) pf.Put(pf.Convert(src[i]), line.AsSpan(i * bpp));
            _body.Write(line);
        }
    }

    // ---- helpers -------------------------------------------------------------------------------------------

    private void WriteU32(uint v)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        _stream.Write(b);
    }

    private void WriteString(string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        WriteU32((uint)bytes.Length);
        _stream.Write(bytes);
    }

    /// <summary>Ends the connection; <paramref name="reason"/> (a protocol error) goes to stderr.</summary>
    public void Close(string? reason)
    {
        lock (_lock)
        {
            if (_closed) return;
            _closed = true;
            if (_wantFlag) { _wantFlag = false; _server.Wants(false); }
            Monitor.PulseAll(_lock);
        }
        if (reason is not null) Console.Error.WriteLine($"hyve: vnc client {_peer}: {reason}; connection closed");
        try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        _stream.Dispose();
        _server.ClientClosed(this);
    }
}

/// <summary>A client broke the protocol.</summary>
internal sealed class RfbProtocolException(string message) : Exception(message);
