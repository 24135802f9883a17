// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Pci;

/// <summary>Where one (bus, slot, INTx pin) goes: an IOAPIC pin (16 and up) and a PIRQ link (1-8 = A-H).</summary>
public sealed record PciIntxRoute(int Bus, int Slot, int Pin, int IoapicPin, int Pirq)
{
    /// <summary>The pin as a letter: 'A'-'D'.</summary>
    public char PinLetter => (char)('A' + Pin - 1);
    /// <summary>The PIRQ link as a letter: 'A'-'H' (ACPI LNKA-LNKH).</summary>
    public char PirqLetter => (char)('A' + Pirq - 1);
}

/// <summary>
/// The PCI interrupt router (bhyve's pci_irq.c, modelled on ICH10's eight PIRQ links): every routed (slot, pin)
/// gets an IOAPIC pin from 16 up and a PIRQ link; a link's routing register (bit 7 disables, bits 3:0 the ISA IRQ)
/// sends the level to that ISA IRQ as well. Only IRQs 3-7, 9-12, 14 and 15 are honoured; others act as disabled.
/// </summary>
public sealed class PciIntxRouter : IDeviceState
{
    /// <summary>Number of PIRQ links (A-H).</summary>
    public const int PirqCount = 8;
    /// <summary>Routing register bit 7: link disabled.</summary>
    public const byte PirqDisabled = 0x80;
    /// <inheritdoc/>
    public string StateName => "pci-intx-router";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;
    private const ushort PermittedIrqs = 0xdef8;

    private readonly byte[] _reg = new byte[PirqCount];
    private readonly int[] _use = new int[PirqCount];
    private readonly int[] _active = new int[PirqCount];
    private readonly int[] _irqCount = new int[16];
    private readonly Func<IIrqLines?> _irq;
    private readonly List<PciIntxRoute> _routes = [];
    private readonly object _gate = new();
    private int _nextIoapic;

    /// <summary>Creates a router whose output goes to the lines <paramref name="irq"/> returns (looked up at each edge).</summary>
    public PciIntxRouter(Func<IIrqLines?> irq, int ioapicPins = 32)
    {
        _irq = irq;
        if (ioapicPins <= 16) throw new ArgumentOutOfRangeException(nameof(ioapicPins));
        IoapicPins = ioapicPins;
        Array.Fill(_reg, PirqDisabled);
        for (int i = 0; i < 16; i++) _irqCount[i] = IsPermitted(i) ? 0 : -1;
    }

    /// <summary>IOAPIC pins; PCI uses 16 to this minus one.</summary>
    public int IoapicPins { get; }

    /// <summary>
    /// bhyve's external-boot-ROM rule: route (slot, pin) to IOAPIC pin 16 + (4 + slot + pin) % 8 and PIRQ
    /// (4 + slot + pin) % 8 so firmware can know the wiring; otherwise pins are handed out round robin
    /// and PIRQs least-used first. Set before the bus is built.
    /// </summary>
    public bool FixedMapping { get; set; }

    /// <summary>Called with an ISA IRQ the router routes a PIRQ to, so the machine marks it level-triggered in the ELCR.</summary>
    public Action<int>? LevelTriggered { get; set; }

    /// <summary>Every route handed out, in allocation order (for the ACPI _PRT and the MP table).</summary>
    public IReadOnlyList<PciIntxRoute> Routes
    {
        get { lock (_gate) return _routes.ToArray(); }
    }

    /// <summary>True for ISA IRQs a PIRQ may be routed to (3-7, 9-12, 14, 15).</summary>
    public static bool IsPermitted(int irq) => irq >= 0 && irq < 16 && ((1 << irq) & PermittedIrqs) != 0;

    /// <summary>Keeps <paramref name="irq"/> away from PIRQ routing (an LPC device such as a UART uses it).</summary>
    public void ReserveIrq(int irq)
    {
        if (irq < 0 || irq > 15) throw new ArgumentOutOfRangeException(nameof(irq));
        lock (_gate) _irqCount[irq] = -1;
    }

    /// <summary>Reads PIRQ routing register <paramref name="pirq"/> (1-8).</summary>
    public byte ReadPirq(int pirq)
    {
        if (pirq < 1 || pirq > PirqCount) return 0xff;
        lock (_gate) return _reg[pirq - 1];
    }

