// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;

namespace Hyve;

/// <summary>
/// The boot ROM (bhyve's -l bootrom,romfile[,varfile]): a read-only devmem segment "bootrom" mapped so it
/// ends at 4 GiB, where the reset vector (0xFFFFFFF0) lands; an optional variable store ("bootvars",
/// read-write, for UEFI NVRAM) sits right below it.
/// </summary>
public static class BootRom
{
    /// <summary>Largest ROM accepted.</summary>
    public const long MaxSize = 16 << 20;
    private const ulong Top = 1ul << 32;

    /// <summary>Size of the legacy BIOS area below 1 MiB (0xE0000-0xFFFFF).</summary>
    public const int LegacyAreaSize = 128 * 1024;

    /// <summary>
    /// Shadows the ROM's last 128 KiB (or all of a smaller ROM) into RAM just below 1 MiB, as a PC chipset aliases
    /// the BIOS there: real-mode code addresses itself through segment F000 (base 0xF0000), and legacy firmware
    /// such as SeaBIOS expects that shadow to be writable RAM. Done at start and again at every reset.
    /// </summary>
    public static void ShadowLegacyArea(GuestMemory memory)
    {
        foreach (var seg in memory.Segments)
        {
            if (seg.Name != "bootrom") continue;
            int n = (int)Math.Min((ulong)LegacyAreaSize, seg.Length);
            if (!memory.TryGetSpan(0x100000ul - (ulong)n, n, MemProt.Write, out var shadow)) return;
            seg.Slice(seg.Length - (ulong)n, n).CopyTo(shadow);
        }
    }

    /// <summary>Loads and maps the ROM; throws <see cref="HostConfigException"/> with a one-line reason when it is unusable.</summary>
    public static void Load(GuestMemory memory, string romPath, string? varsPath)
    {
        byte[] rom = ReadImage(romPath, "boot ROM");
        var seg = memory.CreateDevMem("bootrom", (ulong)rom.Length);
        rom.CopyTo(seg.Span);
        ulong romBase = Top - (ulong)rom.Length;
        memory.Map(seg, 0, romBase, (ulong)rom.Length, MemProt.Read | MemProt.Exec);
        if (varsPath is null) return;
        byte[] vars = ReadImage(varsPath, "boot variable file");
        var vseg = memory.CreateDevMem("bootvars", (ulong)vars.Length);
        vars.CopyTo(vseg.Span);
        memory.Map(vseg, 0, romBase - (ulong)vars.Length, (ulong)vars.Length, MemProt.Read | MemProt.Write);
    }

    /// <summary>For a restore: creates and maps the ROM (and variable store) segments at the sizes a snapshot recorded,
    /// without reading the files; their contents come from the snapshot.</summary>
    public static void Reserve(GuestMemory memory, ulong romLength, ulong varsLength)
    {
        if (romLength == 0 || romLength > MaxSize || (romLength & 0xfff) != 0 || varsLength > MaxSize || (varsLength & 0xfff) != 0)
            throw new HostConfigException($"the snapshot's boot ROM ({romLength} bytes) or variable store ({varsLength} bytes) is unusable");
        var seg = memory.CreateDevMem("bootrom", romLength);
        ulong romBase = Top - romLength;
        memory.Map(seg, 0, romBase, romLength, MemProt.Read | MemProt.Exec);
        if (varsLength == 0) return;
        var vseg = memory.CreateDevMem("bootvars", varsLength);
        memory.Map(vseg, 0, romBase - varsLength, varsLength, MemProt.Read | MemProt.Write);
    }

    private static byte[] ReadImage(string path, string what)
    {
        // Opened once and measured through the handle: the path may be a symlink (Debian's /usr/share/qemu/OVMF.fd is
        // one), whose own length FileInfo.Length would report.
        try
        {
            if (!File.Exists(path)) throw new HostConfigException($"{what} {path} does not exist");
            using var f = File.OpenHandle(path);
            long length = RandomAccess.GetLength(f);
            if (length == 0) throw new HostConfigException($"{what} {path} is empty");
            if (length > MaxSize) throw new HostConfigException($"{what} {path} is larger than 16 MiB ({length} bytes)");
            if (length % 4096 != 0) throw new HostConfigException($"{what} {path} is not a multiple of 4 KiB ({length} bytes)");
            var bytes = new byte[length];
            if (RandomAccess.Read(f, bytes, 0) != length) throw new HostConfigException($"{what} {path} changed while it was read");
            return bytes;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new HostConfigException($"cannot read {what} {path}: {e.Message}");
        }
    }
}

/// <summary>A host-side configuration problem: hyve prints the message and exits with status 4.</summary>
public sealed class HostConfigException(string message) : Exception(message);
