// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.State;

namespace Hyve.Vmm.Io;

/// <summary>
/// The pair of 8259A programmable interrupt controllers of a PC (bhyve's vatpic): master at ports 0x20-0x21,
/// slave at 0xA0-0xA1 cascaded on master IR2, and the edge/level control registers (ELCR) at 0x4D0-0x4D1.
/// ISA IRQ n is input n (0-7 master, 8-15 slave). The master's INTR output is a level
/// (<see cref="IntrAsserted"/>); whoever delivers it (KVM_INTERRUPT, or the LAPIC's LINT0 as ExtINT) runs the
/// INTA cycle with <see cref="InterruptAcknowledge"/>. Always 8086 mode and cascaded, as on every PC.
/// </summary>
public sealed class Vatpic : IPortDevice, IDeviceState
{
    /// <summary>Command port of the master.</summary>
    public const ushort MasterPort = 0x20;

    /// <summary>Command port of the slave.</summary>
    public const ushort SlavePort = 0xA0;

    /// <summary>ELCR of the master (the slave's is the next port).</summary>
    public const ushort ElcrPort = 0x4D0;

    /// <inheritdoc/>
    public string StateName => "vatpic";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    // IRQ 0 (timer), 1 (keyboard), 2 (cascade), 8 (RTC) and 13 (FPU) are wired edge on a PC: their ELCR
    // bits read 0 and ignore writes.
    private const byte ElcrWritableMaster = 0xf8, ElcrWritableSlave = 0xde;

    private readonly Lock _lock = new();
    private readonly Chip _master = new(), _slave = new();
    private volatile bool _intr; // written under _lock; read without it on every exit of vCPU 0

    /// <summary>Raised (outside the lock) when the master's INTR output may have changed; read <see cref="IntrAsserted"/>.</summary>
    public event Action? IntrChanged;

    /// <summary>Creates the pair in its power-on state (uninitialized until the guest writes ICW1-ICW4).</summary>
    public Vatpic() => Reset();

    /// <summary>The master's INTR output: an unmasked request with priority above everything in service.</summary>
    public bool IntrAsserted => _intr;

    /// <summary>Registers the six ports on <paramref name="bus"/>.</summary>
    public void RegisterPorts(PortBus bus)
    {
        bus.Register(MasterPort, 2, this);
        bus.Register(SlavePort, 2, this);
        bus.Register(ElcrPort, 2, this);
    }

    /// <summary>Returns both chips and the ELCR to power-on state; input levels (assert counts) are kept.</summary>
    public void Reset()
    {
        bool notify;
        lock (_lock)
        {
            _master.PowerOn();
            _slave.PowerOn();
            notify = Update();
        }
        if (notify) IntrChanged?.Invoke();
    }

    /// <summary>Raises ISA IRQ <paramref name="irq"/> (one more source asserting it); bad numbers and 2 are ignored.</summary>
    public void Assert(int irq) => SetIrq(irq, 1);

    /// <summary>Lowers ISA IRQ <paramref name="irq"/>.</summary>
    public void Deassert(int irq) => SetIrq(irq, -1);

    /// <summary>Raises then lowers ISA IRQ <paramref name="irq"/>.</summary>
    public void Pulse(int irq) => SetIrq(irq, 0);

    /// <summary>Sets IRQ <paramref name="irq"/> level- or edge-triggered in the ELCR (bhyve's vatpic_set_irq_trigger);
    /// false when the IRQ cannot be level-triggered (0, 1, 2, 8, 13) or is out of range.</summary>
    public bool SetTriggerMode(int irq, bool level)
    {
        if ((uint)irq > 15) return false;
        var chip = irq < 8 ? _master : _slave;
        int bit = 1 << (irq & 7);
        if (level && ((irq < 8 ? ElcrWritableMaster : ElcrWritableSlave) & bit) == 0) return false;
        bool notify;
        lock (_lock)
        {
            chip.SetElcr(level ? chip.Elcr | bit : chip.Elcr & ~bit);
            notify = Update();
        }
        if (notify) IntrChanged?.Invoke();
        return true;
    }

    /// <summary>The vector an INTA cycle would return now, without acknowledging it; false when INTR is low.</summary>
    public bool TryGetPendingVector(out int vector)
    {
        lock (_lock)
        {
            vector = 0;
            if (!_intr) return false;
            int pin = _master.HighestRequest(isMaster: true);
            if (pin < 0) return false;
            if (pin != 2) vector = _master.VectorBase | pin;
            else
            {
                int sp = _slave.HighestRequest(isMaster: false);
                vector = _slave.VectorBase | (sp < 0 ? 7 : sp);
            }
            return true;
        }
    }

