// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Acpi;

/// <summary>
/// Builders for the static ACPI tables (ACPI 6.x chapter 5.2) of a <see cref="PlatformDescription"/>:
/// RSDP, RSDT, XSDT, FADT, FACS, MADT, HPET, MCFG, and the DSDT from <see cref="DsdtBuilder"/>.
/// Pointer fields are left zero and listed on each <see cref="AcpiTable"/>; <see cref="AcpiLayout"/> patches them.
/// </summary>
public static class AcpiTables
{
    /// <summary>Signature of the RSDP (its 8-byte "RSD PTR ").</summary>
    public const string RsdpSignature = "RSD PTR ";

    // Generic Address Structure address spaces and access sizes.
    private const byte SpaceMemory = 0, SpaceIo = 1;
    private const byte AccessUndefined = 0, AccessByte = 1, AccessWord = 2, AccessDWord = 3;

    /// <summary>
    /// All tables for <paramref name="d"/>, in placement order: RSDP, RSDT, XSDT, FADT (first in the XSDT, as UEFI
    /// asks), MADT, HPET, MCFG, FACS, DSDT.
    /// </summary>
    public static IReadOnlyList<AcpiTable> Build(PlatformDescription d)
    {
        var described = new List<AcpiTable> { Fadt(d), Madt(d) };
        if (d.HasHpet) described.Add(Hpet(d));
        if (d.EcamBase != 0) described.Add(Mcfg(d));
        var sigs = described.Select(t => t.Signature).ToList();
        return [Rsdp(), Rsdt(sigs), Xsdt(sigs), .. described, Facs(), Dsdt(d)];
    }

    /// <summary>The RSDP, revision 2: RSDT and XSDT pointers, a checksum over the first 20 bytes and an extended one over all 36.</summary>
    public static AcpiTable Rsdp()
    {
        var w = new TableWriter();
        w.Ascii(RsdpSignature, 8).U8(0).Ascii(TableWriter.OemId, 6).U8(2).Pointer(4, "RSDT").U32(36).Pointer(8, "XSDT").U8(0).Zeros(3);
        return w.Finish(RsdpSignature, 16, [new AcpiChecksum(8, 0, 20), new AcpiChecksum(32, 0, 36)]);
    }

    /// <summary>The RSDT: 32-bit pointers to <paramref name="tables"/>, for readers that predate the XSDT.</summary>
    public static AcpiTable Rsdt(IEnumerable<string> tables)
    {
        var w = new TableWriter().Header("RSDT", 1, "HYVERSDT");
        foreach (var t in tables) w.Pointer(4, t);
        return w.Finish("RSDT");
    }

    /// <summary>The XSDT: 64-bit pointers to <paramref name="tables"/>.</summary>
    public static AcpiTable Xsdt(IEnumerable<string> tables)
    {
        var w = new TableWriter().Header("XSDT", 1, "HYVEXSDT");
        foreach (var t in tables) w.Pointer(8, t);
        return w.Finish("XSDT");
    }

    /// <summary>FADT flag bits (ACPI 6.x table 5.10).</summary>
    [Flags]
    public enum FadtFlags : uint
    {
        /// <summary>WBINVD works.</summary>
        Wbinvd = 1u << 0,
        /// <summary>C1 supported on all processors.</summary>
        ProcC1 = 1u << 2,
        /// <summary>The power button is a control-method device (clear: fixed-feature button).</summary>
        PwrButton = 1u << 4,
        /// <summary>The sleep button is a control-method device or absent.</summary>
        SlpButton = 1u << 5,
        /// <summary>The PM timer is 32 bits wide.</summary>
        TmrValExt = 1u << 8,
        /// <summary>The reset register is supported.</summary>
        ResetRegSup = 1u << 10,
        /// <summary>No local video or input.</summary>
        Headless = 1u << 12,
        /// <summary>Use APIC physical destination mode.</summary>
        ForceApicPhysicalDestinationMode = 1u << 19,
        /// <summary>Hardware-reduced ACPI.</summary>
        HwReduced = 1u << 20,
    }

