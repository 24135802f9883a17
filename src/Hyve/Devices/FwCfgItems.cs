// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;

namespace Hyve.Devices;

/// <summary>One <c>etc/e820</c> entry as QEMU's fw_cfg carries it (type 1 RAM, 2 reserved, 3 ACPI, 4 NVS).</summary>
public readonly record struct FwCfgE820Entry(ulong Address, ulong Length, uint Type);

/// <summary>
/// Encoders for the standard fw_cfg files firmware reads (SeaBIOS, OVMF): <c>etc/e820</c>, <c>bootorder</c>,
/// <c>etc/sercon-port</c>, and bhyve's <c>-f</c> user items.
/// </summary>
public static class FwCfgItems
{
    /// <summary>Name of the E820 file.</summary>
    public const string E820File = "etc/e820";
    /// <summary>Name of the boot order file.</summary>
    public const string BootOrderFile = "bootorder";
    /// <summary>Name of the serial-console port file (SeaBIOS sercon).</summary>
    public const string SerconPortFile = "etc/sercon-port";
    /// <summary>COM1's base port.</summary>
    public const ushort Com1Port = 0x3f8;

    /// <summary>Encodes E820 entries: packed {le64 address, le64 length, le32 type}, 20 bytes each.</summary>
    public static byte[] E820(IEnumerable<FwCfgE820Entry> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var list = new List<FwCfgE820Entry>(entries);
        var b = new byte[list.Count * 20];
        for (int i = 0; i < list.Count; i++)
        {
            var s = b.AsSpan(i * 20, 20);
            BinaryPrimitives.WriteUInt64LittleEndian(s, list[i].Address);
            BinaryPrimitives.WriteUInt64LittleEndian(s[8..], list[i].Length);
            BinaryPrimitives.WriteUInt32LittleEndian(s[16..], list[i].Type);
        }
        return b;
    }

    /// <summary>Encodes the boot order: one OpenFirmware device path a line, NUL-terminated, as QEMU builds it.</summary>
    public static byte[] BootOrder(IEnumerable<string> devicePaths)
    {
        ArgumentNullException.ThrowIfNull(devicePaths);
        return Encoding.ASCII.GetBytes(string.Join('\n', devicePaths) + "\0");
    }

    /// <summary>Encodes <c>etc/sercon-port</c>: the le16 I/O port SeaBIOS mirrors its text console to.</summary>
    public static byte[] SerconPort(ushort port = Com1Port) => FwCfg.Le16(port);

    /// <summary>Adds <c>etc/sercon-port</c> = COM1 when COM1 is the console and there is no display (so SeaBIOS prints to it).</summary>
    public static void AddSerialConsole(FwCfg fwCfg, bool com1IsConsole, bool hasDisplay)
    {
        ArgumentNullException.ThrowIfNull(fwCfg);
        if (com1IsConsole && !hasDisplay) fwCfg.AddFile(SerconPortFile, SerconPort());
    }

    /// <summary>
    /// Parses bhyve's <c>-f name,string=text</c> or <c>-f name,file=path</c>; bad syntax or an unreadable file is a
    /// host error. Names conventionally start with <c>opt/</c>.
    /// </summary>
    public static (string Name, byte[] Data) ParseUserItem(string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        int comma = spec.IndexOf(',');
        if (comma <= 0) throw new HostConfigException($"fw_cfg item '{spec}': expected name,string=... or name,file=...");
        string name = spec[..comma];
        string rest = spec[(comma + 1)..];
        if (Encoding.UTF8.GetByteCount(name) > FwCfg.MaxNameLength)
            throw new HostConfigException($"fw_cfg item name '{name}' is longer than {FwCfg.MaxNameLength} bytes");
        if (rest.StartsWith("string=", StringComparison.Ordinal))
            return (name, Encoding.UTF8.GetBytes(rest["string=".Length..]));
        if (rest.StartsWith("file=", StringComparison.Ordinal))
        {
            string path = rest["file=".Length..];
            try
            {
                return (name, File.ReadAllBytes(path));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
            {
                throw new HostConfigException($"fw_cfg item {name}: cannot read {path}: {e.Message}");
            }
        }
        throw new HostConfigException($"fw_cfg item '{spec}': expected string=... or file=... after the name");
    }
}
