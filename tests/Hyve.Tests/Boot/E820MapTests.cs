// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Boot;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Boot;

public class E820MapTests
{
    [Fact]
    public void SmallGuestHasConventionalEbdaBiosAndExtendedRam()
    {
        using var mem = new GuestMemory(256 << 20);
        var map = E820Map.FromMemory(mem);
        Assert.Equal(new[]
        {
            new E820Entry(0, 0x9fc00, E820Type.Ram),
            new E820Entry(0x9fc00, 0x400, E820Type.Reserved),
            new E820Entry(0xf0000, 0x10000, E820Type.Reserved),
            new E820Entry(0x100000, (256ul << 20) - 0x100000, E820Type.Ram),
        }, map.Entries);
    }

    [Fact]
    public void LargeGuestPutsHighmemAt4GiBAndLeavesThePciHoleOut()
    {
        using var mem = new GuestMemory(5ul << 30);
        var map = E820Map.FromMemory(mem);
        Assert.Equal(new E820Entry(0x100000, (3ul << 30) - 0x100000, E820Type.Ram), map.Entries[3]);
        Assert.Equal(new E820Entry(4ul << 30, 2ul << 30, E820Type.Ram), map.Entries[4]);
        Assert.Equal(5, map.Entries.Count);
        Assert.False(map.IsRam(3ul << 30, 4096));
    }

    [Fact]
    public void BootRomBelow4GiBIsReserved()
    {
        using var mem = new GuestMemory(64 << 20);
        string rom = GuestRom.ToFile(new byte[64 * 1024]);
        try { BootRom.Load(mem, rom, null); }
        finally { File.Delete(rom); }
        var map = E820Map.FromMemory(mem);
        Assert.Contains(new E820Entry(0xffff0000, 0x10000, E820Type.Reserved), map.Entries);
    }

    [Fact]
    public void AcpiRangeIsCarvedOutOfRamAndNeighboursMerge()
    {
        using var mem = new GuestMemory(64 << 20);
        var map = E820Map.FromMemory(mem);
        map.AddAcpi(0x3f00000, 0x10000);
        Assert.Contains(new E820Entry(0x100000, 0x3f00000 - 0x100000, E820Type.Ram), map.Entries);
        Assert.Contains(new E820Entry(0x3f00000, 0x10000, E820Type.Acpi), map.Entries);
        Assert.Contains(new E820Entry(0x3f10000, (64ul << 20) - 0x3f10000, E820Type.Ram), map.Entries);
        map.Add(0x3f00000, 0x10000, E820Type.Ram);
        Assert.Contains(new E820Entry(0x100000, (64ul << 20) - 0x100000, E820Type.Ram), map.Entries);
        Assert.Equal(4, map.Entries.Count);
    }

    [Fact]
    public void WritesTwentyByteEntries()
    {
        using var mem = new GuestMemory(64 << 20);
        var buf = new byte[20 * 8];
        int n = E820Map.FromMemory(mem).WriteTo(buf, 128);
        Assert.Equal(4, n);
        Assert.Equal(0x9fc00ul, BitConverter.ToUInt64(buf, 8));
        Assert.Equal(1u, BitConverter.ToUInt32(buf, 16));
        Assert.Equal(0x9fc00ul, BitConverter.ToUInt64(buf, 20));
        Assert.Equal(2u, BitConverter.ToUInt32(buf, 36));
    }
}
