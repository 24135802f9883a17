// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;

namespace Hyve.Acpi;

/// <summary>
/// The Intel MultiProcessor Specification 1.4 tables (bhyve's mptbl.c): a floating pointer structure followed by
/// the configuration table with processor, bus, IOAPIC, I/O interrupt and local interrupt entries, and an
/// extended table describing the ISA bus behind PCI bus 0. For OSes and loaders that predate ACPI or prefer it.
/// </summary>
public static class MpTable
{
    /// <summary>Default base: bhyve's 0xF0000, in the BIOS area an OS scans for "_MP_".</summary>
    public const ulong DefaultBase = 0xF0000;

    /// <summary>Bus IDs: PCI bus 0 is MP bus 0, the ISA bus behind the LPC bridge is MP bus 1 (as bhyve).</summary>
    public const byte PciBusId = 0, IsaBusId = 1;

    /// <summary>Entry types of the base table.</summary>
    public const byte EntryProcessor = 0, EntryBus = 1, EntryIoApic = 2, EntryIoInterrupt = 3, EntryLocalInterrupt = 4;

    /// <summary>Interrupt types of I/O and local interrupt entries.</summary>
    public const byte IntInt = 0, IntNmi = 1, IntSmi = 2, IntExtInt = 3;

    /// <summary>Interrupt flags: polarity (bits 0-1: 1 high, 3 low) and trigger (bits 2-3: 1 edge, 3 level); 0 conforms to the bus.</summary>
    public const ushort FlagsActiveLowLevel = 0x3 | 0xC;

    /// <summary>Extended entry type 128: a range of address type 0 (I/O), 1 (memory) or 2 (prefetch) on PCI bus 0.</summary>
    private static void SystemAddressSpace(TableWriter w, byte type, AddressWindow range) =>
        w.U8(128).U8(20).U8(PciBusId).U8(type).U64(range.Base).U64(range.Length);

    /// <summary>
    /// Builds the floating pointer (16 bytes at <paramref name="baseAddress"/>) and, right after it, the
    /// configuration table with its base and extended checksums.
    /// </summary>
    public static byte[] Build(PlatformDescription d, ulong baseAddress = DefaultBase)
    {
        if ((baseAddress & 0xF) != 0 || baseAddress + 0x10000 > 0x1_0000_0000) throw new ArgumentOutOfRangeException(nameof(baseAddress));
        var w = new TableWriter();
        // Configuration table header (44 bytes); lengths, counts and checksums patched below.
        w.Ascii("PCMP", 4).U16(0).U8(4).U8(0).Ascii("HYVE", 8).Ascii("Hypervisor", 12)
         .U32(0).U16(0).U16(0).U32(d.LocalApicAddress).U16(0).U8(0).U8(0);
        int count = 0;

        for (int i = 0; i < d.CpuCount; i++)
        {
            // Only 8-bit APIC IDs fit an MP processor entry; larger ones are left to ACPI.
            if (d.ApicIds[i] > 0xFF) continue;
            w.U8(EntryProcessor).U8((int)d.ApicIds[i]).U8(d.LocalApicVersion).U8(i == 0 ? 0x03 : 0x01) // EN, BP on vCPU 0
             .U32(d.CpuSignature).U32(d.CpuFeatureFlags).Zeros(8);
            count++;
        }
        w.U8(EntryBus).U8(PciBusId).Ascii("PCI", 6); count++;
        w.U8(EntryBus).U8(IsaBusId).Ascii("ISA", 6); count++;
        w.U8(EntryIoApic).U8(d.IoApicId).U8(d.IoApicVersion).U8(0x01).U32(d.IoApicAddress); count++;

        // ISA IRQs on the first 16 pins: pin 0 is the 8259s' ExtINT, IRQ 0 goes to pin 2, IRQ 2 (the cascade)
        // has no entry of its own, the SCI is level/active low like the MADT says, the rest are identity mapped.
        for (int pin = 0; pin < 16 && pin < d.IoApicPins; pin++)
        {
            byte type = IntInt; ushort flags = 0; int irq = pin;
            if (pin == 0) type = IntExtInt;
            else if (pin == 2) irq = 0;
            else if (pin == d.SciIrq) flags = FlagsActiveLowLevel;
            w.U8(EntryIoInterrupt).U8(type).U16(flags).U8(IsaBusId).U8(irq).U8(d.IoApicId).U8(pin);
            count++;
        }
        // PCI INTx: source IRQ is slot << 2 | pin; PCI interrupts are level, active low.
        foreach (var r in d.IntxRoutes)
        {
            if (!r.IsDescribable || r.IoApicPin >= d.IoApicPins) continue;
            w.U8(EntryIoInterrupt).U8(IntInt).U16(FlagsActiveLowLevel).U8(PciBusId).U8((r.Slot << 2) | (r.Pin - 1)).U8(d.IoApicId).U8(r.IoApicPin);
            count++;
        }
        // LINT0 takes the 8259s' ExtINT, LINT1 NMI, on every local APIC (destination 0xFF).
        w.U8(EntryLocalInterrupt).U8(IntExtInt).U16(0).U8(IsaBusId).U8(0).U8(0xFF).U8(0); count++;
        w.U8(EntryLocalInterrupt).U8(IntNmi).U16(0).U8(IsaBusId).U8(0).U8(0xFF).U8(1); count++;
        int baseLength = w.Position;

        // Extended table: the address ranges PCI bus 0 decodes (an OS that reads the extended table takes these
        // as the host bridge's windows), ISA behind PCI bus 0 with subtractive decode, and PCI bus 0 also
        // decoding the ISA I/O range.
        foreach (var io in d.PciIoWindows) SystemAddressSpace(w, 0, io);
        SystemAddressSpace(w, 1, d.PciMmio32Window);
        if (d.PciMmio64Window is { } m64) SystemAddressSpace(w, 1, m64);
        w.U8(129).U8(8).U8(IsaBusId).U8(0x01).U8(PciBusId).Zeros(3);
        w.U8(130).U8(8).U8(PciBusId).U8(0x00).U32(0);
        var bytes = new byte[16 + w.Position];
        var cfg = bytes.AsSpan(16);
        w.ToArray().CopyTo(cfg);
        int extLength = cfg.Length - baseLength;
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[4..], (ushort)baseLength);
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[34..], (ushort)count);
        BinaryPrimitives.WriteUInt16LittleEndian(cfg[40..], (ushort)extLength);
        cfg[42] = AcpiTable.ChecksumOf(cfg.Slice(baseLength, extLength), 0);
        cfg[7] = AcpiTable.ChecksumOf(cfg[..baseLength], 0);

        // Floating pointer: "_MP_", config table address, length in paragraphs, revision 1.4, checksum, features
        // all zero (a configuration table is present; virtual wire mode, no IMCR).
        var fp = bytes.AsSpan(0, 16);
        "_MP_"u8.CopyTo(fp);
        BinaryPrimitives.WriteUInt32LittleEndian(fp[4..], (uint)(baseAddress + 16));
        fp[8] = 1;
        fp[9] = 4;
        fp[10] = AcpiTable.ChecksumOf(fp, 0);
        return bytes;
    }
}
