// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Display;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Pci;

/// <summary>QEMU's standard VGA as QemuVideoDxe and bochs-drm program it: PCI identity, the MMIO page, DISPI (vbe.h).</summary>
public class StdVgaTests : IDisposable
{
    private readonly GuestMemory _mem = new(16 << 20);
    private readonly StdVga _vga;

    public StdVgaTests() => _vga = new StdVga(_mem.CreateDevMem("framebuffer", StdVga.DefaultVramSize), 1280, 800);

    public void Dispose() => _mem.Dispose();

    private ushort Dispi(int index) => (ushort)_vga.MmioRead(0x500 + (ulong)index * 2, 2);
    private void Dispi(int index, ushort v) => _vga.MmioWrite(0x500 + (ulong)index * 2, 2, v);

    [Fact]
    public void IdentityAndBarsAreQemus()
    {
        Assert.Equal(0x11111234u, _vga.ReadConfig(0, 4));
        Assert.Equal(0x03000002u, _vga.ReadConfig(8, 4)); // class 03/00/00, revision 2
        Assert.Equal(0x8u, _vga.ReadConfig(0x10, 4) & 0xf); // BAR 0: 32-bit prefetchable memory
        _vga.WriteConfig(0x10, 4, 0xffffffff);
        Assert.Equal(0xff000008u, _vga.ReadConfig(0x10, 4)); // 16 MiB
        _vga.WriteConfig(0x18, 4, 0xffffffff);
        Assert.Equal(0xfffff000u, _vga.ReadConfig(0x18, 4)); // BAR 2: 4 KiB MMIO
        Assert.Equal(StdVga.DefaultVramSize >> 16, Dispi(10)); // VIDEO_MEMORY_64K
        Assert.Equal(0x1e1e1e1eul, _vga.MmioRead(0x604, 4)); // little-endian framebuffer
    }

    [Fact]
    public void EdidNamesThePreferredModeWithAValidChecksum()
    {
        var edid = new byte[128];
        for (int i = 0; i < 128; i++) edid[i] = (byte)_vga.MmioRead((ulong)i, 1);
        Assert.Equal(new byte[] { 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0 }, edid[..8]);
        int sum = 0;
        foreach (byte b in edid) sum += b;
        Assert.Equal(0, sum & 0xff);
        Assert.Equal(1280, edid[56] | (edid[58] & 0xf0) << 4);
        Assert.Equal(800, edid[59] | (edid[61] & 0xf0) << 4);
    }

    [Fact]
    public void DispiIdGetCapsAndASetModeAsQemuVideoDxeDoesIt()
    {
        Assert.Equal(0xb0c5, Dispi(0));
        Dispi(0, 0xb0c0);
        Assert.Equal(0xb0c0, Dispi(0));
        Dispi(0, 0x1234); // not an ID: ignored
        Assert.Equal(0xb0c0, Dispi(0));
        Dispi(4, 0x02); // GETCAPS
        Assert.Equal((StdVga.MaxXres, StdVga.MaxYres, 32), (Dispi(1), Dispi(2), (int)Dispi(3)));
        _mem.Segments[1].Span[..16].Fill(0xaa);
        Dispi(4, 0); Dispi(5, 0); Dispi(3, 32); Dispi(1, 1024); Dispi(2, 768);
        Dispi(6, 1024); Dispi(7, 768); Dispi(8, 0); Dispi(9, 0);
        Assert.False(_vga.Mode.Enabled);
        int gen = _vga.ModeGeneration;
        Dispi(4, 0x41); // ENABLED | LFB_ENABLED, memory cleared
        Assert.Equal(new DisplayMode(true, 1024, 768, 32, 4096, 0, false), _vga.Mode);
        Assert.NotEqual(gen, _vga.ModeGeneration);
        Assert.Equal(0, _mem.Segments[1].Span[0]);
        // Panning: Y_OFFSET moves the scan-out; a virtual height beyond memory is cut to what fits.
        Dispi(7, 0xffff);
        Assert.Equal(16 * 1024 * 1024 / 4096, Dispi(7));
        Dispi(9, 10);
        Assert.Equal(10 * 4096, _vga.Mode.Offset);
        // Odd values are fixed up as QEMU does: BPP 0 reads as 8, widths to a multiple of 8.
        Dispi(3, 0);
        Assert.Equal(8, Dispi(3));
        Dispi(1, 1021);
        Assert.Equal(1016, Dispi(1));
    }

    [Fact]
    public void VgaPortsAtTheMmioPageKeepWhatIsWrittenAndTheDacFeeds8BitModes()
    {
        _vga.MmioWrite(0x400 + 0x08, 1, 5);       // DAC write index 5
        _vga.MmioWrite(0x400 + 0x09, 1, 0x3f);    // 6-bit red full
        _vga.MmioWrite(0x400 + 0x09, 1, 0);
        _vga.MmioWrite(0x400 + 0x09, 1, 0x20);
        Span<uint> pal = stackalloc uint[256];
        _vga.CopyPalette(pal);
        Assert.Equal(0xff0082u, pal[5]);
        _vga.MmioWrite(0x400 + 0x14, 1, 0x11);    // CRTC index
        _vga.MmioWrite(0x400 + 0x15, 1, 0x5a);
        Assert.Equal(0x5aul, _vga.MmioRead(0x400 + 0x15, 1));
    }
}
