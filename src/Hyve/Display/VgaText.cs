// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Display;

/// <summary>
/// VGA alphanumeric mode 3 as a picture: 80 x 25 cells of (character, attribute) from the text buffer at 0xB8000, drawn
/// 8 x 16 into a 640 x 400 32-bpp frame with the standard 16-colour palette (attribute bits 0-3 foreground, 4-6
/// background; bit 7, blink, shows as a plain background) and the CRTC's cursor (lines from registers 0Ah/0Bh, position
/// from 0Eh/0Fh, hidden by 0Ah bit 5). The font is the VGA BIOS's own 8x16 table, found in its ROM image (glyph 'A' with
/// glyph 0 blank and glyph DBh a full block around it), so no font data lives in hyve. Only cells that changed are drawn.
/// </summary>
public sealed class VgaText
{
    /// <summary>Text geometry.</summary>
    public const int Cols = 80, Rows = 25, CellWidth = 8, CellHeight = 16, Width = Cols * CellWidth, Height = Rows * CellHeight;
    /// <summary>Bytes of the text buffer one screen uses (character and attribute per cell).</summary>
    public const int BufferBytes = Cols * Rows * 2;

    // The 16 colours the VGA BIOS programs into the DAC for text modes (CGA's, with brown at 6).
    private static readonly uint[] Colours =
    [
        0x000000, 0x0000aa, 0x00aa00, 0x00aaaa, 0xaa0000, 0xaa00aa, 0xaa5500, 0xaaaaaa,
        0x555555, 0x5555ff, 0x55ff55, 0x55ffff, 0xff5555, 0xff55ff, 0xffff55, 0xffffff,
    ];

    private static ReadOnlySpan<byte> GlyphA => [0x00, 0x00, 0x10, 0x38, 0x6c, 0xc6, 0xc6, 0xfe, 0xc6, 0xc6, 0xc6, 0xc6, 0x00, 0x00, 0x00, 0x00];

    private readonly byte[] _font;
    private readonly ushort[] _cells = new ushort[Cols * Rows];
    private int _cursor = -2, _cursorStart, _cursorEnd;
    private bool _drawn;

    /// <summary>A renderer with an 8x16 font of 256 glyphs (4096 bytes).</summary>
    public VgaText(byte[] font)
    {
        if (font.Length != 256 * CellHeight) throw new ArgumentException("an 8x16 font has 4096 bytes", nameof(font));
        _font = font;
    }

    /// <summary>The picture, 0x00RRGGBB little-endian, 640 x 400.</summary>
    public byte[] Frame { get; } = new byte[Width * Height * 4];

    /// <summary>The 8x16 font in a VGA BIOS image, or null when it has none.</summary>
    public static byte[]? FindFont(ReadOnlySpan<byte> rom)
    {
        for (int at = rom.IndexOf(GlyphA); at >= 0;)
        {
            int start = at - 'A' * CellHeight;
            if (start >= 0 && start + 256 * CellHeight <= rom.Length
                && rom.Slice(start, CellHeight).IndexOfAnyExcept((byte)0) < 0
                && rom.Slice(start + 0xdb * CellHeight, CellHeight).IndexOfAnyExcept((byte)0xff) < 0)
                return rom.Slice(start, 256 * CellHeight).ToArray();
            int next = rom[(at + 1)..].IndexOf(GlyphA);
            at = next < 0 ? -1 : at + 1 + next;
        }
        return null;
    }

    /// <summary>Draws <paramref name="text"/> (up to <see cref="BufferBytes"/>; missing cells are blank) with the cursor at
    /// cell <paramref name="cursor"/> (-1: none) over scan lines <paramref name="cursorStart"/>-<paramref name="cursorEnd"/>;
    /// returns true when the picture changed.</summary>
    public bool Render(ReadOnlySpan<byte> text, int cursor, int cursorStart, int cursorEnd)
    {
        bool changed = false;
        bool cursorMoved = cursor != _cursor || cursorStart != _cursorStart || cursorEnd != _cursorEnd;
        int oldCursor = _cursor;
        _cursor = cursor; _cursorStart = cursorStart; _cursorEnd = cursorEnd;
        for (int i = 0; i < _cells.Length; i++)
        {
            ushort cell = 2 * i + 1 < text.Length ? (ushort)(text[2 * i] | text[2 * i + 1] << 8) : (ushort)0x0720;
            if (_drawn && cell == _cells[i] && !(cursorMoved && (i == cursor || i == oldCursor))) continue;
            _cells[i] = cell;
            DrawCell(i, cell, i == cursor);
            changed = true;
        }
        _drawn = true;
        return changed;
    }

    private void DrawCell(int i, ushort cell, bool withCursor)
    {
        int ch = cell & 0xff, attr = cell >> 8;
        uint fg = Colours[attr & 15], bg = Colours[(attr >> 4) & 7];
        int x0 = i % Cols * CellWidth, y0 = i / Cols * CellHeight;
        var frame = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, uint>(Frame.AsSpan());
        for (int row = 0; row < CellHeight; row++)
        {
            int bits = _font[ch * CellHeight + row];
            if (withCursor && row >= _cursorStart && row <= _cursorEnd) bits = 0xff;
            var line = frame.Slice((y0 + row) * Width + x0, CellWidth);
            for (int b = 0; b < CellWidth; b++) line[b] = (bits & (0x80 >> b)) != 0 ? fg : bg;
        }
    }
}
