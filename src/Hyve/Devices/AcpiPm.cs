// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Acpi;
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Devices;

/// <summary>
/// The ACPI fixed-hardware PM1a event block (PM1_STS, PM1_EN) and control block (PM1_CNT) of a PC chipset
/// (ACPI 6.x 4.8.3), as bhyve's pm.c: the SCI on ISA IRQ 9 is a level held while any enabled status bit is
/// set, status bits clear when written with 1, ACPI is always enabled (SCI_EN reads as 1, there is no SMI
/// command port), the fixed power button sets PWRBTN_STS, and writing SLP_EN with the \_S5 SLP_TYP powers off.
/// </summary>
public sealed class AcpiPm : IPortDevice, IDeviceState
{
    /// <inheritdoc/>
    public string StateName => "acpi-pm";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>PM1_STS / PM1_EN bits.</summary>
    public const ushort TmrStatus = 1 << 0, GblStatus = 1 << 5, PwrBtnStatus = 1 << 8, RtcStatus = 1 << 10, WakStatus = 1 << 15;
    /// <summary>PM1_STS bits the guest can clear (W1C): everything defined; BM_STS, SLPBTN_STS and PCIEXP_WAKE_STS are never set here.</summary>
    private const ushort StatusW1cMask = TmrStatus | (1 << 4) | GblStatus | PwrBtnStatus | (1 << 9) | RtcStatus | (1 << 14) | WakStatus;
    /// <summary>PM1_EN bits: TMR_EN, GBL_EN, PWRBTN_EN, RTC_EN (no sleep button).</summary>
    private const ushort EnableMask = TmrStatus | GblStatus | PwrBtnStatus | RtcStatus;
    /// <summary>PM1_CNT bits.</summary>
    public const ushort SciEn = 1 << 0, SlpEn = 1 << 13;
    private const int SlpTypShift = 10;
    /// <summary>PM1_CNT bits kept as written: BM_RLD and SLP_TYP (GBL_RLS and SLP_EN are write-only, SCI_EN read-only).</summary>
    private const ushort ControlKeptMask = (1 << 1) | (7 << SlpTypShift);

    private readonly IIrqLines _irq;
    private readonly Action _powerOff;
    private readonly object _gate = new();
    private ushort _status, _enable, _control;
    private bool _sciAsserted;

    /// <summary>Creates the blocks; <paramref name="powerOff"/> is called when the guest enters S5.</summary>
    public AcpiPm(IIrqLines irq, Action powerOff, ushort eventPort = AcpiPorts.Pm1aEvent, ushort controlPort = AcpiPorts.Pm1aControl,
        int sciIrq = 9, int s5SleepType = 5)
    {
        _irq = irq;
        _powerOff = powerOff;
        EventPort = eventPort;
        ControlPort = controlPort;
        SciIrq = sciIrq;
        S5SleepType = s5SleepType & 7;
    }

    /// <summary>First port of the event block (4 ports: PM1_STS, PM1_EN).</summary>
    public ushort EventPort { get; }

    /// <summary>First port of the control block (2 ports: PM1_CNT).</summary>
    public ushort ControlPort { get; }

    /// <summary>ISA IRQ of the SCI.</summary>
    public int SciIrq { get; }

    /// <summary>SLP_TYP value that means S5 (the DSDT's \_S5).</summary>
    public int S5SleepType { get; }

    /// <summary>Whether the SCI line is asserted now.</summary>
    public bool SciAsserted { get { lock (_gate) return _sciAsserted; } }

    /// <summary>Claims the two blocks' ports on <paramref name="bus"/>.</summary>
    public void Register(PortBus bus)
    {
        bus.Register(EventPort, 4, this);
        bus.Register(ControlPort, 2, this);
    }

    /// <summary>
    /// Presses the fixed-feature power button: sets PWRBTN_STS and raises the SCI if PWRBTN_EN is set.
    /// Returns whether the guest has the button enabled (i.e. an OS is listening).
    /// </summary>
    public bool PressPowerButton()
    {
        lock (_gate)
        {
            _status |= PwrBtnStatus;
            UpdateSci();
            return (_enable & PwrBtnStatus) != 0;
        }
    }

    /// <summary>Sets status bits raised by other hardware (TMR_STS from the PM timer's carry, RTC_STS from the RTC alarm).</summary>
    public void RaiseStatus(ushort bits)
    {
        lock (_gate)
        {
            _status |= (ushort)(bits & StatusW1cMask);
            UpdateSci();
        }
    }

    /// <summary>Returns to the power-on state (registers zero, SCI low).</summary>
    public void Reset()
    {
        lock (_gate)
        {
            _status = _enable = _control = 0;
            UpdateSci();
        }
    }

    /// <summary>Writes PM1_STS, PM1_EN and PM1_CNT.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_gate)
        {
            w.Write(_status);
            w.Write(_enable);
            w.Write(_control);
        }
    }

    /// <summary>Reads the registers and raises the SCI level they imply.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        ushort status = r.ReadUInt16(), enable = r.ReadUInt16(), control = r.ReadUInt16();
        lock (_gate)
        {
            _status = (ushort)(status & StatusW1cMask);
            _enable = (ushort)(enable & EnableMask);
            _control = (ushort)(control & ControlKeptMask);
            UpdateSci();
        }
    }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        uint v = 0;
        lock (_gate)
            for (int i = 0; i < size && i < 4; i++) v |= (uint)ReadByte(port + i) << (8 * i);
        return v;
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        bool off = false;
        lock (_gate)
        {
            for (int i = 0; i < size && i < 4; i++) off |= WriteByte(port + i, (byte)(value >> (8 * i)));
            UpdateSci();
        }
        // Called outside the lock: the machine may tear devices down from here.
        if (off) _powerOff();
    }

    private byte ReadByte(int port)
    {
        int e = port - EventPort, c = port - ControlPort;
        return e switch
        {
            0 => (byte)_status,
            1 => (byte)(_status >> 8),
            2 => (byte)_enable,
            3 => (byte)(_enable >> 8),
            _ => c switch
            {
                0 => (byte)(_control | SciEn),
                1 => (byte)(_control >> 8),
                _ => 0xFF, // a wide access that runs past the block
            },
        };
    }

    /// <summary>Writes one byte of a register; true when it asks for S5.</summary>
    private bool WriteByte(int port, byte b)
    {
        int e = port - EventPort, c = port - ControlPort;
        switch (e)
        {
            case 0: _status &= (ushort)~(b & StatusW1cMask); return false;
            case 1: _status &= (ushort)~((b << 8) & StatusW1cMask); return false;
            case 2: _enable = (ushort)((_enable & 0xFF00) | (b & EnableMask)); return false;
            case 3: _enable = (ushort)((_enable & 0x00FF) | ((b << 8) & EnableMask)); return false;
        }
        switch (c)
        {
            case 0:
                _control = (ushort)((_control & 0xFF00) | (b & ControlKeptMask));
                return false;
            case 1:
                ushort v = (ushort)(b << 8);
                _control = (ushort)((_control & 0x00FF) | (v & ControlKeptMask));
                return (v & SlpEn) != 0 && ((v >> SlpTypShift) & 7) == S5SleepType;
        }
        return false;
    }

    private void UpdateSci()
    {
        bool want = (_status & _enable) != 0;
        if (want == _sciAsserted) return;
        _sciAsserted = want;
        if (want) _irq.IsaAssert(SciIrq);
        else _irq.IsaDeassert(SciIrq);
    }
}
