// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Hyve.Display;

namespace Hyve.Vnc;

/// <summary>A vertical move the source saw between two generations: rows [SrcY, SrcY+Height) now sit at DstY.</summary>
public readonly record struct ScrollEvent(long PrevGeneration, long Generation, int SrcY, int DstY, int Height);

/// <summary>
/// The server's copy of the guest's screen (0x00RRGGBB pixels) and what changed in it. <see cref="Tick()"/> compares the
/// guest's framebuffer with the copy line by line (a memcmp when nothing moved, so an idle screen costs one read of
/// the visible area per tick) and brings changed 64x64 tiles over, stamping each with the generation it changed in;
/// clients send the tiles stamped after what they last sent. A change covering many lines is first checked for a
/// vertical scroll (a line of the new picture found further down the old one, then most lines matching at that
/// distance): the copy is moved, the move recorded, and clients that were up to date send a CopyRect plus the few
/// new tiles rather than the whole screen. With the surface's dirty-page log (the standard VGA's framebuffer) a tick
/// compares only lines on pages written since the harvest before last, and reads nothing at all when none were; it is
/// then <see cref="Quiet"/>. Callers hold <see cref="Gate"/> while they read the copy.
/// </summary>
public sealed class FrameSource
{
    /// <summary>Tile edge in pixels (ZRLE's tile size).</summary>
    public const int Tile = 64;

    private readonly IDisplaySurface _surface;
    private readonly uint[] _palette = new uint[256];
    private uint[] _frame = [];
    private uint[] _line = [];
    private uint[] _anchor = [];
    private bool[] _lineChanged = [];
    private long[] _tileGen = [], _tileContentGen = [];
    private int _seenModeGeneration = int.MinValue;
    private DisplayMode _mode;
    private readonly Hyve.Vmm.DirtyLog? _log;
    private readonly ulong[] _dirtyNow = [], _dirtyPrev = [];
    private readonly uint[] _seenPalette = new uint[256];
    private bool _prevAny, _compareAll = true, _quiet;

    /// <summary>A source over <paramref name="surface"/>, <paramref name="width"/> x <paramref name="height"/> black until
    /// the guest sets a mode.</summary>
    public FrameSource(IDisplaySurface surface, int width, int height)
    {
        _surface = surface;
        _log = surface.Dirty;
        if (_log is not null)
        {
            _dirtyNow = new ulong[_log.Words];
            _dirtyPrev = new ulong[_log.Words];
        }
        Resize(width, height);
    }

    /// <summary>The surface's dirty-page log, when it has one (a tick then reads only lines on pages the guest wrote).</summary>
    public Hyve.Vmm.DirtyLog? Log => _log;

    /// <summary>True after a tick that found no page written in this harvest or the one before (nothing left to look at
    /// until the log is marked again): a refresher may sleep on the log.</summary>
    public bool Quiet
    {
        get { lock (Gate) return _quiet; }
    }

    /// <summary>Held while the copy is updated or read.</summary>
    public object Gate { get; } = new();
    /// <summary>Width of the copy.</summary>
    public int Width { get; private set; }
    /// <summary>Height of the copy.</summary>
    public int Height { get; private set; }
    /// <summary>Tiles across.</summary>
    public int TilesX { get; private set; }
    /// <summary>Tiles down.</summary>
    public int TilesY { get; private set; }
    /// <summary>Counts ticks that changed something.</summary>
    public long Generation { get; private set; }
    /// <summary>Counts size changes.</summary>
    public int SizeGeneration { get; private set; }
    /// <summary>The most recent scroll, if any.</summary>
    public ScrollEvent? LastScroll { get; private set; }
    /// <summary>The pixels, row-major (bits 24-31 may hold the guest's padding byte).</summary>
    public ReadOnlySpan<uint> Pixels => _frame;
    /// <summary>Generation each tile last changed in, moves included.</summary>
    public ReadOnlySpan<long> TileGenerations => _tileGen;
    /// <summary>Generation each tile's content last changed in, not counting a recorded move.</summary>
    public ReadOnlySpan<long> TileContentGenerations => _tileContentGen;

    private void Resize(int w, int h)
    {
        Width = w; Height = h;
        TilesX = (w + Tile - 1) / Tile;
        TilesY = (h + Tile - 1) / Tile;
        _frame = new uint[w * h];
        _line = new uint[w];
        _anchor = new uint[w];
        _lineChanged = new bool[h];
        Generation++;
        SizeGeneration++;
        _tileGen = new long[TilesX * TilesY];
        _tileContentGen = new long[TilesX * TilesY];
        Array.Fill(_tileGen, Generation);
        Array.Fill(_tileContentGen, Generation);
        LastScroll = null;
        _compareAll = true;
    }

