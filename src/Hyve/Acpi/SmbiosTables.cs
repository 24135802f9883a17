// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;

namespace Hyve.Acpi;

/// <summary>What the SMBIOS tables say about the machine.</summary>
/// <param name="Uuid">The system UUID (bhyve's -U; otherwise derived from the host and VM names, as bhyve does).</param>
/// <param name="Sockets">Processor sockets (one type 4 structure each).</param>
/// <param name="CoresPerSocket">Cores in each socket.</param>
/// <param name="ThreadsPerCore">Threads in each core.</param>
/// <param name="LowMemBytes">Guest RAM below 4 GiB, from 0.</param>
/// <param name="HighMemBytes">Guest RAM from 4 GiB up.</param>
/// <param name="CpuVendor">The CPUID vendor string, for the processor structures.</param>
public sealed record SmbiosDescription(Guid Uuid, int Sockets, int CoresPerSocket, int ThreadsPerCore, ulong LowMemBytes, ulong HighMemBytes,
    string CpuVendor);

/// <summary>The entry point and the structure table; the entry point's table address is filled in by whoever places them.</summary>
public sealed record SmbiosImage(byte[] EntryPoint, byte[] Table, int StructureCount);

/// <summary>
/// SMBIOS 2.8 tables (DMTF DSP0134) for the machine, as bhyve's smbiostbl.c writes them: BIOS information (type 0, a
/// virtual machine), system information (type 1, with the UUID), enclosure (3), one processor per socket (4), the
/// physical memory array (16) with one memory device (17) and an array mapped address per RAM range (19), system boot
/// information (32) and the end-of-table marker (127). Placed in the BIOS area for a direct kernel boot, or handed to
/// firmware through fw_cfg's etc/smbios files.
/// </summary>
public static class SmbiosTables
{
    /// <summary>Manufacturer and product strings.</summary>
    public const string Vendor = "Hyve";
    /// <summary>BIOS version string (type 0).</summary>
    public const string BiosVersion = "1.0";
    /// <summary>BIOS release date (type 0, mm/dd/yyyy).</summary>
    public const string BiosDate = "11/25/2026";
    /// <summary>Length of the 2.x entry point structure.</summary>
    public const int EntryPointLength = 0x1F;

    /// <summary>QEMU's fw_cfg file with the entry point.</summary>
    public const string AnchorFile = "etc/smbios/smbios-anchor";
    /// <summary>QEMU's fw_cfg file with the structures.</summary>
    public const string TablesFile = "etc/smbios/smbios-tables";
    /// <summary>Where a direct kernel boot finds the entry point (bhyve's SMBIOS_BASE), between the MP and ACPI tables.</summary>
    public const ulong DefaultBase = 0xF1000;

    private const ushort MemoryArrayHandle = 0x1000;

