// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Boot;
using Hyve.Pci;
using Hyve.Vmm;

namespace Hyve.Display;

/// <summary>
/// Direct kernel boot with a display: what a boot loader does before it jumps to Linux with a graphics mode
/// (GRUB's gfxpayload=keep). The standard VGA is set to the fbuf's w x h at 32 bits per pixel, and boot_params'
/// screen_info describes that linear framebuffer as an EFI one (VIDEO_TYPE_EFI), so Linux's efifb (Debian's cloud
/// kernel has CONFIG_FB_EFI=y and no Bochs DRM driver) draws the console on it without EFI firmware underneath. With
/// <c>vga=on</c> the screen stays in VGA text mode instead and screen_info describes an 80x25 VGA (vgacon).
/// </summary>
public static class BootDisplay
{
    /// <summary>screen_info.orig_video_isVGA for an EFI framebuffer (include/uapi/linux/screen_info.h).</summary>
    public const byte VideoTypeEfi = 0x70;
    private const uint Capability64BitBase = 1 << 1;

    /// <summary>Sets the mode and fills screen_info when <paramref name="kernel"/> is a Linux bzImage; otherwise does nothing.</summary>
    public static void SetUp(StdVga vga, GuestMemory memory, LoadedKernel kernel)
    {
        if (kernel.Format != KernelFormat.LinuxBzImage || kernel.InfoAddress == 0) return;
        if (vga.Text is not null)
        {
            // vga=on: the screen stays in VGA text mode 3, as a BIOS boot with vga=normal leaves it, and screen_info says
            // so (what arch/x86/boot/video.c stores): Linux's vgacon draws the console into 0xB8000.
            if (!memory.TryGetSpan(kernel.InfoAddress, 0x40, MemProt.Write, out var ti)) return;
            ti.Clear();
            ti[0x06] = 3;   // orig_video_mode
            ti[0x07] = 80;  // orig_video_cols
            ti[0x0e] = 25;  // orig_video_lines
            ti[0x0f] = 1;   // orig_video_isVGA
            ti[0x10] = 16;  // orig_video_points: 8x16 cells
            return;
        }
        var bar = vga.Bars[0];
        if (bar is null || bar.Address == 0) return;
        int w = vga.Options.Width, h = vga.Options.Height;
        vga.DispiWrite(StdVga.IndexEnable, 0);
        vga.DispiWrite(StdVga.IndexBpp, 32);
        vga.DispiWrite(StdVga.IndexXres, (ushort)w);
        vga.DispiWrite(StdVga.IndexYres, (ushort)h);
        vga.DispiWrite(StdVga.IndexEnable, StdVga.Enabled | StdVga.LfbEnabled);
        var mode = vga.Mode;
        if (!mode.Enabled) return;
        if (!memory.TryGetSpan(kernel.InfoAddress, 0x40, MemProt.Write, out var si)) return;
        si.Clear();
        si[0x0f] = VideoTypeEfi;
        BinaryPrimitives.WriteUInt16LittleEndian(si[0x12..], (ushort)mode.Width);
        BinaryPrimitives.WriteUInt16LittleEndian(si[0x14..], (ushort)mode.Height);
        BinaryPrimitives.WriteUInt16LittleEndian(si[0x16..], 32);
        BinaryPrimitives.WriteUInt32LittleEndian(si[0x18..], (uint)bar.Address);
        BinaryPrimitives.WriteUInt32LittleEndian(si[0x1c..], (uint)bar.Size);
        BinaryPrimitives.WriteUInt16LittleEndian(si[0x24..], (ushort)mode.Stride);
        // x8r8g8b8: red at bit 16, green at 8, blue at 0, 8 reserved bits at 24.
        (si[0x26], si[0x27], si[0x28], si[0x29], si[0x2a], si[0x2b], si[0x2c], si[0x2d]) = (8, 16, 8, 8, 8, 0, 8, 24);
        BinaryPrimitives.WriteUInt32LittleEndian(si[0x36..], Capability64BitBase);
        BinaryPrimitives.WriteUInt32LittleEndian(si[0x3a..], (uint)(bar.Address >> 32));
    }
}