    /// <summary>Brings the copy up to date with the guest; true when anything changed.</summary>
    public bool Tick() => Tick(1, 0);

    /// <summary>
    /// As <see cref="Tick()"/>, but first looks only at every <paramref name="rowStep"/>-th line from
    /// <paramref name="phase"/> and stops there when none of them changed: the refresher's cheap look at a screen that
    /// has been still for a while (a character cell is 16 lines high, so new text is seen at once; a change confined to
    /// fewer lines is seen within <paramref name="rowStep"/> looks).
    /// </summary>
    public bool Tick(int rowStep, int phase)
    {
        lock (Gate)
        {
            bool changed = false;
            if (_surface.Prepare()) _compareAll = true;
            int mg = _surface.ModeGeneration;
            if (mg != _seenModeGeneration)
            {
                _seenModeGeneration = mg;
                var mode = _surface.Mode;
                if (mode.Enabled && (mode.Width != Width || mode.Height != Height))
                {
                    Resize(mode.Width, mode.Height);
                    changed = true;
                }
                else if (!mode.Enabled && _mode.Enabled)
                {
                    // Back to a legacy VGA mode, which is not drawn: show black.
                    Array.Clear(_frame);
                    MarkAll();
                    changed = true;
                }
                _mode = mode;
                _compareAll = true;
            }
            _quiet = false;
            if (!_mode.Enabled)
            {
                if (_log is not null) { _log.Harvest(_dirtyNow); _quiet = !changed; }
                return changed;
            }
            var mem = _surface.Memory;
            if (_mode.Offset + (long)(Height - 1) * _mode.Stride + (long)Width * ((_mode.Bpp + 7) / 8) > mem.Length)
            {
                // The memory changed under a mode not yet seen (text <-> graphics): look again at the next tick.
                _seenModeGeneration = int.MinValue;
                return changed;
            }
            if (_mode.Bpp == 8)
            {
                _surface.CopyPalette(_palette);
                if (!_palette.AsSpan().SequenceEqual(_seenPalette)) { _palette.CopyTo(_seenPalette, 0); _compareAll = true; }
            }
            bool all = true;
            if (_log is not null)
            {
                // Lines on pages written since the last harvest or the one before (a store through a host pointer taken
                // just before a harvest lands after it; the next harvest looks again).
                bool any = _log.Harvest(_dirtyNow);
                if (!any && !_prevAny && !_compareAll)
                {
                    _quiet = !_surface.Polled;
                    return changed;
                }
                all = _compareAll;
                _compareAll = false;
                for (int i = 0; i < _dirtyNow.Length; i++) (_dirtyPrev[i], _dirtyNow[i]) = (_dirtyNow[i], _dirtyNow[i] | _dirtyPrev[i]);
                _prevAny = any;
            }
            else if (rowStep > 1 && !changed)
            {
                bool any = false;
                for (int y = phase % rowStep; y < Height && !any; y += rowStep) any = !GuestLine(mem, y).SequenceEqual(Row(y));
                if (!any) return false;
            }

            int first = -1, last = -1, count = 0;
            int lineBytes = Width * ((_mode.Bpp + 7) / 8);
            for (int y = 0; y < Height; y++)
            {
                bool diff = (all || LineDirty(_mode.Offset + (long)y * _mode.Stride, lineBytes)) && !GuestLine(mem, y).SequenceEqual(Row(y));
                _lineChanged[y] = diff;
                if (!diff) continue;
                if (first < 0) first = y;
                last = y;
                count++;
            }
            if (count == 0) return changed;
            long prev = Generation;
            Generation++;
            if (count >= Height / 4 && last - first >= 32) TryScroll(mem, first, last, prev);
            for (int y = first; y <= last; y++)
            {
                var src = GuestLine(mem, y);
                var dst = _frame.AsSpan(y * Width, Width);
                int ty = y / Tile;
                for (int tx = 0; tx < TilesX; tx++)
                {
                    int x0 = tx * Tile, n = Math.Min(Tile, Width - x0);
                    var s = src.Slice(x0, n);
                    var d = dst.Slice(x0, n);
                    if (s.SequenceEqual(d)) continue;
                    s.CopyTo(d);
                    int t = ty * TilesX + tx;
                    _tileGen[t] = Generation;
                    _tileContentGen[t] = Generation;
                }
            }
            return true;
        }
    }