    /// <summary>Runs the INTA cycle and returns the vector. With nothing requesting (the request went away) this is
    /// the spurious IR7 vector of the master, or IR7 of the slave when the cascade was selected, with no ISR bit set
    /// for it, as on the real chip.</summary>
    public int InterruptAcknowledge()
    {
        int vector;
        bool notify;
        lock (_lock)
        {
            int pin = _master.HighestRequest(isMaster: true);
            if (pin < 0) vector = _master.VectorBase | 7;
            else if (pin == 2)
            {
                _master.Accept(2);
                int sp = _slave.HighestRequest(isMaster: false);
                if (sp < 0) vector = _slave.VectorBase | 7;
                else
                {
                    _slave.Accept(sp);
                    vector = _slave.VectorBase | sp;
                }
            }
            else
            {
                _master.Accept(pin);
                vector = _master.VectorBase | pin;
            }
            notify = Update();
        }
        if (notify) IntrChanged?.Invoke();
        return vector;
    }

    /// <summary>Completes an INTA cycle for a vector obtained earlier from <see cref="TryGetPendingVector"/> and
    /// already injected (bhyve's vatpic_intr_accepted): marks it in service (a slave vector also marks the cascade).
    /// Vectors that belong to neither chip are ignored.</summary>
    public void Acknowledge(int vector)
    {
        bool notify;
        lock (_lock)
        {
            int pin = vector & 7;
            if (_slave.Ready && (vector & ~7) == _slave.VectorBase && _slave.VectorBase != _master.VectorBase)
            {
                if (pin != 7 || (_slave.Irr & 0x80) != 0) _slave.Accept(pin);
                _master.Accept(2);
            }
            else if ((vector & ~7) == _master.VectorBase)
            {
                // The spurious IR7 vector is not put in service.
                if (pin != 7 || (_master.Irr & 0x80) != 0) _master.Accept(pin);
            }
            else return;
            notify = Update();
        }
        if (notify) IntrChanged?.Invoke();
    }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        // A wider access is split into byte accesses to consecutive ports, as the ISA bridge does.
        uint v = 0;
        bool notify = false;
        lock (_lock)
        {
            for (int i = 0; i < size && i < 4; i++)
                v |= (uint)ReadByte(port + i, ref notify) << (8 * i);
        }
        if (notify) IntrChanged?.Invoke();
        return v;
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        bool notify = false;
        lock (_lock)
        {
            for (int i = 0; i < size && i < 4; i++)
                WriteByte(port + i, (byte)(value >> (8 * i)), ref notify);
        }
        if (notify) IntrChanged?.Invoke();
    }

    /// <summary>Writes the state: each chip (master first), then the INTR output.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_lock)
        {
            _master.Save(w);
            _slave.Save(w);
            w.Write(_intr);
        }
    }

    /// <summary>Reads state written by <see cref="SaveState"/>.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        bool notify;
        lock (_lock)
        {
            _master.Restore(r, ElcrWritableMaster);
            _slave.Restore(r, ElcrWritableSlave);
            _intr = r.ReadBoolean();
            notify = Update();
        }
        if (notify) IntrChanged?.Invoke();
    }

    private void SetIrq(int irq, int how)
    {
        // IRQ 2 is the cascade input: nothing outside drives it.
        if ((uint)irq > 15 || irq == 2) return;
        var chip = irq < 8 ? _master : _slave;
        bool notify;
        lock (_lock)
        {
            if (how >= 0) chip.SetInput(irq & 7, true);
            if (how <= 0) chip.SetInput(irq & 7, false);
            notify = Update();
        }
        if (notify) IntrChanged?.Invoke();
    }

    private int ReadByte(int port, ref bool notify)
    {
        switch (port)
        {
            case MasterPort or MasterPort + 1 or SlavePort or SlavePort + 1:
                {
                    var chip = port < SlavePort ? _master : _slave;
                    if (chip.Poll)
                    {
                        // Poll command: this read is the INTA cycle; it answers 0x80 | level, or 0 with nothing pending.
                        chip.Poll = false;
                        int pin = chip.HighestRequest(chip == _master);
                        if (pin < 0) return 0;
                        chip.Accept(pin);
                        notify |= Update();
                        return 0x80 | pin;
                    }
                    if ((port & 1) != 0) return chip.Imr;
                    return chip.ReadIsr ? chip.Isr : chip.Irr;
                }
            case ElcrPort: return _master.Elcr;
            case ElcrPort + 1: return _slave.Elcr;
            default: return 0xff;
        }
    }

    private void WriteByte(int port, byte v, ref bool notify)
    {
        switch (port)
        {
            case MasterPort or MasterPort + 1 or SlavePort or SlavePort + 1:
                var chip = port < SlavePort ? _master : _slave;
                if ((port & 1) == 0) chip.WriteCommand(v, chip == _master);
                else chip.WriteData(v, chip == _master);
                break;
            case ElcrPort: _master.SetElcr(v & ElcrWritableMaster); break;
            case ElcrPort + 1: _slave.SetElcr(v & ElcrWritableSlave); break;
            default: return;
        }
        notify |= Update();
    }

    // Recomputes the cascade line and the master's INTR; true when INTR changed.
    private bool Update()
    {
        // The slave's INT output is wired to master IR2 and is a level: it stays up while the slave has a
        // request the master has not yet taken.
        bool slaveOut = _slave.Ready && _slave.HighestRequest(isMaster: false) >= 0;
        _master.Irr = (byte)(slaveOut ? _master.Irr | 4 : _master.Irr & ~4);
        bool intr = _master.Ready && _master.HighestRequest(isMaster: true) >= 0;
        if (intr == _intr) return false;
        _intr = intr;
        return true;
    }

    private sealed class Chip
    {
        public bool Ready;          // initialization sequence complete
        public int IcwStep;         // next ICW expected on the data port (2-4), 0 when operational
        public bool Single, NeedIcw4;
        public bool Aeoi, Sfnm, RotateOnAeoi, SpecialMask, Poll, ReadIsr;
        public int VectorBase;
        public byte Irr, Isr, Imr, Elcr, Icw3;
        public int LowestPriority;
        public readonly int[] AssertCount = new int[8];

        public void PowerOn()
        {
            Ready = false;
            IcwStep = 0;
            Single = NeedIcw4 = false;
            Aeoi = Sfnm = RotateOnAeoi = SpecialMask = Poll = ReadIsr = false;
            VectorBase = 0;
            Irr = Isr = Imr = Elcr = Icw3 = 0;
            LowestPriority = 7;
        }

        public void SetInput(int pin, bool high)
        {
            int bit = 1 << pin;
            int old = AssertCount[pin];
            int now = high ? old + 1 : Math.Max(0, old - 1);
            AssertCount[pin] = now;
            if ((Elcr & bit) != 0) Irr = (byte)(now > 0 ? Irr | bit : Irr & ~bit); // level: IRR follows the line
            else if (old == 0 && now > 0) Irr |= (byte)bit;                         // edge: latch the rising edge
        }

        public void SetElcr(int value)
        {
            Elcr = (byte)value;
            for (int pin = 0; pin < 8; pin++)
                if ((Elcr & 1 << pin) != 0) Irr = (byte)(AssertCount[pin] > 0 ? Irr | 1 << pin : Irr & ~(1 << pin));
        }

        // Highest-priority unmasked request not blocked by an interrupt in service at the same or higher
        // priority; -1 when none.
        public int HighestRequest(bool isMaster)
        {
            int blocking = Isr;
            // Special fully nested mode: a slave interrupt in service does not block a higher one from the slave.
            if (isMaster && Sfnm) blocking &= ~4;
            // Special mask mode: only in-service levels that are not masked inhibit lower ones.
            if (SpecialMask) blocking &= ~Imr;
            int pending = Irr & ~Imr;
            for (int i = 0; i < 8; i++)
            {
                int pin = (LowestPriority + 1 + i) & 7;
                if ((blocking & 1 << pin) != 0) return -1;
                if ((pending & 1 << pin) != 0) return pin;
            }
            return -1;
        }

        private int HighestInService()
        {
            for (int i = 0; i < 8; i++)
            {
                int pin = (LowestPriority + 1 + i) & 7;
                if ((Isr & 1 << pin) == 0) continue;
                // In special mask mode a masked in-service level is not the target of a non-specific EOI.
                if (SpecialMask && (Imr & 1 << pin) != 0) continue;
                return pin;
            }
            return -1;
        }

        // The INTA cycle (or a poll) took this level.
        public void Accept(int pin)
        {
            int bit = 1 << pin;
            if ((Elcr & bit) == 0) Irr &= (byte)~bit; // an edge request is consumed; a level one follows the line
            if (Aeoi)
            {
                if (RotateOnAeoi) LowestPriority = pin;
            }
            else Isr |= (byte)bit;
        }

        public void WriteCommand(byte v, bool isMaster)
        {
            if ((v & 0x10) != 0)
            {
                // ICW1 starts initialization: clears the mask, in-service and edge-latched requests, makes IR7
                // lowest priority, leaves special mask mode and selects IRR for reads. LTIM (bit 3) is ignored:
                // the ELCR decides edge or level on a PC.
                Ready = false;
                IcwStep = 2;
                Single = (v & 2) != 0;
                NeedIcw4 = (v & 1) != 0;
                Imr = 0;
                Isr = 0;
                Irr = (byte)(Irr & Elcr);
                LowestPriority = 7;
                SpecialMask = Poll = ReadIsr = RotateOnAeoi = false;
                if (!NeedIcw4) Aeoi = Sfnm = false;
                return;
            }
            if (!Ready) return;
            if ((v & 0x08) != 0) WriteOcw3(v);
            else WriteOcw2(v);
        }

        private void WriteOcw2(byte v)
        {
            int level = v & 7;
            switch (v >> 5)
            {
                case 1: // non-specific EOI
                    {
                        int pin = HighestInService();
                        if (pin >= 0) Isr &= (byte)~(1 << pin);
                        break;
                    }
                case 3: // specific EOI
                    Isr &= (byte)~(1 << level);
                    break;
                case 5: // rotate on non-specific EOI
                    {
                        int pin = HighestInService();
                        if (pin >= 0)
                        {
                            Isr &= (byte)~(1 << pin);
                            LowestPriority = pin;
                        }
                        break;
                    }
                case 4: RotateOnAeoi = true; break;
                case 0: RotateOnAeoi = false; break;
                case 7: // rotate on specific EOI
                    Isr &= (byte)~(1 << level);
                    LowestPriority = level;
                    break;
                case 6: LowestPriority = level; break; // set priority
                default: break; // 2: no operation
            }
        }

        private void WriteOcw3(byte v)
        {
            if ((v & 0x40) != 0) SpecialMask = (v & 0x20) != 0;
            if ((v & 0x04) != 0) Poll = true;
            if ((v & 0x02) != 0) ReadIsr = (v & 0x01) != 0;
        }

        public void WriteData(byte v, bool isMaster)
        {
            switch (IcwStep)
            {
                case 2:
                    VectorBase = v & 0xf8;
                    IcwStep = Single ? (NeedIcw4 ? 4 : 0) : 3;
                    break;
                case 3:
                    Icw3 = v;
                    IcwStep = NeedIcw4 ? 4 : 0;
                    break;
                case 4:
                    // Bit 0 (8086 mode) is assumed; buffered-mode bits are irrelevant to a virtual bus.
                    Aeoi = (v & 0x02) != 0;
                    Sfnm = isMaster && (v & 0x10) != 0;
                    IcwStep = 0;
                    break;
                default:
                    Imr = v; // OCW1
                    return;
            }
            if (IcwStep == 0) Ready = true;
        }

        public void Save(BinaryWriter w)
        {
            w.Write(Ready); w.Write(IcwStep); w.Write(Single); w.Write(NeedIcw4);
            w.Write(Aeoi); w.Write(Sfnm); w.Write(RotateOnAeoi); w.Write(SpecialMask); w.Write(Poll); w.Write(ReadIsr);
            w.Write(VectorBase); w.Write(Irr); w.Write(Isr); w.Write(Imr); w.Write(Elcr); w.Write(Icw3);
            w.Write(LowestPriority);
            foreach (int c in AssertCount) w.Write(c);
        }

        public void Restore(BinaryReader r, byte elcrWritable)
        {
            Ready = r.ReadBoolean(); IcwStep = r.ReadInt32(); Single = r.ReadBoolean(); NeedIcw4 = r.ReadBoolean();
            Aeoi = r.ReadBoolean(); Sfnm = r.ReadBoolean(); RotateOnAeoi = r.ReadBoolean(); SpecialMask = r.ReadBoolean();
            Poll = r.ReadBoolean(); ReadIsr = r.ReadBoolean();
            VectorBase = r.ReadInt32() & 0xf8; Irr = r.ReadByte(); Isr = r.ReadByte(); Imr = r.ReadByte();
            Elcr = (byte)(r.ReadByte() & elcrWritable); Icw3 = r.ReadByte();
            LowestPriority = r.ReadInt32() & 7;
            if (IcwStep is not (0 or 2 or 3 or 4)) IcwStep = 0;
            for (int i = 0; i < 8; i++) AssertCount[i] = Math.Max(0, r.ReadInt32());
        }
    }
}
