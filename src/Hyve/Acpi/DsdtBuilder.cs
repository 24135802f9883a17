// SPDX-License-Identifier: BSD-2-Clause
using static Hyve.Acpi.Aml;

namespace Hyve.Acpi;

/// <summary>
/// Writes the DSDT's AML for a <see cref="PlatformDescription"/>, with bhyve's namespace: \_S5, \PICM and \_PIC,
/// the PCI root \_SB.PC00 (PCIe host bridge) with its windows and _PRT, the LPC bridge \_SB.PC00.ISA with the PIRQ
/// registers and link devices LNKA-LNKH, the legacy ISA devices, the HPET and the motherboard resources; plus one
/// processor device (ACPI0007, _UID = the MADT's processor UID = vCPU number) per vCPU under \_SB.
/// </summary>
public static class DsdtBuilder
{
    /// <summary>Path of the PCI root bridge.</summary>
    public const string PciRoot = "\\_SB.PC00";

    /// <summary>Path of the LPC bridge device when there is one.</summary>
    public const string LpcPath = PciRoot + ".ISA";

    private const int PirqDisable = 0x80, PirqIrqMask = 0x0F;

    /// <summary>The DSDT body (the term list after the table header).</summary>
    public static byte[] Build(PlatformDescription d)
    {
        var root = new List<byte[]>
        {
            // SLP_TYP values for S5 in PM1a_CNT and PM1b_CNT (bhyve's two-element package).
            Name("_S5", Package(Integer(d.S5SleepType), Zero)),
            // The OS calls \_PIC(1) when it switches to APIC mode; _PRT then answers with GSIs.
            Name("PICM", Zero),
            Method("_PIC", 1, false, Store(Arg(0), Ref("PICM"))),
            Scope("\\_SB", [PciRootDevice(d), .. Processors(d)]),
        };
        return Concat(root);
    }

    private static IEnumerable<byte[]> Processors(PlatformDescription d)
    {
        for (int i = 0; i < d.CpuCount; i++)
            yield return Device($"C{i:X3}", Name("_HID", String("ACPI0007")), Name("_UID", Integer((ulong)i)));
    }

    private static byte[] PciRootDevice(PlatformDescription d)
    {
        var crs = new AmlResourceTemplate().WordBusNumber(d.EcamStartBus, d.EcamEndBus).Io(0x0CF8, 0x0CF8, 1, 8);
        foreach (var w in d.PciIoWindows) crs.WordIo((ushort)w.Base, (ushort)w.Limit);
        crs.DWordMemory((uint)d.PciMmio32Window.Base, (uint)d.PciMmio32Window.Limit);
        if (d.PciMmio64Window is { } w64) crs.QWordMemory(w64.Base, w64.Limit);

        var terms = new List<byte[]>
        {
            Name("_HID", EisaId("PNP0A08")),
            Name("_CID", EisaId("PNP0A03")),
            Name("_ADR", Zero),
            Name("_UID", Zero),
            Name("_SEG", Zero),
            Name("_BBN", Integer(d.EcamStartBus)),
            Name("_CRS", crs.ToBuffer()),
        };
        terms.Add(Osc());
        // The LPC device comes before the _PRT that names its link devices, so the references resolve as they load.
        if (d.HasLpc) terms.Add(Device("ISA", [.. LpcTerms(d), .. LegacyDevices(d)]));
        else terms.AddRange(LegacyDevices(d));
        terms.AddRange(Prt(d));
        if (d.HasHpet)
            terms.Add(Device("HPET", Name("_HID", EisaId("PNP0103")), Name("_UID", Zero),
                Name("_CRS", new AmlResourceTemplate().Memory32Fixed((uint)d.HpetAddress, 0x400).ToBuffer())));
        return Device("PC00", terms);
    }

    /// <summary>The PCI Firmware Specification's _OSC UUID for PCI Express host bridges.</summary>
    public const string PcieOscUuid = "33DB4D5B-1FF7-401C-9657-7441C03DD766";

