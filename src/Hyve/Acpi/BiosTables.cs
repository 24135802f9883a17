// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;

namespace Hyve.Acpi;

/// <summary>Where <see cref="BiosTables.Install"/> put the tables (all inside the BIOS area E820 reserves).</summary>
/// <param name="RsdpAddress">The RSDP (for boot_params.acpi_rsdp_addr, Multiboot 2 tags, PVH start info).</param>
/// <param name="AcpiBase">First byte of the ACPI tables.</param>
/// <param name="AcpiLength">Bytes of ACPI tables.</param>
/// <param name="MpBase">The MP floating pointer.</param>
/// <param name="MpLength">Bytes of MP floating pointer and configuration table.</param>
public readonly record struct InstalledTables(ulong RsdpAddress, ulong AcpiBase, int AcpiLength, ulong MpBase, int MpLength);

/// <summary>
/// Writes the MP table, the SMBIOS tables and the ACPI tables into the BIOS area of guest RAM, as bhyve does before it
/// starts the vCPUs: the MP floating pointer and configuration table at 0xF0000, the SMBIOS entry point and structures
/// at 0xF1000, the ACPI tables from 0xF2400 with the RSDP first, both inside the 0xE0000-0xFFFFF range that OSes scan. Used for direct kernel boot; with firmware
/// (SeaBIOS, OVMF) the fw_cfg form from <see cref="AcpiLayout.ForFwCfg"/> lets the firmware place them instead.
/// </summary>
public static class BiosTables
{
    /// <summary>Writes both table sets for <paramref name="d"/> (the MP table only with <paramref name="mpTable"/>: -Y clears
    /// x86.mptable) and says where they are.</summary>
    public static InstalledTables Install(GuestMemory memory, PlatformDescription d, SmbiosImage? smbios = null, ulong mpBase = MpTable.DefaultBase,
        ulong acpiBase = AcpiLayout.DefaultBase, ulong smbiosBase = SmbiosTables.DefaultBase, bool mpTable = true)
    {
        byte[] mp = mpTable ? MpTable.Build(d, mpBase) : [];
        if (mpBase < acpiBase && mpBase + (ulong)mp.Length > acpiBase)
            throw new InvalidOperationException($"the MP table ({mp.Length} bytes at 0x{mpBase:x}) runs into the ACPI tables at 0x{acpiBase:x}");
        var acpi = AcpiLayout.Place(AcpiTables.Build(d), acpiBase);
        if (mp.Length > 0) Copy(memory, mpBase, mp);
        if (smbios is not null) InstallSmbios(memory, smbios, Math.Max(smbiosBase, (mpBase + (ulong)mp.Length + 15) & ~15ul), acpiBase);
        Copy(memory, acpiBase, acpi.Bytes);
        return new InstalledTables(acpi.RsdpAddress, acpiBase, acpi.Bytes.Length, mpBase, mp.Length);
    }

    /// <summary>Where the SMBIOS structures go when they do not fit beside their entry point (many sockets): the start of
    /// the 0xE0000 BIOS area; the entry point, which OSes scan for, stays in 0xF0000-0xFFFFF.</summary>
    public const ulong SmbiosOverflowBase = 0xE0000;

    // The entry point after the MP table (bhyve's 0xF1000 when that is free), the structures right behind it when they fit
    // before the ACPI tables, else at SmbiosOverflowBase.
    private static void InstallSmbios(GuestMemory memory, SmbiosImage smbios, ulong entryBase, ulong acpiBase)
    {
        var placed = SmbiosTables.Place(smbios, entryBase);
        if (entryBase + (ulong)placed.Length <= acpiBase)
        {
            Copy(memory, entryBase, placed);
            return;
        }
        if (entryBase + SmbiosTables.EntryPointLength > acpiBase || smbios.Table.Length > 0x10000)
            throw new InvalidOperationException($"the SMBIOS tables ({smbios.Table.Length} bytes) do not fit in the BIOS area");
        var ep = (byte[])smbios.EntryPoint.Clone();
        SmbiosTables.SetTableAddress(ep, (uint)SmbiosOverflowBase);
        Copy(memory, entryBase, ep);
        Copy(memory, SmbiosOverflowBase, smbios.Table);
    }

    private static void Copy(GuestMemory memory, ulong gpa, byte[] bytes)
    {
        if (!memory.TryGetSpan(gpa, bytes.Length, MemProt.Write, out var span))
            throw new InvalidOperationException($"guest RAM does not cover 0x{gpa:x}-0x{gpa + (ulong)bytes.Length - 1:x} for the BIOS tables");
        bytes.CopyTo(span);
    }
}
