// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Display;

/// <summary>
/// The VGA register file at I/O ports 0x3C0-0x3DF (IBM VGA technical reference; QEMU's vga.c): attribute controller
/// with its address/data flip-flop, miscellaneous output, sequencer, graphics controller, CRT controller (colour
/// addresses 0x3D4/0x3D5) and the palette DAC with its read and write indexes. The registers hold what the guest
/// writes so drivers that program and read them back (OVMF's QemuVideoDxe, the Linux VGA probes) see a VGA; the DAC
/// also gives the colours of the 8-bit-per-pixel DISPI mode. Legacy text and planar modes are not drawn.
/// </summary>
public sealed class VgaRegisters
{
    private readonly byte[] _seq = new byte[8];
    private readonly byte[] _gc = new byte[16];
    private readonly byte[] _crtc = new byte[32];
    private readonly byte[] _attr = new byte[32];
    private readonly byte[] _dac = new byte[256 * 3];
    private byte _misc, _featureControl, _seqIndex, _gcIndex, _crtcIndex, _attrIndex, _pelMask = 0xff;
    private bool _attrFlipFlop; // false: next 0x3C0 write is an index; true: data
    private int _dacReadIndex, _dacWriteIndex, _dacSubIndex;
    private byte _dacState;
    private byte _retrace;

    /// <summary>Palette generation: changes whenever the guest writes a DAC entry (the frame source re-reads colours).</summary>
    public int PaletteGeneration { get; private set; }

    /// <summary>Power-on state.</summary>
    public void Reset()
    {
        Array.Clear(_seq); Array.Clear(_gc); Array.Clear(_crtc); Array.Clear(_attr); Array.Clear(_dac);
        _misc = _featureControl = _seqIndex = _gcIndex = _crtcIndex = _attrIndex = 0;
        _pelMask = 0xff;
        _attrFlipFlop = false;
        _dacReadIndex = _dacWriteIndex = _dacSubIndex = 0;
        _dacState = 0;
        PaletteGeneration++;
    }

    /// <summary>Reads port 0x3C0 + <paramref name="offset"/> (0-0x1F).</summary>
    public byte Read(int offset)
    {
        switch (offset)
        {
            case 0x00: return (byte)(_attrIndex | 0);
            case 0x01: return _attr[_attrIndex & 0x1f];
            case 0x02: return 0x10; // input status 0: switch sense
            case 0x04: return _seqIndex;
            case 0x05: return _seq[_seqIndex & 7];
            case 0x06: return _pelMask;
            case 0x07: return _dacState;
            case 0x08: return (byte)_dacWriteIndex;
            case 0x09:
            {
                byte v = _dac[_dacReadIndex * 3 + _dacSubIndex];
                if (++_dacSubIndex == 3) { _dacSubIndex = 0; _dacReadIndex = (_dacReadIndex + 1) & 0xff; }
                return v;
            }
            case 0x0a: return _featureControl;
            case 0x0c: return _misc;
            case 0x0e: return _gcIndex;
            case 0x0f: return _gc[_gcIndex & 15];
            case 0x14: return _crtcIndex;
            case 0x15: return _crtc[_crtcIndex & 31];
            case 0x1a:
                // Input status 1: reading it resets the attribute flip-flop. Bits 0 and 3 toggle so code that waits
                // for display enable and vertical retrace moves on.
                _attrFlipFlop = false;
                _retrace ^= 0x09;
                return _retrace;
            default: return 0xff;
        }
    }