    /// <summary>
    /// _OSC: grants the OS every PCIe feature it asks for (native hotplug, PME, AER, capability structure control)
    /// except SHPC hotplug, which no device here has; flags an unknown UUID or revision. Without it Linux logs
    /// that _OSC failed and disables ASPM.
    /// </summary>
    private static byte[] Osc() => Method("_OSC", 4, true,
        CreateDWordField(Arg(3), 0, "CDW1"),
        If(LEqual(Arg(0), ToUuid(PcieOscUuid)),
            CreateDWordField(Arg(3), 8, "CDW3"),
            Store(Ref("CDW3"), Local(0)),
            And(Local(0), Integer(0x1D), Ref("CDW3")),
            If(LNotEqual(Arg(1), One), Or(Ref("CDW1"), Integer(0x08), Ref("CDW1"))),
            If(LNotEqual(Local(0), Ref("CDW3")), Or(Ref("CDW1"), Integer(0x10), Ref("CDW1")))),
        Else(Or(Ref("CDW1"), Integer(0x04), Ref("CDW1"))),
        Return(Arg(3)));

    private static uint PrtAddress(int slot) => (uint)(slot << 16) | 0xFFFF;

    /// <summary>_PRT: GSIs in APIC mode; with an LPC bridge, link devices in PIC mode chosen by PICM (as bhyve's pci_emul.c).</summary>
    private static IEnumerable<byte[]> Prt(PlatformDescription d)
    {
        var routes = d.IntxRoutes.Where(r => r.IsDescribable).ToList();
        if (routes.Count == 0) yield break;
        var aprt = Package(routes.Select(r => Package(DWord(PrtAddress(r.Slot)), Integer((ulong)r.Pin - 1), Zero, Integer((ulong)r.IoApicPin))));
        if (!d.HasLpc)
        {
            yield return Name("_PRT", aprt);
            yield break;
        }
        var pprt = Package(routes.Select(r => Package(DWord(PrtAddress(r.Slot)), Integer((ulong)r.Pin - 1),
            Ref($"{LpcPath}.LNK{(char)('A' + r.Pirq - 1)}"), Zero)));
        yield return Name("PPRT", pprt);
        yield return Name("APRT", aprt);
        yield return Method("_PRT", 0, false,
            If(Ref("PICM"), Return(Ref("APRT"))),
            Else(Return(Ref("PPRT"))));
    }

    /// <summary>The LPC bridge's PCI identity, PIRQ routing registers and link devices (bhyve's pci_lpc.c and pci_irq.c).</summary>
    private static IEnumerable<byte[]> LpcTerms(PlatformDescription d)
    {
        yield return Name("_ADR", Integer((ulong)((d.LpcSlot << 16) | d.LpcFunction)));
        yield return OperationRegion("LPCR", AmlRegionSpace.PciConfig, 0, 0x100);
        yield return Field("LPCR", AmlAccess.Any, false, AmlUpdate.Preserve,
            AmlFieldUnit.Offset(0x60), AmlFieldUnit.Named("PIRA", 8), AmlFieldUnit.Named("PIRB", 8),
            AmlFieldUnit.Named("PIRC", 8), AmlFieldUnit.Named("PIRD", 8),
            AmlFieldUnit.Offset(0x68), AmlFieldUnit.Named("PIRE", 8), AmlFieldUnit.Named("PIRF", 8),
            AmlFieldUnit.Named("PIRG", 8), AmlFieldUnit.Named("PIRH", 8));
        // PIRV(reg): 1 when a routing register is enabled and names a permitted IRQ (the router's own rule).
        yield return Method("PIRV", 1, false,
            If(And(Arg(0), Integer(PirqDisable)), Return(Zero)),
            Return(And(ShiftRight(Integer(d.PirqPermittedIrqs), And(Arg(0), Integer(PirqIrqMask))), One)));
        for (int pin = 0; pin < 8; pin++) yield return LinkDevice(d, pin);
    }