    /// <summary>Builds the structures and an entry point whose table address is 0 (see <see cref="Place"/>).</summary>
    public static SmbiosImage Build(SmbiosDescription d)
    {
        var w = new MemoryStream();
        int count = 0;
        void Add(byte type, ushort handle, ReadOnlySpan<byte> formatted, params string[] strings)
        {
            w.WriteByte(type);
            w.WriteByte((byte)(4 + formatted.Length));
            Span<byte> h = stackalloc byte[2];
            BinaryPrimitives.WriteUInt16LittleEndian(h, handle);
            w.Write(h);
            w.Write(formatted);
            foreach (var s in strings)
            {
                w.Write(Encoding.ASCII.GetBytes(s));
                w.WriteByte(0);
            }
            if (strings.Length == 0) w.WriteByte(0);
            w.WriteByte(0);
            count++;
        }

        // Type 0, BIOS information: vendor, version, start segment 0xF000, release date, 64 KiB ROM; PCI supported,
        // BIOS shadowing allowed, EDD; ACPI supported; a virtual machine (characteristics extension byte 2, bit 4).
        var t0 = new byte[0x18 - 4];
        t0[0] = 1; t0[1] = 2;                                       // vendor, version strings
        BinaryPrimitives.WriteUInt16LittleEndian(t0.AsSpan(2), 0xF000);
        t0[4] = 3;                                                  // release date string
        t0[5] = 0;                                                  // ROM size: 64 KiB
        BinaryPrimitives.WriteUInt64LittleEndian(t0.AsSpan(6), (1ul << 7) | (1ul << 12) | (1ul << 19));
        t0[14] = 0x01;                                              // ACPI
        t0[15] = 0x10;                                              // virtual machine
        t0[16] = 1; t0[17] = 0;                                     // system BIOS release 1.0
        t0[18] = 0xFF; t0[19] = 0xFF;                               // no embedded controller
        Add(0, 0x0000, t0, Vendor, BiosVersion, BiosDate);

        // Type 1, system information.
        var t1 = new byte[0x1B - 4];
        t1[0] = 1; t1[1] = 2; t1[2] = 3; t1[3] = 4;                 // manufacturer, product, version, serial
        d.Uuid.TryWriteBytes(t1.AsSpan(4));                        // SMBIOS 2.6+: the first three fields little-endian
        t1[20] = 0x06;                                              // wake-up: power switch
        t1[21] = 5; t1[22] = 6;                                     // SKU, family
        Add(1, 0x0100, t1, Vendor, Vendor, BiosVersion, "None", "None", "Virtual Machine");

        // Type 3, system enclosure: type "other", states safe, no security.
        var t3 = new byte[0x15 - 4];
        t3[0] = 1; t3[1] = 0x01; t3[2] = 2; t3[3] = 3; t3[4] = 4;  // manufacturer, type, version, serial, asset tag
        t3[5] = 0x03; t3[6] = 0x03; t3[7] = 0x03; t3[8] = 0x03;     // boot-up, power supply, thermal: safe; security: none
        Add(3, 0x0300, t3, Vendor, BiosVersion, "None", "None");

        // Type 4, one processor per socket: a central processor, populated and enabled, 64-bit capable.
        for (int s = 0; s < d.Sockets; s++)
        {
            var t4 = new byte[0x2A - 4];
            t4[0] = 1;                                              // socket designation
            t4[1] = 0x03;                                           // central processor
            t4[2] = 0x01;                                           // family: other
            t4[3] = 2;                                              // manufacturer
            t4[12] = 3;                                             // version
            t4[20] = 0x41;                                          // socket populated, CPU enabled
            t4[21] = 0x01;                                          // upgrade: other
            BinaryPrimitives.WriteUInt16LittleEndian(t4.AsSpan(22), 0xFFFF); // no L1, L2, L3 structures
            BinaryPrimitives.WriteUInt16LittleEndian(t4.AsSpan(24), 0xFFFF);
            BinaryPrimitives.WriteUInt16LittleEndian(t4.AsSpan(26), 0xFFFF);
            int cores = Math.Clamp(d.CoresPerSocket, 1, 255), threads = Math.Clamp(d.CoresPerSocket * d.ThreadsPerCore, 1, 255);
            t4[31] = (byte)cores; t4[32] = (byte)cores; t4[33] = (byte)threads;
            BinaryPrimitives.WriteUInt16LittleEndian(t4.AsSpan(34), 0x0004); // 64-bit capable
            BinaryPrimitives.WriteUInt16LittleEndian(t4.AsSpan(36), 0x0001); // processor family 2: other
            Add(4, (ushort)(0x0400 + s), t4, $"CPU #{s}", d.CpuVendor, "Virtual CPU");
        }

        // Type 16, the physical memory array: system board, system memory, no error correction, one device.
        ulong totalKib = (d.LowMemBytes + d.HighMemBytes) >> 10;
        var t16 = new byte[0x17 - 4];
        t16[0] = 0x03; t16[1] = 0x03; t16[2] = 0x03;
        BinaryPrimitives.WriteUInt32LittleEndian(t16.AsSpan(3), totalKib >= 0x8000_0000 ? 0x8000_0000u : (uint)totalKib);
        BinaryPrimitives.WriteUInt16LittleEndian(t16.AsSpan(7), 0xFFFE); // no error information
        BinaryPrimitives.WriteUInt16LittleEndian(t16.AsSpan(9), 1);
        BinaryPrimitives.WriteUInt64LittleEndian(t16.AsSpan(11), totalKib >= 0x8000_0000 ? totalKib << 10 : 0);
        Add(16, MemoryArrayHandle, t16);

        // Type 17, the memory device holding all of it (size in MiB, or the extended size past 32 GiB - 1 MiB).
        ulong totalMib = (d.LowMemBytes + d.HighMemBytes) >> 20;
        var t17 = new byte[0x28 - 4];
        BinaryPrimitives.WriteUInt16LittleEndian(t17.AsSpan(0), MemoryArrayHandle);
        BinaryPrimitives.WriteUInt16LittleEndian(t17.AsSpan(2), 0xFFFE);
        BinaryPrimitives.WriteUInt16LittleEndian(t17.AsSpan(4), 64);    // total width
        BinaryPrimitives.WriteUInt16LittleEndian(t17.AsSpan(6), 64);    // data width
        BinaryPrimitives.WriteUInt16LittleEndian(t17.AsSpan(8), totalMib >= 0x7FFF ? (ushort)0x7FFF : (ushort)totalMib);
        t17[10] = 0x09;                                                 // form factor: DIMM
        t17[12] = 1; t17[13] = 2;                                       // device locator, bank locator
        t17[14] = 0x07;                                                 // type: RAM
        BinaryPrimitives.WriteUInt16LittleEndian(t17.AsSpan(15), 0x0002); // type detail: unknown
        t17[19] = 3; t17[20] = 4; t17[21] = 5; t17[22] = 6;             // manufacturer, serial, asset tag, part number
        BinaryPrimitives.WriteUInt32LittleEndian(t17.AsSpan(24), totalMib >= 0x7FFF ? (uint)Math.Min(totalMib, 0x7FFF_FFFF) : 0);
        Add(17, 0x1100, t17, "DIMM 0", "Bank 0", Vendor, "None", "None", "None");

        // Type 19, one mapped address range per RAM range (addresses in KiB, the end inclusive).
        ushort handle = 0x1300;
        void MappedRange(ulong start, ulong bytes)
        {
            if (bytes == 0) return;
            var t19 = new byte[0x1F - 4];
            ulong startKib = start >> 10, endKib = ((start + bytes) >> 10) - 1;
            bool extended = endKib >= 0xFFFF_FFFF;
            BinaryPrimitives.WriteUInt32LittleEndian(t19.AsSpan(0), extended ? 0xFFFF_FFFFu : (uint)startKib);
            BinaryPrimitives.WriteUInt32LittleEndian(t19.AsSpan(4), extended ? 0xFFFF_FFFFu : (uint)endKib);
            BinaryPrimitives.WriteUInt16LittleEndian(t19.AsSpan(8), MemoryArrayHandle);
            t19[10] = 1;                                                // partition width
            BinaryPrimitives.WriteUInt64LittleEndian(t19.AsSpan(11), extended ? start : 0);
            BinaryPrimitives.WriteUInt64LittleEndian(t19.AsSpan(19), extended ? start + bytes - 1 : 0);
            Add(19, handle++, t19);
        }
        MappedRange(0, d.LowMemBytes);
        MappedRange(4ul << 30, d.HighMemBytes);

        // Type 32, system boot information: no errors.
        Add(32, 0x2000, new byte[0x0B - 4]);
        // Type 127, end of table.
        Add(127, 0x7F00, ReadOnlySpan<byte>.Empty);

        var table = w.ToArray();
        var ep = new byte[EntryPointLength];
        "_SM_"u8.CopyTo(ep);
        ep[5] = EntryPointLength;
        ep[6] = 2; ep[7] = 8;                                           // SMBIOS 2.8
        BinaryPrimitives.WriteUInt16LittleEndian(ep.AsSpan(8), (ushort)MaxStructureSize(table));
        "_DMI_"u8.CopyTo(ep.AsSpan(0x10));
        BinaryPrimitives.WriteUInt16LittleEndian(ep.AsSpan(0x16), (ushort)table.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(ep.AsSpan(0x1C), (ushort)count);
        ep[0x1E] = 0x28;                                                // BCD revision 2.8
        var image = new SmbiosImage(ep, table, count);
        SetTableAddress(image.EntryPoint, 0);
        return image;
    }

    /// <summary>Writes the structure table's address into the entry point and fixes both checksums.</summary>
    public static void SetTableAddress(byte[] entryPoint, uint address)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(entryPoint.AsSpan(0x18), address);
        entryPoint[0x15] = 0;
        entryPoint[0x15] = Checksum(entryPoint.AsSpan(0x10, EntryPointLength - 0x10));
        entryPoint[4] = 0;
        entryPoint[4] = Checksum(entryPoint.AsSpan(0, EntryPointLength));
    }

