// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;

namespace Hyve.Acpi;

/// <summary>Tables laid out at a fixed guest-physical base.</summary>
/// <param name="BaseAddress">Guest-physical address of <see cref="Bytes"/>[0].</param>
/// <param name="Bytes">The image to copy into guest memory at <see cref="BaseAddress"/>.</param>
/// <param name="RsdpAddress">Where the RSDP is (the address an OS scans for or is told).</param>
/// <param name="Addresses">Guest-physical address of each table by signature.</param>
public sealed record AcpiImage(ulong BaseAddress, byte[] Bytes, ulong RsdpAddress, IReadOnlyDictionary<string, ulong> Addresses);

/// <summary>The three fw_cfg files of QEMU's ACPI interface, which SeaBIOS and OVMF read and install.</summary>
/// <param name="Tables">"etc/acpi/tables": every table except the RSDP, pointers holding offsets into this blob.</param>
/// <param name="Rsdp">"etc/acpi/rsdp": the RSDP, pointers holding offsets into the tables blob.</param>
/// <param name="TableLoader">"etc/table-loader": 128-byte linker/loader commands.</param>
public sealed record AcpiFwCfgFiles(byte[] Tables, byte[] Rsdp, byte[] TableLoader);

/// <summary>
/// Lays a table set out in guest memory: either at a fixed base in the BIOS area (direct kernel boot: the OS
/// finds the RSDP by scanning 0xE0000-0xFFFFF) or as fw_cfg blobs with linker/loader commands (firmware boot).
/// </summary>
public static class AcpiLayout
{
    /// <summary>
    /// Default base: bhyve's 0xF2400, above the MP table at 0xF0000 and inside the 0xE0000-0xFFFFF range that
    /// OSes scan for the RSDP, leaving room up to 1 MiB for the tables.
    /// </summary>
    public const ulong DefaultBase = 0xF2400;

    /// <summary>The fw_cfg file names.</summary>
    public const string TablesFile = "etc/acpi/tables", RsdpFile = "etc/acpi/rsdp", LoaderFile = "etc/table-loader";

    /// <summary>
    /// Places <paramref name="tables"/> (RSDP first) contiguously from <paramref name="baseAddress"/>, each at its
    /// alignment, patches every pointer with absolute addresses and recomputes every checksum.
    /// Throws when the image would exceed <paramref name="maxLength"/> bytes (default: up to 1 MiB).
    /// </summary>
    public static AcpiImage Place(IReadOnlyList<AcpiTable> tables, ulong baseAddress = DefaultBase, long maxLength = -1)
    {
        if (maxLength < 0) maxLength = baseAddress < 0x10_0000 ? (long)(0x10_0000 - baseAddress) : int.MaxValue;
        var offsets = new Dictionary<string, int>();
        int pos = 0;
        foreach (var t in tables)
        {
            if (!offsets.TryAdd(t.Signature, 0)) throw new ArgumentException($"ACPI table {t.Signature} appears twice", nameof(tables));
            pos = AlignUp(pos, t.Alignment, baseAddress);
            offsets[t.Signature] = pos;
            pos += t.Bytes.Length;
        }
        if (pos > maxLength) throw new InvalidOperationException($"ACPI tables need {pos} bytes but only {maxLength} fit at 0x{baseAddress:x}");
        var image = new byte[pos];
        var addresses = new Dictionary<string, ulong>();
        foreach (var t in tables)
        {
            t.Bytes.CopyTo(image, offsets[t.Signature]);
            addresses[t.Signature] = baseAddress + (ulong)offsets[t.Signature];
        }
        foreach (var t in tables)
        {
            var span = image.AsSpan(offsets[t.Signature], t.Bytes.Length);
            foreach (var p in t.Pointers)
            {
                if (!addresses.TryGetValue(p.Target, out var target)) throw new InvalidOperationException($"{t.Signature} points to missing table {p.Target}");
                WritePointer(span[p.Offset..], p.Size, target);
            }
            t.FixChecksums(span);
        }
        return new AcpiImage(baseAddress, image, addresses[AcpiTables.RsdpSignature], addresses);
    }

    private static int AlignUp(int pos, int alignment, ulong baseAddress)
    {
        // Align the guest-physical address, not just the offset, so any base works.
        ulong a = (ulong)alignment;
        ulong addr = (baseAddress + (ulong)pos + a - 1) & ~(a - 1);
        return (int)(addr - baseAddress);
    }

    private static void WritePointer(Span<byte> field, int size, ulong value)
    {
        if (size == 4)
        {
            if (value > uint.MaxValue) throw new InvalidOperationException("a 32-bit ACPI pointer cannot reach above 4 GiB");
            BinaryPrimitives.WriteUInt32LittleEndian(field, (uint)value);
        }
        else BinaryPrimitives.WriteUInt64LittleEndian(field, value);
    }

    // ---- QEMU fw_cfg linker/loader (hw/acpi/bios-linker-loader.c) -----------------------------

    /// <summary>Linker/loader command numbers.</summary>
    public const uint CommandAllocate = 1, CommandAddPointer = 2, CommandAddChecksum = 3;

