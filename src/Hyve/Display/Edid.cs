// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Display;

/// <summary>
/// A 128-byte EDID 1.4 base block (VESA E-EDID) naming one preferred mode, as QEMU places at offset 0 of the standard
/// VGA's MMIO BAR: OVMF's QemuVideoDxe reads the preferred width and height from the first detailed timing
/// descriptor, which is how the <c>w</c>/<c>h</c> options reach the firmware's default GOP mode.
/// </summary>
public static class Edid
{
    /// <summary>Builds the block for a <paramref name="width"/> x <paramref name="height"/> preferred mode at 60 Hz.</summary>
    public static byte[] Build(int width, int height)
    {
        var e = new byte[128];
        byte[] header = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
        header.CopyTo(e, 0);
        // Manufacturer "HYV" (three 5-bit letters, big-endian), product 1, serial 0, week 1 of 2024.
        ushort mfg = (ushort)((('H' - '@') << 10) | (('Y' - '@') << 5) | ('V' - '@'));
        e[8] = (byte)(mfg >> 8); e[9] = (byte)mfg;
        e[10] = 1;
        e[16] = 1; e[17] = 2024 - 1990;
        e[18] = 1; e[19] = 4;            // EDID 1.4
        e[20] = 0xa5;                    // digital, 8 bits per colour, DisplayPort
        e[21] = (byte)Math.Clamp(width / 40, 1, 255);  // screen size in cm (~100 dpi)
        e[22] = (byte)Math.Clamp(height / 40, 1, 255);
        e[23] = 120;                     // gamma 2.2
        e[24] = 0x06;                    // RGB colour, preferred timing is native
        // Standard timings unused (0x01 0x01).
        for (int i = 38; i < 54; i++) e[i] = 0x01;
        // Detailed timing descriptor 1: the preferred mode with CVT-like reduced blanking.
        int hblank = 160, vblank = Math.Max(height / 30, 23);
        long clock = (long)(width + hblank) * (height + vblank) * 60 / 10_000; // in 10 kHz units
        var d = e.AsSpan(54, 18);
        d[0] = (byte)clock; d[1] = (byte)(clock >> 8);
        d[2] = (byte)width; d[3] = (byte)hblank; d[4] = (byte)(((width >> 8) & 0xf) << 4 | ((hblank >> 8) & 0xf));
        d[5] = (byte)height; d[6] = (byte)vblank; d[7] = (byte)(((height >> 8) & 0xf) << 4 | ((vblank >> 8) & 0xf));
        d[8] = 48; d[9] = 32; d[10] = 3 << 4 | 6; d[11] = 0;   // hsync offset/width, vsync offset/width
        d[12] = (byte)(e[21] * 10); d[13] = (byte)(e[22] * 10); d[14] = (byte)(((e[21] * 10 >> 8) & 0xf) << 4 | ((e[22] * 10 >> 8) & 0xf));
        d[17] = 0x1e;                    // digital separate sync, +hsync, +vsync
        // Descriptor 2: the monitor name.
        var n = e.AsSpan(72, 18);
        n[3] = 0xfc;
        "Hyve VGA\n   "u8.CopyTo(n[5..]);
        // Descriptors 3 and 4: dummy (tag 0x10).
        e[90 + 3] = 0x10; e[108 + 3] = 0x10;
        byte sum = 0;
        for (int i = 0; i < 127; i++) sum += e[i];
        e[127] = (byte)(256 - sum);
        return e;
    }
}
