// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.State;
using Hyve.Vmm;

namespace Hyve.Devices;

/// <summary>
/// A National/TI PC16550D UART (16550A) at eight consecutive I/O ports, modelled on the datasheet and on bhyve's
/// uart_emul.c. Transmission is instant: a byte written to THR goes to the backend at once, so THRE and TEMT read
/// as set (unless the backend's output buffer is full: flow control for guests that poll LSR) and the THRE interrupt
/// re-arms right after each write. Received bytes wait in a 16-byte FIFO
/// (one byte while the FIFO is disabled), pulled from the backend only while there is room.
/// <para>
/// Interrupt identification (IIR) follows the datasheet priorities: receiver line status (overrun) > received data
/// (FIFO at its trigger level, or any byte in 16450 mode) = character timeout (bytes below the trigger level: with no
/// notion of character time here, the timeout is taken as already expired) > THR empty > modem status.
/// Reading IIR while it reports THRE clears that interrupt; writing THR clears and (the byte being sent at once)
/// re-raises it, which gives edge-triggered controllers a fresh edge per byte as a real UART would.
/// </para>
/// <para>
/// The interrupt output is reported as a level through the callback, only on changes: true iff an enabled
/// interrupt is pending. On a PC board MCR.OUT2 gates the UART's IRQ line; bhyve and QEMU do not model that gate,
/// and neither does this model unless <see cref="GateIrqWithOut2"/> is set.
/// </para>
/// </summary>
public sealed class Uart16550 : IPortDevice, IConsoleReceiver, IDeviceState
{
    /// <summary>One legacy COM port: name, base I/O port and ISA IRQ.</summary>
    public readonly record struct ComPort(string Name, ushort Base, int Irq);

    /// <summary>The PC's four legacy COM ports (COM1 0x3F8 IRQ4, COM2 0x2F8 IRQ3, COM3 0x3E8 IRQ4, COM4 0x2E8 IRQ3).</summary>
    public static IReadOnlyList<ComPort> ComPorts { get; } =
    [
        new("com1", 0x3F8, 4),
        new("com2", 0x2F8, 3),
        new("com3", 0x3E8, 4),
        new("com4", 0x2E8, 3),
    ];

    /// <summary>Number of I/O ports the UART decodes.</summary>
    public const int PortCount = 8;

    /// <summary>Receive FIFO depth when FIFOs are enabled.</summary>
    public const int FifoSize = 16;

    /// <inheritdoc/>
    public string StateName => "uart16550";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    // Register offsets.
    private const int RegData = 0, RegIer = 1, RegIir = 2, RegLcr = 3, RegMcr = 4, RegLsr = 5, RegMsr = 6, RegScr = 7;

    // IER bits.
    private const byte IerErbfi = 0x01, IerEtbei = 0x02, IerElsi = 0x04, IerEdssi = 0x08;

    // IIR values.
    private const byte IirNone = 0x01, IirModem = 0x00, IirThre = 0x02, IirRda = 0x04, IirRls = 0x06, IirTimeout = 0x0C, IirFifos = 0xC0;

    // FCR bits.
    private const byte FcrEnable = 0x01, FcrRxReset = 0x02, FcrDma = 0x08, FcrTrigger = 0xC0;

    // LCR, MCR, LSR, MSR bits.
    private const byte LcrDlab = 0x80;
    private const byte McrDtr = 0x01, McrRts = 0x02, McrOut1 = 0x04, McrOut2 = 0x08, McrLoop = 0x10;
    private const byte LsrDr = 0x01, LsrOe = 0x02, LsrThre = 0x20, LsrTemt = 0x40;
    private const byte MsrDcts = 0x01, MsrDdsr = 0x02, MsrTeri = 0x04, MsrDdcd = 0x08, MsrDeltas = 0x0F;
    private const byte MsrCts = 0x10, MsrDsr = 0x20, MsrRi = 0x40, MsrDcd = 0x80;

    // 1.8432 MHz clock / 16 / 9600 baud: bhyve's reset divisor.
    private const ushort DefaultDivisor = 12;

    // System.Threading.Lock: the cheapest uncontended enter/exit (guest reads of LSR take it once per VM exit).
    private readonly Lock _lock = new();
    private readonly ushort _base;
    private readonly Action<bool>? _irq;
    private readonly IConsoleBackend? _backend;

