// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Acpi;

/// <summary>An address range [Base, Limit] (both inclusive), as ACPI resource descriptors state windows.</summary>
/// <param name="Base">First address.</param>
/// <param name="Limit">Last address (inclusive).</param>
public readonly record struct AddressWindow(ulong Base, ulong Limit)
{
    /// <summary>Number of addresses in the window.</summary>
    public ulong Length => Limit - Base + 1;
}

/// <summary>
/// One PCI INTx route: the pin of a slot goes to an IOAPIC pin (APIC mode) and to one of the eight PIRQ links
/// A-H of the LPC bridge's interrupt router (8259 mode). Numbered as the PCI router's own routes (Hyve.Pci), so
/// they copy field by field. Only bus 0 is described (the root bus); routes on other buses are ignored.
/// </summary>
/// <param name="Bus">PCI bus number.</param>
/// <param name="Slot">PCI device number 0-31.</param>
/// <param name="Pin">Interrupt pin as config space's INTERRUPT_PIN: 1 = INTA# .. 4 = INTD# (the _PRT and the MP table use this minus one).</param>
/// <param name="IoApicPin">The IOAPIC input (GSI) the pin drives, 16 and up on this platform.</param>
/// <param name="Pirq">The PIRQ link, 1 = PIRQA (LNKA) .. 8 = PIRQH (LNKH).</param>
public readonly record struct IntxRoute(int Bus, int Slot, int Pin, int IoApicPin, int Pirq)
{
    /// <summary>Whether the route is on bus 0 with a slot, pin and PIRQ in range (the ones the tables describe).</summary>
    public bool IsDescribable => Bus == 0 && Slot is >= 0 and < 32 && Pin is >= 1 and <= 4 && Pirq is >= 1 and <= 8 && IoApicPin >= 0;
}

/// <summary>A legacy 16550 serial port decoded by the LPC bridge.</summary>
/// <param name="Unit">1 for COM1 .. 4 for COM4; becomes the ACPI _UID.</param>
/// <param name="IoBase">First of its eight I/O ports (0x3F8, 0x2F8, 0x3E8, 0x2E8).</param>
/// <param name="Irq">ISA IRQ (4 or 3).</param>
public readonly record struct LegacyComPort(int Unit, ushort IoBase, byte Irq);

/// <summary>
/// Everything the ACPI and MP table builders need to know about the machine. The machine fills it from its
/// configuration and device models; the builders never look anywhere else. Defaults are bhyve's platform.
/// </summary>
public sealed record PlatformDescription
{
    /// <summary>Local APIC ID of each vCPU, indexed by vCPU number (vCPU 0 is the bootstrap processor).</summary>
    public required IReadOnlyList<uint> ApicIds { get; init; }

    /// <summary>Number of vCPUs.</summary>
    public int CpuCount => ApicIds.Count;

    /// <summary>Local APIC MMIO base.</summary>
    public uint LocalApicAddress { get; init; } = 0xFEE0_0000;

    /// <summary>IOAPIC ID, as its ID register reports it (bhyve: 0).</summary>
    public byte IoApicId { get; init; }

    /// <summary>IOAPIC MMIO base.</summary>
    public uint IoApicAddress { get; init; } = 0xFEC0_0000;

    /// <summary>First GSI of the IOAPIC.</summary>
    public uint IoApicGsiBase { get; init; }

    /// <summary>Number of IOAPIC input pins.</summary>
    public int IoApicPins { get; init; } = 32;

    /// <summary>IOAPIC version register value (low byte), for the MP table.</summary>
    public byte IoApicVersion { get; init; } = 0x11;

    /// <summary>Local APIC version, for the MP table (KVM's and Hyve's xAPIC report 0x14).</summary>
    public byte LocalApicVersion { get; init; } = 0x14;

    /// <summary>Whether an HPET is present (then an HPET table and a PNP0103 device are written).</summary>
    public bool HasHpet { get; init; } = true;

    /// <summary>HPET MMIO base.</summary>
    public ulong HpetAddress { get; init; } = 0xFED0_0000;

    /// <summary>
    /// The HPET's General Capabilities register, low 32 bits, which the HPET table repeats as Event Timer Block ID
    /// (default: bhyve's vhpet, vendor 0x8086, 8 timers, 64-bit counter, revision 1).
    /// </summary>
    public uint HpetBlockId { get; init; } = 0x8086_2701;

    /// <summary>HPET table minimum clock tick in periodic mode.</summary>
    public ushort HpetMinimumTick { get; init; }

    /// <summary>PCI Express enhanced configuration (ECAM) base; zero means none (no MCFG table).</summary>
    public ulong EcamBase { get; init; } = 0xE000_0000;

