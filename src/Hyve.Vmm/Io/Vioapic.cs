// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.State;

namespace Hyve.Vmm.Io;

/// <summary>
/// The I/O APIC (82093AA, version 0x11), bhyve's vioapic: an indirect register window (IOREGSEL at 0x00,
/// IOWIN at 0x10, 32-bit accesses only), 32 redirection entries, pins 0-15 ISA and 16 and up PCI INTx.
/// A pin that becomes asserted sends the interrupt message its entry describes (an MSI composed as in
/// <see cref="MsiMessage"/>) to the <see cref="IApicBus"/>. Level-triggered entries set Remote IRR on
/// delivery and are re-delivered at the local APIC's EOI for their vector while the line stays asserted.
/// </summary>
public sealed class Vioapic : IMmioDevice, IDeviceState
{
    /// <summary>The usual guest-physical base of the IOAPIC.</summary>
    public const ulong DefaultBase = 0xFEC0_0000;

    /// <summary>Size of the MMIO window to register.</summary>
    public const ulong Size = 0x1000;

    /// <summary>Number of pins (redirection entries) by default, as bhyve.</summary>
    public const int DefaultPinCount = 32;

    /// <inheritdoc/>
    public string StateName => "vioapic";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Offset of the register-select register.</summary>
    public const ulong IoRegSel = 0x00;

    /// <summary>Offset of the register window.</summary>
    public const ulong IoWin = 0x10;

    private const ulong Vector = 0xff, DestLogical = 1ul << 11, DeliveryStatus = 1ul << 12,
        RemoteIrr = 1ul << 14, LevelTrigger = 1ul << 15, Masked = 1ul << 16;
    // Delivery status and Remote IRR belong to the IOAPIC, not to software.
    private const ulong ReadOnlyBits = DeliveryStatus | RemoteIrr;

    private readonly Lock _lock = new();
    private readonly IApicBus _apic;
    private readonly ulong[] _rte;
    private readonly int[] _assertCount;
    private uint _id;
    private uint _ioRegSel;

    /// <summary>Raised (outside the lock) after software rewrites redirection entry <c>pin</c>, so the KVM glue
    /// can refresh its MSI route for that GSI (needed for KVM to exit on EOI of level-triggered vectors).</summary>
    public event Action<int>? EntryChanged;

    /// <summary>Creates an IOAPIC that delivers to <paramref name="apic"/>.</summary>
    public Vioapic(IApicBus apic, int pinCount = DefaultPinCount)
    {
        ArgumentNullException.ThrowIfNull(apic);
        // The version register reports pins-1 in 8 bits; the redirection table fits in register indices 0x10-0xff.
        if (pinCount < 1 || pinCount > 120) throw new ArgumentOutOfRangeException(nameof(pinCount));
        _apic = apic;
        PinCount = pinCount;
        _rte = new ulong[pinCount];
        _assertCount = new int[pinCount];
        Reset();
    }

    /// <summary>Number of pins (redirection entries).</summary>
    public int PinCount { get; }