    private byte _ier, _lcr, _mcr, _msr, _fcr, _scr, _dll, _dlm;
    private bool _overrun;          // LSR.OE, latched until LSR is read
    private bool _threPending;      // THRE interrupt condition (cleared by IIR read or THR write)
    private byte _lastRx;           // RBR keeps its last value when read empty
    private readonly byte[] _rx = new byte[FifoSize];
    private int _rxHead, _rxCount;
    private bool _irqLevel;

    /// <summary>Creates a UART decoding ports <paramref name="basePort"/>..+7, raising <paramref name="irq"/> (level, on changes)
    /// and talking to <paramref name="backend"/> (null: output dropped, no input). The backend is attached here and
    /// disposed by the caller.</summary>
    public Uart16550(ushort basePort, Action<bool>? irq, IConsoleBackend? backend)
    {
        _base = basePort;
        _irq = irq;
        _backend = backend;
        InitRegisters();
        backend?.Attach(this);
    }

    /// <summary>The first I/O port.</summary>
    public ushort BasePort => _base;

    /// <summary>The console backend, if any.</summary>
    public IConsoleBackend? Backend => _backend;

    /// <summary>When true, the interrupt output is also gated by MCR.OUT2 as on PC boards (off by default, as in bhyve and QEMU).</summary>
    public bool GateIrqWithOut2 { get; set; }

    /// <summary>The current level of the interrupt output.</summary>
    public bool IrqAsserted
    {
        get { lock (_lock) return _irqLevel; }
    }

    /// <summary>The programmed baud-rate divisor (DLM:DLL).</summary>
    public int Divisor
    {
        get { lock (_lock) return _dlm << 8 | _dll; }
    }

