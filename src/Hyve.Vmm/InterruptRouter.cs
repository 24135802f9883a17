// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Io;

namespace Hyve.Vmm;

/// <summary>
/// The VM's interrupt API for devices and the control socket (libvmmapi's vm_isa_*, vm_ioapic_*, vm_lapic_msi):
/// an ISA IRQ goes to both the 8259 pair and the IOAPIC (IRQ 0 to pin 2, the others to the pin of the same
/// number, as bhyve's MP and ACPI tables describe), IOAPIC pins only to the IOAPIC, MSIs straight to the local
/// APICs. It also wires the 8259's INTR to IOAPIC pin 0, the "virtual wire via I/O APIC" of the MP spec.
/// Assert counts live in the devices, so several sources may share a line.
/// </summary>
public sealed class InterruptRouter : IIrqLines
{
    /// <summary>Creates the router over the interrupt controllers and the APIC message path.</summary>
    public InterruptRouter(Vatpic pic, Vioapic ioapic, IApicBus apic)
    {
        ArgumentNullException.ThrowIfNull(pic);
        ArgumentNullException.ThrowIfNull(ioapic);
        ArgumentNullException.ThrowIfNull(apic);
        Pic = pic;
        Ioapic = ioapic;
        Apic = apic;
        pic.IntrChanged += OnPicIntrChanged;
    }

    /// <summary>The 8259 pair.</summary>
    public Vatpic Pic { get; }

    /// <summary>The IOAPIC.</summary>
    public Vioapic Ioapic { get; }

    /// <summary>Where MSIs go.</summary>
    public IApicBus Apic { get; }

    /// <summary>Number of IOAPIC pins (bhyve's vm_ioapic_pincount).</summary>
    public int IoapicPinCount => Ioapic.PinCount;

    /// <summary>The IOAPIC pin an ISA IRQ is wired to, or -1 (IRQ 2 is the 8259 cascade and has no pin of its own).</summary>
    public static int IoapicPinOfIsaIrq(int irq) => irq switch
    {
        0 => 2,
        2 => -1,
        >= 1 and <= 15 => irq,
        _ => -1,
    };

    /// <inheritdoc/>
    public void IsaAssert(int irq)
    {
        if ((uint)irq > 15) return;
        Pic.Assert(irq);
        int pin = IoapicPinOfIsaIrq(irq);
        if (pin >= 0) Ioapic.Assert(pin);
    }

    /// <inheritdoc/>
    public void IsaDeassert(int irq)
    {
        if ((uint)irq > 15) return;
        Pic.Deassert(irq);
        int pin = IoapicPinOfIsaIrq(irq);
        if (pin >= 0) Ioapic.Deassert(pin);
    }

    /// <inheritdoc/>
    public void IsaPulse(int irq)
    {
        if ((uint)irq > 15) return;
        Pic.Pulse(irq);
        int pin = IoapicPinOfIsaIrq(irq);
        if (pin >= 0) Ioapic.Pulse(pin);
    }

    /// <inheritdoc/>
    public void PicAssert(int irq)
    {
        if ((uint)irq <= 15) Pic.Assert(irq);
    }

    /// <inheritdoc/>
    public void PicDeassert(int irq)
    {
        if ((uint)irq <= 15) Pic.Deassert(irq);
    }

    /// <inheritdoc/>
    public void IoapicAssert(int pin) => Ioapic.Assert(pin);

    /// <inheritdoc/>
    public void IoapicDeassert(int pin) => Ioapic.Deassert(pin);

    /// <inheritdoc/>
    public void IoapicPulse(int pin) => Ioapic.Pulse(pin);

    /// <inheritdoc/>
    public void Msi(ulong address, ulong data) => Apic.DeliverMsi(address, data & 0xffff_ffff);

    /// <summary>Sets an ISA IRQ edge- or level-triggered in the 8259 ELCR (bhyve's vm_isa_set_irq_trigger);
    /// false for IRQs that are always edge (0, 1, 2, 8, 13) or out of range. The IOAPIC's trigger mode is the
    /// guest's to program in the redirection entry.</summary>
    public bool SetIsaTriggerMode(int irq, bool level) => Pic.SetTriggerMode(irq, level);

    private void OnPicIntrChanged()
    {
        // IOAPIC pin 0 sees the 8259's INTR; masked unless the guest programs it as ExtINT.
        if (Pic.IntrAsserted) Ioapic.Pulse(0);
    }
}