    /// <summary>Allocation zones: anywhere in 32-bit memory, or the F segment (for the RSDP, which OSes scan for).</summary>
    public const byte ZoneHigh = 1, ZoneFseg = 2;

    /// <summary>Size of one loader command.</summary>
    public const int CommandSize = 128;

    /// <summary>Longest file name field, including its NUL (fw_cfg's FW_CFG_MAX_FILE_PATH).</summary>
    public const int FileNameSize = 56;

    /// <summary>
    /// Builds the fw_cfg form of <paramref name="tables"/>: the RSDP alone in etc/acpi/rsdp (allocated in the
    /// F segment, 16-byte aligned), every other table in etc/acpi/tables (allocated high, 64-byte aligned, each
    /// table at its alignment), pointer fields holding offsets into the tables blob with an ADD_POINTER each,
    /// and every checksum byte zero with an ADD_CHECKSUM each, issued after that table's pointers.
    /// </summary>
    public static AcpiFwCfgFiles ForFwCfg(IReadOnlyList<AcpiTable> tables)
    {
        var rsdp = tables.Single(t => t.Signature == AcpiTables.RsdpSignature);
        var rest = tables.Where(t => t != rsdp).ToList();
        var offsets = new Dictionary<string, int>();
        int pos = 0;
        foreach (var t in rest)
        {
            pos = AlignUp(pos, Math.Max(t.Alignment, 1), 0);
            if (!offsets.TryAdd(t.Signature, pos)) throw new ArgumentException($"ACPI table {t.Signature} appears twice", nameof(tables));
            pos += t.Bytes.Length;
        }
        var blob = new byte[pos];
        foreach (var t in rest) t.Bytes.CopyTo(blob, offsets[t.Signature]);
        var rsdpBlob = (byte[])rsdp.Bytes.Clone();

        var cmds = new List<byte>();
        cmds.AddRange(Allocate(RsdpFile, 16, ZoneFseg));
        cmds.AddRange(Allocate(TablesFile, 64, ZoneHigh));
        foreach (var t in rest) Link(t, TablesFile, blob.AsSpan(offsets[t.Signature], t.Bytes.Length), offsets[t.Signature], offsets, cmds);
        Link(rsdp, RsdpFile, rsdpBlob, 0, offsets, cmds);
        return new AcpiFwCfgFiles(blob, rsdpBlob, [.. cmds]);
    }

    private static void Link(AcpiTable t, string file, Span<byte> span, int fileOffset, Dictionary<string, int> offsets, List<byte> cmds)
    {
        foreach (var p in t.Pointers)
        {
            if (!offsets.TryGetValue(p.Target, out var target)) throw new InvalidOperationException($"{t.Signature} points to missing table {p.Target}");
            // The loader adds the blob's allocated address to the offset already in the field.
            WritePointer(span[p.Offset..], p.Size, (ulong)target);
            cmds.AddRange(AddPointer(file, TablesFile, (uint)(fileOffset + p.Offset), (byte)p.Size));
        }
        // QEMU zeroes each checksum byte and lets the firmware compute it over the patched bytes.
        foreach (var c in t.Checksums)
        {
            span[c.Offset] = 0;
            cmds.AddRange(AddChecksum(file, (uint)(fileOffset + c.Offset), (uint)(fileOffset + c.Start), (uint)c.Length));
        }
    }

    private static byte[] Command(uint command)
    {
        var e = new byte[CommandSize];
        BinaryPrimitives.WriteUInt32LittleEndian(e, command);
        return e;
    }

    private static void FileName(Span<byte> field, string name)
    {
        var b = Encoding.ASCII.GetBytes(name);
        if (b.Length >= FileNameSize) throw new ArgumentException($"fw_cfg file name '{name}' is too long");
        b.CopyTo(field);
    }

    /// <summary>ALLOCATE: file[56], align (u32), zone (u8).</summary>
    public static byte[] Allocate(string file, uint alignment, byte zone)
    {
        var e = Command(CommandAllocate);
        FileName(e.AsSpan(4, FileNameSize), file);
        BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(4 + FileNameSize), alignment);
        e[4 + FileNameSize + 4] = zone;
        return e;
    }

    /// <summary>ADD_POINTER: dest_file[56], src_file[56], offset (u32), size (u8).</summary>
    public static byte[] AddPointer(string destFile, string srcFile, uint offset, byte size)
    {
        var e = Command(CommandAddPointer);
        FileName(e.AsSpan(4, FileNameSize), destFile);
        FileName(e.AsSpan(4 + FileNameSize, FileNameSize), srcFile);
        BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(4 + 2 * FileNameSize), offset);
        e[4 + 2 * FileNameSize + 4] = size;
        return e;
    }

    /// <summary>ADD_CHECKSUM: file[56], offset (u32), start (u32), length (u32).</summary>
    public static byte[] AddChecksum(string file, uint offset, uint start, uint length)
    {
        var e = Command(CommandAddChecksum);
        FileName(e.AsSpan(4, FileNameSize), file);
        BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(4 + FileNameSize), offset);
        BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(4 + FileNameSize + 4), start);
        BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(4 + FileNameSize + 8), length);
        return e;
    }
}