    private static byte[] LinkDevice(PlatformDescription d, int pin)
    {
        char l = (char)('A' + pin);
        string reg = $"PIR{l}", cb = $"CB{pin + 1:X2}", cir = $"CIR{l}", sir = $"SIR{l}";
        var prs = new AmlResourceTemplate().IrqMask(edge: false, activeLow: true, shared: true, d.PirqPermittedIrqs);
        var current = new AmlResourceTemplate().IrqMask(edge: false, activeLow: true, shared: true, 0);
        return Device($"LNK{l}",
            Name("_HID", EisaId("PNP0C0F")),
            Name("_UID", Integer((ulong)pin + 1)),
            Method("_STA", 0, false,
                If(Call("PIRV", Ref(reg)), Return(Integer(0x0B))),
                Else(Return(Integer(0x09)))),
            Name("_PRS", prs.ToBuffer()),
            Name(cb, current.ToBuffer()),
            CreateWordField(Ref(cb), 1, cir),
            Method("_CRS", 0, false,
                And(Ref(reg), Integer(PirqDisable | PirqIrqMask), Local(0)),
                If(Call("PIRV", Local(0)), ShiftLeft(One, Local(0), Ref(cir))),
                Else(Store(Zero, Ref(cir))),
                Return(Ref(cb))),
            Method("_DIS", 0, false, Store(Integer(PirqDisable), Ref(reg))),
            // _SRS creates a named field, so it is Serialized to stay re-entrant.
            Method("_SRS", 1, true,
                CreateWordField(Arg(0), 1, sir),
                FindSetRightBit(Ref(sir), Local(0)),
                Store(Decrement(Local(0)), Ref(reg))));
    }

    private static byte[] Hid(string eisa) => Name("_HID", EisaId(eisa));

    /// <summary>RTC, PIT, PICs, 8042, serial ports and the motherboard resources the platform decodes.</summary>
    private static IEnumerable<byte[]> LegacyDevices(PlatformDescription d)
    {
        yield return Device("RTC", Hid("PNP0B00"), Name("_CRS", new AmlResourceTemplate().Io(0x70, 2).IrqNoFlags(8).ToBuffer()));
        yield return Device("TIMR", Hid("PNP0100"), Name("_CRS", new AmlResourceTemplate().Io(0x40, 4).IrqNoFlags(0).ToBuffer()));
        yield return Device("PIC", Hid("PNP0000"), Name("_CRS", new AmlResourceTemplate().Io(0x20, 2).Io(0xA0, 2).IrqNoFlags(2).ToBuffer()));
        if (d.HasI8042)
        {
            yield return Device("KBD", Hid("PNP0303"), Name("_CRS", new AmlResourceTemplate().Io(0x60, 1).Io(0x64, 1).IrqNoFlags(1).ToBuffer()));
            yield return Device("MOU", Hid("PNP0F13"), Name("_CRS", new AmlResourceTemplate().IrqNoFlags(12).ToBuffer()));
        }
        foreach (var c in d.ComPorts.OrderBy(c => c.Unit))
        {
            if (c.Unit is < 1 or > 9 || c.Irq > 15) continue;
            yield return Device($"COM{c.Unit}", Hid("PNP0501"), Name("_UID", Integer((ulong)c.Unit)),
                Name("_CRS", new AmlResourceTemplate().Io(c.IoBase, 8).IrqNoFlags(c.Irq).ToBuffer()));
        }
        // Ports and memory the chipset decodes that belong to no device above: the PM blocks, ELCR and ECAM,
        // so the OS neither hands them to PCI devices nor refuses MMCONFIG as unreserved.
        var res = new AmlResourceTemplate()
            .Io(d.Pm1aEventPort, 4).Io(d.Pm1aControlPort, 2).Io(d.PmTimerPort, 4).Io(0x4D0, 2);
        ulong ecamSize = ((ulong)d.EcamEndBus - d.EcamStartBus + 1) << 20;
        if (d.EcamBase != 0 && d.EcamBase + ecamSize <= 0x1_0000_0000)
            res.Memory32Fixed((uint)(d.EcamBase + ((ulong)d.EcamStartBus << 20)), (uint)ecamSize);
        yield return Device("SRES", Hid("PNP0C02"), Name("_UID", One), Name("_CRS", res.ToBuffer()));
    }
}