    /// <summary>The ISA IRQ of PIRQ <paramref name="pirq"/> (1-8), or -1 when disabled or not a permitted IRQ.</summary>
    public int PirqIrq(int pirq)
    {
        if (pirq < 1 || pirq > PirqCount) return -1;
        byte r;
        lock (_gate) r = _reg[pirq - 1];
        return Valid(r) ? r & 0x0f : -1;
    }

    /// <summary>Writes PIRQ routing register <paramref name="pirq"/> (1-8); a live level moves to the new IRQ.</summary>
    public void WritePirq(int pirq, byte value)
    {
        if (pirq < 1 || pirq > PirqCount) return;
        lock (_gate)
        {
            int i = pirq - 1;
            byte nv = (byte)(value & (PirqDisabled | 0x0f));
            if (_reg[i] == nv) return;
            var irq = _irq();
            if (_active[i] != 0 && Valid(_reg[i])) irq?.PicDeassert(_reg[i] & 0x0f);
            _reg[i] = nv;
            if (_active[i] != 0 && Valid(nv)) irq?.PicAssert(nv & 0x0f);
        }
    }

    private static bool Valid(byte reg) => (reg & PirqDisabled) == 0 && IsPermitted(reg & 0x0f);

    /// <summary>Creates the route for (bus, slot, pin) as bhyve's pci_irq_route does.</summary>
    internal PciIntxRoute Route(int bus, int slot, int pin)
    {
        lock (_gate)
        {
            int pciPins = IoapicPins - 16;
            int ioapic = FixedMapping ? 16 + (4 + slot + pin) % 8 : 16 + (_nextIoapic++ % pciPins);
            int best;
            if (FixedMapping) best = (4 + slot + pin) % 8;
            else
            {
                best = 0;
                for (int p = 1; p < PirqCount; p++) if (_use[p] < _use[best]) best = p;
            }
            _use[best]++;
            if (_reg[best] == PirqDisabled)
            {
                int bestIrq = -1;
                for (int irq = 0; irq < 16; irq++)
                {
                    if (_irqCount[irq] < 0) continue;
                    if (bestIrq < 0 || _irqCount[irq] < _irqCount[bestIrq]) bestIrq = irq;
                }
                if (bestIrq >= 0)
                {
                    _irqCount[bestIrq]++;
                    _reg[best] = (byte)bestIrq;
                    LevelTriggered?.Invoke(bestIrq);
                }
            }
            var route = new PciIntxRoute(bus, slot, pin, ioapic, best + 1);
            _routes.Add(route);
            return route;
        }
    }

    /// <summary>Raises a route's level: its IOAPIC pin, and the PIRQ's 8259 IRQ when the link is enabled.</summary>
    public void Assert(PciIntxRoute route)
    {
        lock (_gate)
        {
            var irq = _irq();
            int i = route.Pirq - 1;
            irq?.IoapicAssert(route.IoapicPin);
            if (++_active[i] == 1 && Valid(_reg[i])) irq?.PicAssert(_reg[i] & 0x0f);
        }
    }

    /// <summary>Lowers a route's level.</summary>
    public void Deassert(PciIntxRoute route)
    {
        lock (_gate)
        {
            var irq = _irq();
            int i = route.Pirq - 1;
            if (_active[i] == 0) return;
            irq?.IoapicDeassert(route.IoapicPin);
            if (--_active[i] == 0 && Valid(_reg[i])) irq?.PicDeassert(_reg[i] & 0x0f);
        }
    }

    /// <summary>Writes the eight routing registers.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_gate) w.Write(_reg);
    }

    /// <summary>Reads the routing registers (before the functions restore their levels).</summary>
    public void LoadState(BinaryReader r, int version)
    {
        var regs = r.ReadBytes(PirqCount);
        if (regs.Length != PirqCount) throw new EndOfStreamException();
        SetRegisters(regs);
    }

    internal byte[] Registers()
    {
        lock (_gate) return (byte[])_reg.Clone();
    }

    internal void SetRegisters(byte[] regs)
    {
        lock (_gate)
        {
            for (int i = 0; i < PirqCount; i++) _reg[i] = (byte)(regs[i] & (PirqDisabled | 0x0f));
        }
    }
}