    // True when any page under bytes [start, start+length) of the framebuffer is in this tick's dirty set.
    private bool LineDirty(long start, int length)
    {
        long p0 = start >> 12, p1 = (start + length - 1) >> 12;
        for (long p = p0; p <= p1; p++)
        {
            if ((ulong)p >= (ulong)_dirtyNow.Length * 64) return true;
            if ((_dirtyNow[p >> 6] & (1ul << (int)(p & 63))) != 0) return true;
        }
        return false;
    }

    private void MarkAll()
    {
        Generation++;
        Array.Fill(_tileGen, Generation);
        Array.Fill(_tileContentGen, Generation);
    }

    private Span<uint> Row(int y) => _frame.AsSpan(y * Width, Width);

    // Finds a vertical scroll between the copy and the guest's picture over rows [first, last]; applies it to the copy.
    private void TryScroll(ReadOnlySpan<byte> mem, int first, int last, long prev)
    {
        int anchorY = -1;
        for (int y = first; y <= last && y < first + 3 * Tile; y++)
        {
            var line = GuestLine(mem, y);
            if (line.IndexOfAnyExcept(line[0]) >= 0) { line.CopyTo(_anchor); anchorY = y; break; }
        }
        if (anchorY < 0) return;
        int dy = 0;
        for (int k = anchorY + 1; k <= last; k++)
            if (Row(k).SequenceEqual(_anchor)) { dy = k - anchorY; break; }
        if (dy == 0) return;
        int height = last - dy - first + 1;
        if (height < Tile / 2) return;
        int matches = 0;
        for (int y = first; y < first + height; y++)
            if (GuestLine(mem, y).SequenceEqual(Row(y + dy))) matches++;
        if (matches * 4 < height * 3) return;
        Array.Copy(_frame, (first + dy) * Width, _frame, first * Width, height * Width);
        LastScroll = new ScrollEvent(prev, Generation, first + dy, first, height);
        for (int ty = first / Tile; ty <= (first + height - 1) / Tile; ty++)
            for (int tx = 0; tx < TilesX; tx++) _tileGen[ty * TilesX + tx] = Generation;
    }

    // One visible line of the guest's picture as 0x00RRGGBB (32-bit little-endian lines are used in place).
    private ReadOnlySpan<uint> GuestLine(ReadOnlySpan<byte> mem, int y)
    {
        var m = _mode;
        int bytes = (m.Bpp + 7) / 8;
        var src = mem.Slice((int)(m.Offset + (long)y * m.Stride), Width * bytes);
        var line = _line.AsSpan(0, Width);
        switch (m.Bpp)
        {
            case 32 when !m.BigEndian:
                return MemoryMarshal.Cast<byte, uint>(src);
            case 32:
                for (int x = 0; x < line.Length; x++) line[x] = BinaryPrimitives.ReadUInt32BigEndian(src[(x * 4)..]) & 0xffffff;
                break;
            case 24:
                for (int x = 0; x < line.Length; x++) line[x] = (uint)(src[x * 3 + 2] << 16 | src[x * 3 + 1] << 8 | src[x * 3]);
                break;
            case 16:
                for (int x = 0; x < line.Length; x++)
                {
                    uint p = m.BigEndian ? BinaryPrimitives.ReadUInt16BigEndian(src[(x * 2)..]) : BinaryPrimitives.ReadUInt16LittleEndian(src[(x * 2)..]);
                    line[x] = Expand(p >> 11, 5) << 16 | Expand(p >> 5 & 0x3f, 6) << 8 | Expand(p & 0x1f, 5);
                }
                break;
            case 15:
                for (int x = 0; x < line.Length; x++)
                {
                    uint p = m.BigEndian ? BinaryPrimitives.ReadUInt16BigEndian(src[(x * 2)..]) : BinaryPrimitives.ReadUInt16LittleEndian(src[(x * 2)..]);
                    line[x] = Expand(p >> 10 & 0x1f, 5) << 16 | Expand(p >> 5 & 0x1f, 5) << 8 | Expand(p & 0x1f, 5);
                }
                break;
            default:
                for (int x = 0; x < line.Length; x++) line[x] = _palette[src[x]];
                break;
        }
        return line;
    }

    private static uint Expand(uint v, int bits) => (v << (8 - bits)) | (v >> (2 * bits - 8));
}
