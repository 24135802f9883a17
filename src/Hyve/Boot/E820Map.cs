// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Vmm;

namespace Hyve.Boot;

/// <summary>E820 address range types (ACPI's address range descriptor types).</summary>
public enum E820Type : uint
{
    /// <summary>Usable RAM.</summary>
    Ram = 1,
    /// <summary>Reserved: not for the OS.</summary>
    Reserved = 2,
    /// <summary>ACPI tables: reclaimable once the OS has read them.</summary>
    Acpi = 3,
    /// <summary>ACPI NVS: must be preserved across sleep.</summary>
    Nvs = 4,
}

/// <summary>One E820 range.</summary>
/// <param name="Base">First byte.</param>
/// <param name="Length">Length in bytes.</param>
/// <param name="Type">What the range is.</param>
public readonly record struct E820Entry(ulong Base, ulong Length, E820Type Type)
{
    /// <summary>One past the last byte.</summary>
    public ulong End => Base + Length;
}

/// <summary>
/// The guest's physical memory map as firmware reports it (INT 15h E820, Linux's boot_params.e820_table,
/// PVH's memmap, Multiboot's mmap). Built from <see cref="GuestMemory"/>; the loaders, fw_cfg and the ACPI code
/// add reserved and ACPI ranges to it. Entries stay sorted, non-overlapping and merged when adjacent and alike.
/// </summary>
public sealed class E820Map
{
    /// <summary>Where the EBDA begins: conventional memory ends 1 KiB below 640 KiB.</summary>
    public const ulong EbdaStart = 0x9fc00;
    /// <summary>End of conventional memory (640 KiB).</summary>
    public const ulong ConventionalEnd = 0xa0000;
    /// <summary>Start of the system BIOS area kept reserved below 1 MiB.</summary>
    public const ulong BiosStart = 0xf0000;
    /// <summary>1 MiB.</summary>
    public const ulong HighStart = 0x100000;
    /// <summary>Most entries Linux's boot_params holds (E820_MAX_ENTRIES_ZEROPAGE).</summary>
    public const int MaxZeroPageEntries = 128;

    private readonly List<E820Entry> _entries = [];

    /// <summary>The entries, sorted by base.</summary>
    public IReadOnlyList<E820Entry> Entries => _entries;

    /// <summary>
    /// The map for <paramref name="memory"/>: RAM 0-0x9FC00, reserved EBDA 0x9FC00-0xA0000 and BIOS 0xF0000-1 MiB,
    /// RAM from 1 MiB to the top of lowmem, reserved boot ROM and variable store below 4 GiB when mapped,
    /// RAM for highmem at 4 GiB. The VGA hole and the PCI hole are simply absent.
    /// </summary>
    public static E820Map FromMemory(GuestMemory memory)
    {
        var map = new E820Map();
        ulong low = memory.LowMemSize;
        map.Add(0, Math.Min(low, EbdaStart), E820Type.Ram);
        map.Add(EbdaStart, ConventionalEnd - EbdaStart, E820Type.Reserved);
        map.Add(BiosStart, HighStart - BiosStart, E820Type.Reserved);
        if (low > HighStart) map.Add(HighStart, low - HighStart, E820Type.Ram);
        foreach (var m in memory.Mappings)
            if (!m.Segment.IsSysMem && m.Gpa < GuestMemory.HighMemBase && m.Segment.Name is "bootrom" or "bootvars")
                map.Add(m.Gpa, m.Length, E820Type.Reserved);
        if (memory.HighMemSize > 0) map.Add(GuestMemory.HighMemBase, memory.HighMemSize, E820Type.Ram);
        return map;
    }

    /// <summary>Marks [<paramref name="baseAddress"/>, +<paramref name="length"/>) as <paramref name="type"/>,
    /// replacing whatever parts of existing entries it covers (for example ACPI tables carved out of RAM).</summary>
    public void Add(ulong baseAddress, ulong length, E820Type type)
    {
        if (length == 0) return;
        if (baseAddress + length < baseAddress) throw new ArgumentOutOfRangeException(nameof(length), "range wraps");
        ulong end = baseAddress + length;
        var next = new List<E820Entry>(_entries.Count + 2);
        foreach (var e in _entries)
        {
            if (e.End <= baseAddress || e.Base >= end) { next.Add(e); continue; }
            if (e.Base < baseAddress) next.Add(new E820Entry(e.Base, baseAddress - e.Base, e.Type));
            if (e.End > end) next.Add(new E820Entry(end, e.End - end, e.Type));
        }
        next.Add(new E820Entry(baseAddress, length, type));
        next.Sort((a, b) => a.Base.CompareTo(b.Base));
        _entries.Clear();
        foreach (var e in next)
        {
            if (_entries.Count > 0 && _entries[^1].End == e.Base && _entries[^1].Type == e.Type)
                _entries[^1] = _entries[^1] with { Length = _entries[^1].Length + e.Length };
            else
                _entries.Add(e);
        }
    }

    /// <summary>Marks a range reserved.</summary>
    public void AddReserved(ulong baseAddress, ulong length) => Add(baseAddress, length, E820Type.Reserved);

    /// <summary>Marks a range as holding ACPI tables.</summary>
    public void AddAcpi(ulong baseAddress, ulong length) => Add(baseAddress, length, E820Type.Acpi);

    /// <summary>True when [<paramref name="baseAddress"/>, +<paramref name="length"/>) lies inside one RAM entry.</summary>
    public bool IsRam(ulong baseAddress, ulong length)
    {
        if (baseAddress + length < baseAddress) return false;
        foreach (var e in _entries)
            if (e.Type == E820Type.Ram && baseAddress >= e.Base && baseAddress + length <= e.End) return true;
        return false;
    }

    /// <summary>Writes the entries in the 20-byte E820 layout (base u64, length u64, type u32); returns the count written.</summary>
    public int WriteTo(Span<byte> dest, int maxEntries)
    {
        int n = 0;
        foreach (var e in _entries)
        {
            if (n == maxEntries || (n + 1) * 20 > dest.Length) break;
            var d = dest[(n * 20)..];
            BinaryPrimitives.WriteUInt64LittleEndian(d, e.Base);
            BinaryPrimitives.WriteUInt64LittleEndian(d[8..], e.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(d[16..], (uint)e.Type);
            n++;
        }
        return n;
    }
}
