// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm;

/// <summary>
/// The part of the VM interrupt API that device models drive (libvmmapi's vm_isa_*, vm_ioapic_*, vm_lapic_msi).
/// An ISA IRQ goes to both the 8259 pair and the IOAPIC pin of the same number (IRQ 0 to pin 2).
/// Assert/deassert count per line so several sources can share one.
/// </summary>
public interface IIrqLines
{
    /// <summary>Raises ISA IRQ <paramref name="irq"/> (0-15) on the PICs and the IOAPIC.</summary>
    void IsaAssert(int irq);

    /// <summary>Lowers ISA IRQ <paramref name="irq"/>.</summary>
    void IsaDeassert(int irq);

    /// <summary>Raises then lowers ISA IRQ <paramref name="irq"/> (an edge).</summary>
    void IsaPulse(int irq);

    /// <summary>Raises IRQ <paramref name="irq"/> (0-15) on the 8259 pair only: a PCI interrupt link (PIRQ) steered to
    /// an ISA IRQ, whose IOAPIC side is the device's own pin 16 and up (bhyve's vm_isa_assert_irq with no IOAPIC pin).</summary>
    void PicAssert(int irq);

    /// <summary>Lowers 8259 IRQ <paramref name="irq"/> raised by <see cref="PicAssert"/>.</summary>
    void PicDeassert(int irq);

    /// <summary>Raises IOAPIC pin <paramref name="pin"/> only.</summary>
    void IoapicAssert(int pin);

    /// <summary>Lowers IOAPIC pin <paramref name="pin"/>.</summary>
    void IoapicDeassert(int pin);

    /// <summary>Raises then lowers IOAPIC pin <paramref name="pin"/>.</summary>
    void IoapicPulse(int pin);

    /// <summary>Delivers a message-signalled interrupt with opaque address and data (as a device writes them).</summary>
    void Msi(ulong address, ulong data);
}
