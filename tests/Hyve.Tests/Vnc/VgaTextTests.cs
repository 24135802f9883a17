// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Display;
using Xunit;

namespace Hyve.Tests.Vnc;

/// <summary>The text-mode renderer: the font comes out of Debian's VGA BIOS image, cells are drawn in the VGA's text
/// colours with the CRTC cursor, and an unchanged buffer draws nothing.</summary>
public class VgaTextTests
{
    private static byte[] Font()
    {
        Assert.True(File.Exists(StdVga.VgaBiosPath), "scripts/test installs Debian's seabios package");
        return VgaText.FindFont(File.ReadAllBytes(StdVga.VgaBiosPath)) ?? throw new Xunit.Sdk.XunitException("no font in the VGA BIOS");
    }

    private static uint Pixel(VgaText t, int x, int y) => BitConverter.ToUInt32(t.Frame, (y * VgaText.Width + x) * 4);

    [Fact]
    public void TheFontIsTheVgaBiossOwn()
    {
        var font = Font();
        Assert.Equal(4096, font.Length);
        Assert.Equal(new byte[] { 0x00, 0x00, 0x10, 0x38, 0x6c, 0xc6, 0xc6, 0xfe, 0xc6, 0xc6, 0xc6, 0xc6, 0, 0, 0, 0 }, font.AsSpan(0x41 * 16, 16).ToArray());
        Assert.Null(VgaText.FindFont(new byte[8192]));
    }

    [Fact]
    public void CellsAreDrawnInTextColoursWithTheCursor()
    {
        var t = new VgaText(Font());
        var buf = new byte[VgaText.BufferBytes];
        for (int i = 0; i < buf.Length; i += 2) { buf[i] = 0x20; buf[i + 1] = 0x07; }
        buf[81 * 2] = (byte)'A'; buf[81 * 2 + 1] = 0x1e; // row 1, column 1: yellow on blue
        Assert.True(t.Render(buf, 0, 14, 15));
        // 'A' row 7 is FE: columns 0-6 lit. The cell is at (8, 16).
        Assert.Equal(0xffff55u, Pixel(t, 8, 16 + 7));
        Assert.Equal(0x0000aau, Pixel(t, 15, 16 + 7));
        Assert.Equal(0x0000aau, Pixel(t, 8, 16));
        // The cursor underlines cell 0 on lines 14-15 in its foreground (light grey); line 13 is background.
        Assert.Equal(0xaaaaaau, Pixel(t, 3, 14));
        Assert.Equal(0u, Pixel(t, 3, 13));
        Assert.False(t.Render(buf, 0, 14, 15));  // nothing changed
        Assert.True(t.Render(buf, -1, 14, 15));  // cursor hidden
        Assert.Equal(0u, Pixel(t, 3, 14));
        Assert.True(t.Render([], -1, 0, 0));     // a buffer that is not there shows blank cells
        Assert.Equal(0u, Pixel(t, 8, 16 + 7));
    }

    [Fact]
    public void VgaOnIsAccepted()
    {
        var o = FbufOptions.Parse(new Dictionary<string, string> { ["vga"] = "on" }, "pci.0.2.0");
        Assert.Equal(FbufVga.On, o.Vga);
    }
}