    /// <summary>The entry point at <paramref name="baseAddress"/> (16-byte aligned, where OSes scan 0xF0000-0xFFFFF for
    /// "_SM_") followed by the table on the next 16-byte boundary.</summary>
    public static byte[] Place(SmbiosImage image, ulong baseAddress)
    {
        if ((baseAddress & 15) != 0) throw new ArgumentException("the SMBIOS entry point must be 16-byte aligned", nameof(baseAddress));
        int tableOffset = (EntryPointLength + 15) & ~15;
        var bytes = new byte[tableOffset + image.Table.Length];
        var ep = (byte[])image.EntryPoint.Clone();
        SetTableAddress(ep, checked((uint)(baseAddress + (ulong)tableOffset)));
        ep.CopyTo(bytes, 0);
        image.Table.CopyTo(bytes, tableOffset);
        return bytes;
    }

    private static int MaxStructureSize(byte[] table)
    {
        int max = 0;
        for (int p = 0; p < table.Length;)
        {
            int end = p + table[p + 1];
            while (end + 1 < table.Length && (table[end] != 0 || table[end + 1] != 0)) end++;
            end += 2;
            max = Math.Max(max, end - p);
            p = end;
        }
        return max;
    }

    private static byte Checksum(ReadOnlySpan<byte> bytes)
    {
        byte sum = 0;
        foreach (byte b in bytes) sum += b;
        return (byte)-sum;
    }
}