    /// <summary>First bus number the ECAM region decodes.</summary>
    public byte EcamStartBus { get; init; }

    /// <summary>Last bus number the ECAM region decodes.</summary>
    public byte EcamEndBus { get; init; } = 255;

    /// <summary>The PCI root bridge's I/O windows (default bhyve's: all ports except 0xCF8-0xCFF's neighbourhood).</summary>
    public IReadOnlyList<AddressWindow> PciIoWindows { get; init; } = [new(0x0000, 0x0CF7), new(0x0D00, 0xFFFF)];

    /// <summary>The PCI root bridge's 32-bit MMIO window.</summary>
    public AddressWindow PciMmio32Window { get; init; } = new(0xC000_0000, 0xDFFF_FFFF);

    /// <summary>The PCI root bridge's 64-bit MMIO window, or null for none.</summary>
    public AddressWindow? PciMmio64Window { get; init; }

    /// <summary>INTx routes of the devices on bus 0.</summary>
    public IReadOnlyList<IntxRoute> IntxRoutes { get; init; } = [];

    /// <summary>Whether the LPC (PCI-ISA) bridge exists. Without it there are no link devices and no 8259-mode _PRT, as in bhyve.</summary>
    public bool HasLpc { get; init; }

    /// <summary>PCI slot of the LPC bridge.</summary>
    public int LpcSlot { get; init; } = 31;

    /// <summary>PCI function of the LPC bridge.</summary>
    public int LpcFunction { get; init; }

    /// <summary>ISA IRQs the PIRQ router accepts, as a bit mask (ICH10: 3-7, 9-12, 14, 15).</summary>
    public ushort PirqPermittedIrqs { get; init; } = 0xDEF8;

    /// <summary>Serial ports present.</summary>
    public IReadOnlyList<LegacyComPort> ComPorts { get; init; } = [];

    /// <summary>Whether the 8042 keyboard controller is present (ports 0x60/0x64).</summary>
    public bool HasI8042 { get; init; } = true;

    /// <summary>Whether a VGA device exists (otherwise the FADT says VGA not present and headless).</summary>
    public bool HasVga { get; init; }

    /// <summary>PM1a event block port (PM1_STS then PM1_EN, 2 bytes each).</summary>
    public ushort Pm1aEventPort { get; init; } = AcpiPorts.Pm1aEvent;

    /// <summary>PM1a control block port (PM1_CNT, 2 bytes).</summary>
    public ushort Pm1aControlPort { get; init; } = AcpiPorts.Pm1aControl;

    /// <summary>ACPI PM timer port (4 bytes, 32-bit counter).</summary>
    public ushort PmTimerPort { get; init; } = AcpiPorts.PmTimer;

    /// <summary>ISA IRQ of the SCI.</summary>
    public byte SciIrq { get; init; } = 9;

    /// <summary>The SLP_TYP value the DSDT's \_S5 names (bhyve: 5); AcpiPm powers off on it.</summary>
    public byte S5SleepType { get; init; } = 5;

    /// <summary>CMOS index of the RTC century byte.</summary>
    public byte RtcCenturyIndex { get; init; } = 0x32;

    /// <summary>Port of the reset register (the PCH's RST_CNT).</summary>
    public ushort ResetPort { get; init; } = 0xCF9;

    /// <summary>Value written to the reset register to reset (SYS_RST | RST_CPU).</summary>
    public byte ResetValue { get; init; } = 0x06;

    /// <summary>CPUID leaf 1 EAX (family/model/stepping) for the MP table's processor entries.</summary>
    public uint CpuSignature { get; init; } = 0x0000_06A5;

    /// <summary>CPUID leaf 1 EDX feature flags for the MP table's processor entries.</summary>
    public uint CpuFeatureFlags { get; init; } = 0xBFEB_FBFF;

    /// <summary>A description of <paramref name="cpus"/> vCPUs with APIC IDs 0..n-1 and bhyve's defaults otherwise.</summary>
    public static PlatformDescription ForCpus(int cpus)
    {
        var ids = new uint[cpus];
        for (int i = 0; i < cpus; i++) ids[i] = (uint)i;
        return new PlatformDescription { ApicIds = ids };
    }
}

/// <summary>The platform's fixed ACPI I/O ports (bhyve's layout).</summary>
public static class AcpiPorts
{
    /// <summary>PM1a event block.</summary>
    public const ushort Pm1aEvent = 0x400;
    /// <summary>PM1a control block.</summary>
    public const ushort Pm1aControl = 0x404;
    /// <summary>PM timer.</summary>
    public const ushort PmTimer = 0x408;
}