    /// <summary>IA-PC boot architecture flags (FADT IAPC_BOOT_ARCH).</summary>
    [Flags]
    public enum BootArch : ushort
    {
        /// <summary>ISA/LPC legacy devices present.</summary>
        LegacyDevices = 1 << 0,
        /// <summary>8042 keyboard controller present.</summary>
        I8042 = 1 << 1,
        /// <summary>VGA not present.</summary>
        VgaNotPresent = 1 << 2,
        /// <summary>Do not enable PCIe ASPM.</summary>
        PcieAspmControls = 1 << 4,
    }

    /// <summary>
    /// The FADT, revision 6 (276 bytes): PM1a event/control and PM timer blocks in I/O space (also as X_ generic
    /// addresses), SCI, no SMI command port (ACPI is always enabled: SCI_EN reads as set), the 0xCF9 reset register,
    /// the RTC century index, a fixed-feature power button and no sleep button; FACS and DSDT in both widths.
    /// </summary>
    public static AcpiTable Fadt(PlatformDescription d)
    {
        var w = new TableWriter().Header("FACP", 6, "HYVEFACP");
        w.Pointer(4, "FACS").Pointer(4, "DSDT");
        w.U8(0);                // reserved (ACPI 1.0 INT_MODEL)
        w.U8(0);                // preferred PM profile: unspecified
        w.U16(d.SciIrq);
        w.U32(0);               // SMI_CMD: none, the OS finds ACPI already enabled
        w.U8(0).U8(0).U8(0).U8(0); // ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
        w.U32(d.Pm1aEventPort).U32(0).U32(d.Pm1aControlPort).U32(0).U32(0).U32(d.PmTimerPort).U32(0).U32(0);
        w.U8(4).U8(2).U8(0).U8(4); // PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
        w.U8(0).U8(0).U8(0).U8(0); // GPE0_BLK_LEN, GPE1_BLK_LEN, GPE1_BASE, CST_CNT
        w.U16(101).U16(1001);      // P_LVL2_LAT, P_LVL3_LAT: above 100/1000, i.e. C2 and C3 unsupported
        w.U16(0).U16(0);           // FLUSH_SIZE, FLUSH_STRIDE
        w.U8(0).U8(0);             // DUTY_OFFSET, DUTY_WIDTH
        w.U8(0).U8(0).U8(d.RtcCenturyIndex); // DAY_ALRM, MON_ALRM, CENTURY
        var arch = BootArch.PcieAspmControls | (d.HasLpc || d.ComPorts.Count > 0 ? BootArch.LegacyDevices : 0)
                   | (d.HasI8042 ? BootArch.I8042 : 0) | (d.HasVga ? 0 : BootArch.VgaNotPresent);
        w.U16((ushort)arch).U8(0);
        var flags = FadtFlags.Wbinvd | FadtFlags.ProcC1 | FadtFlags.SlpButton | FadtFlags.TmrValExt | FadtFlags.ResetRegSup
                    | FadtFlags.ForceApicPhysicalDestinationMode | (d.HasVga ? 0 : FadtFlags.Headless);
        w.U32((uint)flags);
        w.Gas(SpaceIo, 8, 0, AccessByte, d.ResetPort).U8(d.ResetValue);
        w.U16(0);               // ARM_BOOT_ARCH
        w.U8(0);                // FADT minor version: 6.0
        w.Pointer(8, "FACS").Pointer(8, "DSDT");
        w.Gas(SpaceIo, 32, 0, AccessWord, d.Pm1aEventPort);
        w.Gas(0, 0, 0, AccessUndefined, 0);
        w.Gas(SpaceIo, 16, 0, AccessWord, d.Pm1aControlPort);
        w.Gas(0, 0, 0, AccessUndefined, 0);
        w.Gas(0, 0, 0, AccessUndefined, 0); // X_PM2_CNT_BLK
        w.Gas(SpaceIo, 32, 0, AccessDWord, d.PmTimerPort);
        w.Gas(0, 0, 0, AccessUndefined, 0); // X_GPE0_BLK
        w.Gas(0, 0, 0, AccessUndefined, 0); // X_GPE1_BLK
        w.Gas(0, 0, 0, AccessUndefined, 0); // SLEEP_CONTROL_REG (hardware-reduced only)
        w.Gas(0, 0, 0, AccessUndefined, 0); // SLEEP_STATUS_REG
        w.Ascii("HYVE", 8);     // hypervisor vendor identity
        return w.Finish("FACP");
    }