    /// <summary>Resets the UART as its MR pin does (a VM reset): IER, FCR, LCR, MCR, LSR and FIFOs cleared;
    /// the divisor and scratch register are left alone, as the datasheet's reset table leaves them.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _ier = _lcr = _mcr = _fcr = 0;
            _overrun = _threPending = false;
            _rxHead = _rxCount = 0;
            _msr = ModemLines(0);
            UpdateIrqLocked();
        }
        _backend?.ReceiverHasRoom();
    }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        // Wider accesses read consecutive registers, as bhyve's LPC handler does for 16-bit ones.
        uint value = 0;
        bool madeRoom = false;
        lock (_lock)
        {
            for (int i = 0; i < size && i < 4; i++)
            {
                int offset = port + i - _base;
                uint b = offset is >= 0 and < PortCount ? ReadRegisterLocked(offset, ref madeRoom) : 0xFFu;
                value |= b << (8 * i);
            }
            UpdateIrqLocked();
        }
        if (madeRoom) _backend?.ReceiverHasRoom();
        return value;
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        bool madeRoom = false;
        lock (_lock)
        {
            for (int i = 0; i < size && i < 4; i++)
            {
                int offset = port + i - _base;
                if (offset is >= 0 and < PortCount) WriteRegisterLocked(offset, (byte)(value >> (8 * i)), ref madeRoom);
            }
            UpdateIrqLocked();
        }
        if (madeRoom) _backend?.ReceiverHasRoom();
    }

    /// <inheritdoc/>
    public int Offer(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            // In loopback the serial input is disconnected from the receiver (datasheet, MCR bit 4).
            if ((_mcr & McrLoop) != 0) return 0;
            int capacity = RxCapacity;
            int taken = 0;
            while (taken < data.Length && _rxCount < capacity)
            {
                _rx[(_rxHead + _rxCount) % FifoSize] = data[taken++];
                _rxCount++;
            }
            if (taken > 0) UpdateIrqLocked();
            return taken;
        }
    }

    /// <summary>Writes the register state and FIFO contents.</summary>
    public void SaveState(BinaryWriter writer)
    {
        lock (_lock)
        {
            writer.Write(_ier); writer.Write(_lcr); writer.Write(_mcr); writer.Write(_msr);
            writer.Write(_fcr); writer.Write(_scr); writer.Write(_dll); writer.Write(_dlm);
            writer.Write(_overrun); writer.Write(_threPending); writer.Write(_lastRx);
            writer.Write((byte)_rxCount);
            for (int i = 0; i < _rxCount; i++) writer.Write(_rx[(_rxHead + i) % FifoSize]);
        }
    }

    /// <summary>Restores what <see cref="SaveState"/> wrote; throws InvalidDataException on a value it cannot take.</summary>
    public void LoadState(BinaryReader reader, int version)
    {
        byte ier = reader.ReadByte(), lcr = reader.ReadByte(), mcr = reader.ReadByte(), msr = reader.ReadByte();
        byte fcr = reader.ReadByte(), scr = reader.ReadByte(), dll = reader.ReadByte(), dlm = reader.ReadByte();
        bool overrun = reader.ReadBoolean(), thre = reader.ReadBoolean();
        byte lastRx = reader.ReadByte();
        int count = reader.ReadByte();
        int capacity = (fcr & FcrEnable) != 0 ? FifoSize : 1;
        if (count > capacity) throw new InvalidDataException($"UART state holds {count} received bytes, more than its FIFO ({capacity})");
        var bytes = reader.ReadBytes(count);
        if (bytes.Length != count) throw new InvalidDataException("UART state is truncated");
        lock (_lock)
        {
            _ier = (byte)(ier & 0x0F); _lcr = lcr; _mcr = (byte)(mcr & 0x1F); _msr = msr;
            _fcr = (byte)(fcr & (FcrEnable | FcrDma | FcrTrigger)); _scr = scr; _dll = dll; _dlm = dlm;
            _overrun = overrun; _threPending = thre; _lastRx = lastRx;
            _rxHead = 0;
            _rxCount = count;
            bytes.CopyTo(_rx, 0);
            UpdateIrqLocked();
        }
        _backend?.ReceiverHasRoom();
    }

    private int RxCapacity => (_fcr & FcrEnable) != 0 ? FifoSize : 1;

    // FCR[7:6]: 1, 4, 8 or 14 bytes.
    private int RxTrigger => (_fcr >> 6) switch { 0 => 1, 1 => 4, 2 => 8, _ => 14 };

    private void InitRegisters()
    {
        _ier = _lcr = _mcr = _fcr = _scr = 0;
        _dll = (byte)DefaultDivisor;
        _dlm = DefaultDivisor >> 8;
        _msr = ModemLines(0);
        _overrun = _threPending = false;
        _rxHead = _rxCount = 0;
    }

    // The modem input lines as MSR bits 4-7. In loopback they are MCR's outputs (CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2).
    // Otherwise the "cable" reports a peer that is present and ready (DCD, DSR, CTS), as QEMU does, so a guest tty
    // neither blocks on carrier nor on hardware flow control.
    private static byte ModemLines(byte mcr)
    {
        if ((mcr & McrLoop) == 0) return MsrDcd | MsrDsr | MsrCts;
        byte msr = 0;
        if ((mcr & McrRts) != 0) msr |= MsrCts;
        if ((mcr & McrDtr) != 0) msr |= MsrDsr;
        if ((mcr & McrOut1) != 0) msr |= MsrRi;
        if ((mcr & McrOut2) != 0) msr |= MsrDcd;
        return msr;
    }

    private byte InterruptId()
    {
        if (_overrun && (_ier & IerElsi) != 0) return IirRls;
        if (_rxCount > 0 && (_ier & IerErbfi) != 0)
        {
            if ((_fcr & FcrEnable) == 0 || _rxCount >= RxTrigger) return IirRda;
            return IirTimeout;
        }
        if (_threPending && (_ier & IerEtbei) != 0) return IirThre;
        if ((_msr & MsrDeltas) != 0 && (_ier & IerEdssi) != 0) return IirModem;
        return IirNone;
    }

    private void UpdateIrqLocked()
    {
        bool level = InterruptId() != IirNone && (!GateIrqWithOut2 || (_mcr & McrOut2) != 0);
        if (level == _irqLevel) return;
        _irqLevel = level;
        _irq?.Invoke(level);
    }

    private byte ReadRegisterLocked(int offset, ref bool madeRoom)
    {
        if ((_lcr & LcrDlab) != 0)
        {
            if (offset == RegData) return _dll;
            if (offset == RegIer) return _dlm;
        }
        switch (offset)
        {
            case RegData:
                if (_rxCount > 0)
                {
                    _lastRx = _rx[_rxHead];
                    _rxHead = (_rxHead + 1) % FifoSize;
                    _rxCount--;
                    madeRoom = true;
                }
                return _lastRx;
            case RegIer:
                return _ier;
            case RegIir:
            {
                byte id = InterruptId();
                if (id == IirThre) _threPending = false;
                return (byte)(id | ((_fcr & FcrEnable) != 0 ? IirFifos : 0));
            }
            case RegLcr:
                return _lcr;
            case RegMcr:
                return _mcr;
            case RegLsr:
            {
                // The transmitter is busy while the host side holds a full buffer: a guest that polls THRE before each
                // byte (firmware, Linux's console) then waits instead of losing output, as on QEMU's serial port.
                byte lsr = _backend is { OutputFull: true } ? (byte)0 : (byte)(LsrThre | LsrTemt);
                if (_rxCount > 0) lsr |= LsrDr;
                if (_overrun) lsr |= LsrOe;
                _overrun = false;
                return lsr;
            }
            case RegMsr:
            {
                byte msr = _msr;
                _msr &= unchecked((byte)~MsrDeltas);
                return msr;
            }
            default:
                return _scr;
        }
    }

    private void WriteRegisterLocked(int offset, byte value, ref bool madeRoom)
    {
        if ((_lcr & LcrDlab) != 0)
        {
            if (offset == RegData) { _dll = value; return; }
            if (offset == RegIer) { _dlm = value; return; }
        }
        switch (offset)
        {
            case RegData:
                // Writing THR clears the THRE interrupt; the byte leaves at once, so THR is empty again right after.
                _threPending = false;
                UpdateIrqLocked();
                if ((_mcr & McrLoop) != 0)
                {
                    if (_rxCount < RxCapacity)
                    {
                        _rx[(_rxHead + _rxCount) % FifoSize] = value;
                        _rxCount++;
                    }
                    else
                    {
                        _overrun = true;
                    }
                }
                else
                {
                    _backend?.Write(value);
                }
                _threPending = true;
                break;
            case RegIer:
                // Enabling the THRE interrupt while THR is empty (always, here) raises it at once.
                if ((_ier & IerEtbei) == 0 && (value & IerEtbei) != 0) _threPending = true;
                _ier = (byte)(value & 0x0F);
                break;
            case RegIir: // FCR
                if (((_fcr ^ value) & FcrEnable) != 0)
                {
                    // Switching between 16450 and FIFO mode empties the FIFOs.
                    _rxHead = _rxCount = 0;
                    madeRoom = true;
                }
                if ((value & FcrEnable) == 0)
                {
                    _fcr = 0;
                }
                else
                {
                    if ((value & FcrRxReset) != 0)
                    {
                        _rxHead = _rxCount = 0;
                        madeRoom = true;
                    }
                    _fcr = (byte)(value & (FcrEnable | FcrDma | FcrTrigger));
                }
                break;
            case RegLcr:
                _lcr = value;
                break;
            case RegMcr:
            {
                bool wasLoop = (_mcr & McrLoop) != 0;
                _mcr = (byte)(value & 0x1F);
                byte lines = ModemLines(_mcr);
                byte changed = (byte)((lines ^ _msr) & 0xF0);
                byte deltas = 0;
                if ((changed & MsrCts) != 0) deltas |= MsrDcts;
                if ((changed & MsrDsr) != 0) deltas |= MsrDdsr;
                if ((changed & MsrDcd) != 0) deltas |= MsrDdcd;
                // TERI flags the trailing edge of RI only (RI going from on to off).
                if ((_msr & MsrRi) != 0 && (lines & MsrRi) == 0) deltas |= MsrTeri;
                _msr = (byte)((_msr & MsrDeltas) | deltas | lines);
                if (wasLoop && (_mcr & McrLoop) == 0) madeRoom = true;
                break;
            }
            case RegLsr:
            case RegMsr:
                // Status registers: writes are for factory test on real parts and are ignored here, as in bhyve.
                break;
            default:
                _scr = value;
                break;
        }
    }
}