    /// <summary>Writes port 0x3C0 + <paramref name="offset"/> (0-0x1F).</summary>
    public void Write(int offset, byte value)
    {
        switch (offset)
        {
            case 0x00:
                if (!_attrFlipFlop) _attrIndex = (byte)(value & 0x3f);
                else _attr[_attrIndex & 0x1f] = value;
                _attrFlipFlop = !_attrFlipFlop;
                break;
            case 0x02: _misc = value; break;
            case 0x04: _seqIndex = (byte)(value & 7); break;
            case 0x05: _seq[_seqIndex & 7] = value; break;
            case 0x06: _pelMask = value; break;
            case 0x07: _dacReadIndex = value; _dacSubIndex = 0; _dacState = 0x03; break;
            case 0x08: _dacWriteIndex = value; _dacSubIndex = 0; _dacState = 0x00; break;
            case 0x09:
                _dac[_dacWriteIndex * 3 + _dacSubIndex] = value;
                if (++_dacSubIndex == 3) { _dacSubIndex = 0; _dacWriteIndex = (_dacWriteIndex + 1) & 0xff; }
                PaletteGeneration++;
                break;
            case 0x0e: _gcIndex = (byte)(value & 15); break;
            case 0x0f: _gc[_gcIndex & 15] = value; break;
            case 0x14: _crtcIndex = (byte)(value & 31); break;
            case 0x15: _crtc[_crtcIndex & 31] = value; break;
            case 0x1a: _featureControl = value; break;
        }
    }

    /// <summary>Fills <paramref name="palette"/> (256 entries, 0x00RRGGBB) from the DAC; <paramref name="eightBit"/>: the DAC
    /// holds 8-bit components (DISPI's 8BIT_DAC flag) instead of the VGA's 6-bit ones.</summary>
    public void CopyPalette(Span<uint> palette, bool eightBit)
    {
        for (int i = 0; i < 256 && i < palette.Length; i++)
        {
            uint r = _dac[i * 3], g = _dac[i * 3 + 1], b = _dac[i * 3 + 2];
            if (!eightBit) { r = (r & 0x3f) << 2 | (r & 0x3f) >> 4; g = (g & 0x3f) << 2 | (g & 0x3f) >> 4; b = (b & 0x3f) << 2 | (b & 0x3f) >> 4; }
            palette[i] = r << 16 | g << 8 | b;
        }
    }

    /// <summary>Graphics controller register <paramref name="i"/> (06h bit 0: graphics rather than alphanumeric).</summary>
    public byte Gc(int i) => _gc[i & 15];

    /// <summary>CRTC register <paramref name="i"/> (0Ah/0Bh cursor lines, 0Ch/0Dh start address, 0Eh/0Fh cursor).</summary>
    public byte Crtc(int i) => _crtc[i & 31];

    /// <summary>The raw register file for a snapshot: misc, indexes, sequencer, GC, CRTC, attribute and DAC bytes.</summary>
    public byte[] Save()
    {
        var s = new byte[8 + _seq.Length + _gc.Length + _crtc.Length + _attr.Length + _dac.Length];
        s[0] = _misc; s[1] = _seqIndex; s[2] = _gcIndex; s[3] = _crtcIndex; s[4] = _attrIndex; s[5] = _pelMask;
        s[6] = (byte)(_attrFlipFlop ? 1 : 0); s[7] = _featureControl;
        int o = 8;
        foreach (var a in new[] { _seq, _gc, _crtc, _attr, _dac }) { a.CopyTo(s, o); o += a.Length; }
        return s;
    }

    /// <summary>Loads what <see cref="Save"/> produced; false when the length is wrong.</summary>
    public bool Load(ReadOnlySpan<byte> s)
    {
        if (s.Length != 8 + _seq.Length + _gc.Length + _crtc.Length + _attr.Length + _dac.Length) return false;
        (_misc, _seqIndex, _gcIndex, _crtcIndex, _attrIndex, _pelMask) = (s[0], s[1], s[2], s[3], s[4], s[5]);
        _attrFlipFlop = s[6] != 0;
        _featureControl = s[7];
        int o = 8;
        foreach (var a in new[] { _seq, _gc, _crtc, _attr, _dac }) { s.Slice(o, a.Length).CopyTo(a); o += a.Length; }
        _dacReadIndex = _dacWriteIndex = _dacSubIndex = 0;
        PaletteGeneration++;
        return true;
    }
}