    /// <summary>Returns every register to its power-on value: all entries masked. Pin input levels are wires
    /// driven by devices, so their assert counts are kept.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _id = 0;
            _ioRegSel = 0;
            for (int i = 0; i < _rte.Length; i++) _rte[i] = Masked;
        }
    }

    /// <inheritdoc/>
    public ulong MmioRead(ulong offset, int size)
    {
        // The IOAPIC decodes only 32-bit accesses to its two registers; bhyve reads anything else as 0.
        if (size != 4 || (offset != IoRegSel && offset != IoWin)) return 0;
        lock (_lock)
            return offset == IoRegSel ? _ioRegSel : ReadRegister(_ioRegSel & 0xff);
    }

    /// <inheritdoc/>
    public void MmioWrite(ulong offset, int size, ulong value)
    {
        if (size != 4 || (offset != IoRegSel && offset != IoWin)) return;
        int changedPin = -1;
        lock (_lock)
        {
            if (offset == IoRegSel) _ioRegSel = (uint)value & 0xff;
            else changedPin = WriteRegister(_ioRegSel & 0xff, (uint)value);
        }
        if (changedPin >= 0) EntryChanged?.Invoke(changedPin);
    }

    /// <summary>Raises pin <paramref name="pin"/> (one more source asserting it); out-of-range pins are ignored.</summary>
    public void Assert(int pin) => SetPin(pin, true);

    /// <summary>Lowers pin <paramref name="pin"/> (one fewer source asserting it).</summary>
    public void Deassert(int pin) => SetPin(pin, false);

    /// <summary>Raises then lowers pin <paramref name="pin"/>: an edge.</summary>
    public void Pulse(int pin)
    {
        if ((uint)pin >= (uint)PinCount) return;
        lock (_lock)
        {
            SetPinLocked(pin, true);
            SetPinLocked(pin, false);
        }
    }

    /// <summary>The local APIC's EOI broadcast for <paramref name="vector"/> (KVM_EXIT_IOAPIC_EOI under KVM): clears
    /// Remote IRR of every level-triggered entry with that vector and re-delivers those whose line is still asserted.</summary>
    public void EndOfInterrupt(int vector)
    {
        if ((uint)vector > 255) return;
        lock (_lock)
        {
            for (int pin = 0; pin < _rte.Length; pin++)
            {
                ulong e = _rte[pin];
                if ((e & RemoteIrr) == 0 || (int)(e & Vector) != vector) continue;
                _rte[pin] = e & ~RemoteIrr;
                if (_assertCount[pin] > 0) Send(pin);
            }
        }
    }

    /// <summary>The whole 64-bit redirection entry of <paramref name="pin"/>, including the read-only bits.</summary>
    public ulong GetEntry(int pin)
    {
        if ((uint)pin >= (uint)PinCount) return 0;
        lock (_lock) return _rte[pin];
    }

    /// <summary>The MSI address/data the entry of <paramref name="pin"/> sends; false when masked or out of range.</summary>
    public bool TryGetRoute(int pin, out ulong address, out uint data)
    {
        address = 0;
        data = 0;
        if ((uint)pin >= (uint)PinCount) return false;
        ulong e;
        lock (_lock) e = _rte[pin];
        if ((e & Masked) != 0) return false;
        Compose(e, out address, out data);
        return true;
    }

    /// <summary>Current assert count of <paramref name="pin"/> (how many sources hold it high).</summary>
    public int AssertCount(int pin)
    {
        if ((uint)pin >= (uint)PinCount) return 0;
        lock (_lock) return _assertCount[pin];
    }

    /// <summary>Writes the state: pin count, ID, IOREGSEL, then each entry and assert count.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_lock)
        {
            w.Write(PinCount);
            w.Write(_id);
            w.Write(_ioRegSel);
            for (int i = 0; i < _rte.Length; i++)
            {
                w.Write(_rte[i]);
                w.Write(_assertCount[i]);
            }
        }
    }

    /// <summary>Reads state written by <see cref="SaveState"/> and raises <see cref="EntryChanged"/> for every pin;
    /// throws <see cref="InvalidDataException"/> when it does not fit.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        int pins = r.ReadInt32();
        if (pins != PinCount) throw new InvalidDataException($"IOAPIC state has {pins} pins, this IOAPIC has {PinCount}");
        lock (_lock)
        {
            _id = r.ReadUInt32() & 0x0f00_0000;
            _ioRegSel = r.ReadUInt32() & 0xff;
            for (int i = 0; i < _rte.Length; i++)
            {
                _rte[i] = r.ReadUInt64();
                _assertCount[i] = Math.Max(0, r.ReadInt32());
            }
        }
        // Every entry may differ from what the KVM glue routed before.
        for (int i = 0; i < PinCount; i++) EntryChanged?.Invoke(i);
    }

    private uint ReadRegister(uint reg)
    {
        switch (reg)
        {
            case 0x00: return _id;
            case 0x01: return 0x11u | (uint)(PinCount - 1) << 16;
            case 0x02: return _id; // arbitration ID follows the APIC ID
        }
        if (reg >= 0x10 && reg < 0x10 + 2 * (uint)PinCount)
        {
            ulong e = _rte[(reg - 0x10) >> 1];
            return (reg & 1) == 0 ? (uint)e : (uint)(e >> 32);
        }
        return 0;
    }

    // Returns the pin whose entry was written, or -1.
    private int WriteRegister(uint reg, uint value)
    {
        if (reg == 0x00)
        {
            _id = value & 0x0f00_0000;
            return -1;
        }
        if (reg < 0x10 || reg >= 0x10 + 2 * (uint)PinCount) return -1; // version, arbitration and holes are read-only
        int pin = (int)(reg - 0x10) >> 1;
        int shift = (reg & 1) == 0 ? 0 : 32;
        ulong old = _rte[pin];
        ulong half = 0xffff_ffffUL << shift;
        ulong e = (old & ~half) | ((ulong)value << shift & half);
        e = (e & ~ReadOnlyBits) | (old & ReadOnlyBits);
        // Remote IRR only has meaning for level-triggered entries; switching to edge clears it (Linux relies on
        // this to clear a stuck Remote IRR on IOAPICs without an EOI register, QEMU does the same).
        if ((e & LevelTrigger) == 0) e &= ~RemoteIrr;
        _rte[pin] = e;
        if (_assertCount[pin] > 0 && (e & Masked) == 0)
        {
            // A level line that is still high requests again once unmasked with no EOI outstanding (bhyve).
            // An edge held high would be lost while masked; unmasking delivers it once so a device whose line
            // went up during setup is not stuck forever.
            if ((e & LevelTrigger) != 0 ? (e & RemoteIrr) == 0 : (old & Masked) != 0) Send(pin);
        }
        return pin;
    }

    private void SetPin(int pin, bool high)
    {
        if ((uint)pin >= (uint)PinCount) return;
        lock (_lock) SetPinLocked(pin, high);
    }

    private void SetPinLocked(int pin, bool high)
    {
        int old = _assertCount[pin];
        // A stray extra deassert must not leave the line needing two asserts to rise.
        int now = high ? old + 1 : Math.Max(0, old - 1);
        _assertCount[pin] = now;
        if (old == 0 && now > 0) Send(pin);
    }

    // Sends the entry's message if it is unmasked and, for level-triggered entries, no EOI is outstanding.
    private void Send(int pin)
    {
        ulong e = _rte[pin];
        if ((e & Masked) != 0) return;
        if ((e & LevelTrigger) != 0)
        {
            if ((e & RemoteIrr) != 0) return;
            _rte[pin] = e | RemoteIrr;
        }
        Compose(e, out ulong address, out uint data);
        _apic.DeliverMsi(address, data);
    }

    // Redirection entry to MSI as KVM's split irqchip expects (QEMU does the same): destination bits 63:56 go to
    // address bits 19:12, the extended destination bits 55:49 to address bits 11:5, destination mode to bit 2.
    private static void Compose(ulong e, out ulong address, out uint data)
    {
        ulong dest = e >> 56 & 0xff, ext = e >> 49 & 0x7f;
        address = MsiMessage.AddressBase | dest << 12 | ext << 5 | ((e & DestLogical) != 0 ? 4ul : 0);
        data = (uint)(e & Vector) | (uint)(e >> 8 & 7) << 8 | 1u << 14 | ((e & LevelTrigger) != 0 ? 1u << 15 : 0);
    }
}