    /// <summary>The FACS: 64 bytes, 64-byte aligned, version 2, no checksum; the OS owns its global lock and waking vector.</summary>
    public static AcpiTable Facs()
    {
        var w = new TableWriter();
        w.Ascii("FACS", 4).U32(64).U32(0).U32(0).U32(0).U32(0).U64(0).U8(2).Zeros(3).U32(0).Zeros(24);
        return w.Finish("FACS", 64, []);
    }

    /// <summary>MADT interrupt flags: polarity (bits 0-1) and trigger mode (bits 2-3).</summary>
    public const ushort MpsActiveHigh = 0x1, MpsActiveLow = 0x3, MpsEdge = 0x4, MpsLevel = 0xC;

    /// <summary>
    /// The MADT: local APIC address and PCAT_COMPAT (8259s present), one enabled Processor Local APIC per vCPU with
    /// its topology APIC ID (x2APIC entries for IDs above 254), the IOAPIC, Interrupt Source Overrides ISA IRQ 0 →
    /// GSI 2 (active high, edge) and the SCI (active low, level: bhyve's acpi.c choice, which its mptbl.c repeats),
    /// and LINT1 as NMI on all processors.
    /// </summary>
    public static AcpiTable Madt(PlatformDescription d)
    {
        var w = new TableWriter().Header("APIC", 5, "HYVEAPIC");
        w.U32(d.LocalApicAddress).U32(1); // flags: PCAT_COMPAT
        bool anyX2 = false;
        for (int i = 0; i < d.CpuCount; i++)
        {
            uint id = d.ApicIds[i];
            if (id < 0xFF) w.U8(0).U8(8).U8(i).U8((int)id).U32(1);
            else { anyX2 = true; w.U8(9).U8(16).U16(0).U32(id).U32(1).U32((uint)i); }
        }
        w.U8(1).U8(12).U8(d.IoApicId).U8(0).U32(d.IoApicAddress).U32(d.IoApicGsiBase);
        w.U8(2).U8(10).U8(0).U8(0).U32(2).U16(MpsActiveHigh | MpsEdge);
        w.U8(2).U8(10).U8(0).U8(d.SciIrq).U32(d.SciIrq).U16(MpsActiveLow | MpsLevel);
        w.U8(4).U8(6).U8(0xFF).U16(MpsActiveHigh | MpsEdge).U8(1);
        if (anyX2) w.U8(0x0A).U8(12).U16(MpsActiveHigh | MpsEdge).U32(0xFFFF_FFFF).U8(1).Zeros(3);
        return w.Finish("APIC");
    }

    /// <summary>The HPET table: the HPET's capabilities as Event Timer Block ID, its base, number 0, minimum tick and 4 KiB page protection.</summary>
    public static AcpiTable Hpet(PlatformDescription d)
    {
        var w = new TableWriter().Header("HPET", 1, "HYVEHPET");
        w.U32(d.HpetBlockId).Gas(SpaceMemory, 64, 0, AccessUndefined, d.HpetAddress).U8(0).U16(d.HpetMinimumTick).U8(1);
        return w.Finish("HPET");
    }

    /// <summary>The MCFG: one ECAM allocation for segment 0 and the description's bus range.</summary>
    public static AcpiTable Mcfg(PlatformDescription d)
    {
        var w = new TableWriter().Header("MCFG", 1, "HYVEMCFG");
        w.Zeros(8).U64(d.EcamBase).U16(0).U8(d.EcamStartBus).U8(d.EcamEndBus).U32(0);
        return w.Finish("MCFG");
    }

    /// <summary>The DSDT: the definition block header (revision 2, 64-bit integers) around <see cref="DsdtBuilder.Build"/>'s AML.</summary>
    public static AcpiTable Dsdt(PlatformDescription d)
    {
        var w = new TableWriter().Header("DSDT", 2, "HYVEDSDT");
        w.Bytes(DsdtBuilder.Build(d));
        return w.Finish("DSDT");
    }
}
