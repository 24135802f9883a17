// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Devices;

/// <summary>
/// The 8042 keyboard controller of a PC (bhyve's atkbdc) with a PS/2 keyboard on its first port and a PS/2 mouse on
/// the auxiliary one; the keyboard takes host keys from the VNC server, the mouse has no host source. Status at 0x64, data at 0x60; the controller's RAM (byte 0 is
/// the command byte), its self and interface tests, port enables, the output port (bit 0 low resets the machine, as
/// does pulsing it with 0xFE), and the devices' command protocols (ACK 0xFA, reset's 0xAA, identify) are as the IBM
/// PS/2 technical reference describes them. A byte for the guest waits in one output buffer; while it holds keyboard
/// data and command-byte bit 0 is set, IRQ 1 is raised, and IRQ 12 for mouse data with bit 1.
/// </summary>
public sealed class I8042 : IPortDevice, IDeviceState
{
    /// <summary>Data port.</summary>
    public const ushort DataPort = 0x60;
    /// <summary>Status (read) and command (write) port.</summary>
    public const ushort CommandPort = 0x64;
    /// <summary>Keyboard interrupt.</summary>
    public const int KeyboardIrq = 1;
    /// <summary>Mouse interrupt.</summary>
    public const int MouseIrq = 12;

    // Status register bits.
    internal const byte StatusOutputFull = 0x01, StatusSystem = 0x04, StatusCommand = 0x08, StatusUnlocked = 0x10, StatusAuxData = 0x20;
    // Command byte bits.
    internal const byte CcbKeyboardIrq = 0x01, CcbMouseIrq = 0x02, CcbSystem = 0x04, CcbKeyboardOff = 0x10, CcbMouseOff = 0x20, CcbTranslate = 0x40;
    private const int MaxQueued = 64;
    private const byte Ack = 0xFA, Resend = 0xFE, SelfTestPassed = 0xAA;
    // What a firmware leaves in the command byte: keyboard interrupt on, system flag set (self-test passed), translation on.
    private const byte PowerOnCommandByte = CcbKeyboardIrq | CcbSystem | CcbTranslate;

    private readonly IIrqLines? _irq;
    private readonly Action _reset;
    private readonly object _gate = new();
    private readonly byte[] _ram = new byte[32];
    // Bytes on their way to the guest, oldest first: (value, from the mouse).
    private readonly Queue<(byte Value, bool Aux)> _queue = new();
    private byte _output;
    private bool _outputFull, _outputAux, _lastWasCommand;
    private byte _pendingCommand; // a controller command waiting for its data byte (0x60-0x7F, 0xD1-0xD4)
    private byte _keyboardPending, _mousePending; // a device command waiting for its argument byte
    private bool _irq1, _irq12;
    private byte _outputPort = 0x03; // bit 0: reset line high (not reset); bit 1: A20 enabled
    private byte _mouseRate = 100, _mouseResolution = 2, _mouseStatus;
    private byte _scanSet = 2;
    private bool _scanning = true;

    /// <summary>A controller whose reset line calls <paramref name="reset"/>; <paramref name="irq"/> may be null (no interrupts).</summary>
    public I8042(IIrqLines? irq, Action reset)
    {
        _irq = irq;
        _reset = reset;
        Reset();
    }

    /// <summary>Power-on state: empty buffers, the command byte a firmware leaves, interrupts low.</summary>
    public void Reset()
    {
        lock (_gate)
        {
            Array.Clear(_ram);
            _ram[0] = PowerOnCommandByte;
            _queue.Clear();
            _outputFull = _outputAux = _lastWasCommand = false;
            _pendingCommand = _keyboardPending = _mousePending = 0;
            _outputPort = 0x03;
            _mouseRate = 100;
            _mouseResolution = 2;
            _mouseStatus = 0;
            _scanSet = 2;
            _scanning = true;
            UpdateIrqs();
        }
    }

    /// <inheritdoc/>
    public string StateName => "i8042";
    /// <inheritdoc/>
    public int StateVersion => 2;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Writes controller RAM, the queued bytes behind the output buffer, the output buffer, pending command
    /// bytes, the output port and the mouse's settings.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_gate)
        {
            w.Write(_ram);
            w.Write((byte)_queue.Count);
            foreach (var (v, aux) in _queue) { w.Write(v); w.Write(aux); }
            w.Write(_output); w.Write(_outputFull); w.Write(_outputAux); w.Write(_lastWasCommand);
            w.Write(_pendingCommand); w.Write(_keyboardPending); w.Write(_mousePending);
            w.Write(_outputPort); w.Write(_mouseRate); w.Write(_mouseResolution); w.Write(_mouseStatus);
            w.Write(_scanSet); w.Write(_scanning); // version 2
        }
    }

    /// <summary>Reads what <see cref="SaveState"/> wrote and raises the interrupt levels it implies.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        var ram = r.ReadBytes(32);
        if (ram.Length != 32) throw new EndOfStreamException();
        int n = r.ReadByte();
        if (n > MaxQueued) throw new InvalidDataException($"8042 state queues {n} bytes, more than {MaxQueued}");
        var queue = new (byte, bool)[n];
        for (int i = 0; i < n; i++) queue[i] = (r.ReadByte(), r.ReadBoolean());
        var (output, full, aux, lastCmd) = (r.ReadByte(), r.ReadBoolean(), r.ReadBoolean(), r.ReadBoolean());
        var (pending, kbd, mouse) = (r.ReadByte(), r.ReadByte(), r.ReadByte());
        var (port, rate, res, status) = (r.ReadByte(), r.ReadByte(), r.ReadByte(), r.ReadByte());
        byte scanSet = 2;
        bool scanning = true;
        if (version >= 2)
        {
            scanSet = r.ReadByte();
            scanning = r.ReadBoolean();
            if (scanSet is < 1 or > 3) throw new InvalidDataException($"8042 state: scan code set {scanSet}");
        }
        lock (_gate)
        {
            ram.CopyTo(_ram, 0);
            _queue.Clear();
            foreach (var q in queue) _queue.Enqueue(q);
            (_output, _outputFull, _outputAux, _lastWasCommand) = (output, full, aux, lastCmd);
            (_pendingCommand, _keyboardPending, _mousePending) = (pending, kbd, mouse);
            (_outputPort, _mouseRate, _mouseResolution, _mouseStatus) = (port, rate, res, status);
            // Version 1 had no scan set or scanning state: the keyboard was in set 2, scanning.
            (_scanSet, _scanning) = (scanSet, scanning);
            UpdateIrqs();
        }
    }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        lock (_gate)
        {
            if (port == CommandPort) return Status();
            // Reading the data port empties the output buffer; with nothing new it returns the last byte again.
            // The interrupt line falls with the buffer before the next queued byte raises it again: IRQ 1 and 12 are
            // edge-triggered, and a line left high would deliver nothing for the bytes after the first (an identify's
            // 0xAB 0x83 behind its ACK; Linux's atkbd then times out and the keyboard is never found).
            byte v = _output;
            _outputFull = false;
            UpdateIrqs();
            Refill();
            return v;
        }
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        bool reset;
        lock (_gate)
        {
            byte b = (byte)value;
            _lastWasCommand = port == CommandPort;
            reset = port == CommandPort ? Command(b) : Data(b);
        }
        // Outside the lock: a reset suspends the VM, which waits for the other vCPUs.
        if (reset) _reset();
    }

    private byte Status()
    {
        byte s = StatusUnlocked;
        if ((_ram[0] & CcbSystem) != 0) s |= StatusSystem;
        if (_lastWasCommand) s |= StatusCommand;
        if (_outputFull)
        {
            s |= StatusOutputFull;
            if (_outputAux) s |= StatusAuxData;
        }
        return s;
    }

    // A controller command (port 0x64). Returns true when it resets the machine.
    private bool Command(byte c)
    {
        _pendingCommand = 0;
        switch (c)
        {
            case >= 0x20 and <= 0x3F: Put(_ram[c & 0x1F], aux: false); break; // read controller RAM
            case >= 0x60 and <= 0x7F: _pendingCommand = c; break;              // write controller RAM: byte follows
            case 0xA7: _ram[0] |= CcbMouseOff; break;
            case 0xA8: _ram[0] &= unchecked((byte)~CcbMouseOff); break;
            case 0xA9: Put(0x00, aux: false); break;                            // mouse interface test: no error
            case 0xAA:                                                          // self-test
                _ram[0] |= CcbSystem;
                Put(0x55, aux: false);
                break;
            case 0xAB: Put(0x00, aux: false); break;                            // keyboard interface test: no error
            case 0xAD: _ram[0] |= CcbKeyboardOff; break;
            case 0xAE: _ram[0] &= unchecked((byte)~CcbKeyboardOff); break;
            case 0xC0: Put(0x80, aux: false); break;                            // input port: keyboard not inhibited
            case 0xD0: Put(OutputPort(), aux: false); break;
            case 0xD1: case 0xD2: case 0xD3: case 0xD4: _pendingCommand = c; break;
            case 0xE0: Put(0x00, aux: false); break;                            // test inputs
            case >= 0xF0:
                // Pulse output-port bits whose mask bit is 0 (0xFE pulses bit 0: the CPU's reset line).
                return (c & 0x01) == 0;
        }
        UpdateIrqs();
        return false;
    }

    // A data byte (port 0x60): the argument of a pending controller command, or a byte for the keyboard.
    private bool Data(byte b)
    {
        byte pending = _pendingCommand;
        _pendingCommand = 0;
        switch (pending)
        {
            case >= 0x60 and <= 0x7F:
                _ram[pending & 0x1F] = b;
                break;
            case 0xD1:
                _outputPort = b;
                if ((b & 0x01) == 0) return true; // the reset line driven low
                break;
            case 0xD2: Put(b, aux: false); break;  // as if the keyboard sent it
            case 0xD3: Put(b, aux: true); break;   // as if the mouse sent it
            case 0xD4: Mouse(b); break;
            default:
                // A byte for the keyboard re-enables its clock, as the controller does on a transmit.
                _ram[0] &= unchecked((byte)~CcbKeyboardOff);
                Keyboard(b);
                break;
        }
        UpdateIrqs();
        return false;
    }

    private byte OutputPort()
    {
        byte v = (byte)(_outputPort & 0x03);
        if (_outputFull && !_outputAux) v |= 0x10;
        if (_outputFull && _outputAux) v |= 0x20;
        return v;
    }

    // The PS/2 keyboard's command set.
    private void Keyboard(byte b)
    {
        if (_keyboardPending != 0)
        {
            byte command = _keyboardPending;
            _keyboardPending = 0;
            if (command == 0xF0 && b == 0)
            {
                Put(Ack, aux: false);
                Put(_scanSet, aux: false); // the current scan code set
                return;
            }
            if (command == 0xF0 && b is >= 1 and <= 3) _scanSet = b;
            Put(Ack, aux: false);      // the LED state, typematic rate or scan code set
            return;
        }
        switch (b)
        {
            case 0xED: case 0xF0: case 0xF3: _keyboardPending = b; Put(Ack, aux: false); break;
            case 0xEE: Put(0xEE, aux: false); break;                             // echo
            case 0xF2: Put(Ack, aux: false); Put(0xAB, aux: false); Put(0x83, aux: false); break; // MF2 keyboard
            case 0xF4: _scanning = true; Put(Ack, aux: false); break;            // enable
            case 0xF5: _scanning = false; Put(Ack, aux: false); break;           // disable (and defaults)
            case 0xF6: _scanning = true; Put(Ack, aux: false); break;            // defaults
            case 0xFF: _scanning = true; _scanSet = 2; Put(Ack, aux: false); Put(SelfTestPassed, aux: false); break;
            default: Put(Resend, aux: false); break;
        }
    }

    // The PS/2 mouse's command set (reached through controller command 0xD4). It never moves.
    private void Mouse(byte b)
    {
        if (_mousePending != 0)
        {
            if (_mousePending == 0xF3) _mouseRate = b;
            else _mouseResolution = (byte)(b & 0x03);
            _mousePending = 0;
            Put(Ack, aux: true);
            return;
        }
        switch (b)
        {
            case 0xE8: case 0xF3: _mousePending = b; Put(Ack, aux: true); break;   // resolution, sample rate: argument follows
            case 0xE6: _mouseStatus &= unchecked((byte)~0x10); Put(Ack, aux: true); break; // scaling 1:1
            case 0xE7: _mouseStatus |= 0x10; Put(Ack, aux: true); break;           // scaling 2:1
            case 0xE9:                                                              // status request
                Put(Ack, aux: true);
                Put(_mouseStatus, aux: true);
                Put(_mouseResolution, aux: true);
                Put(_mouseRate, aux: true);
                break;
            case 0xEB: Put(Ack, aux: true); Put(0x08, aux: true); Put(0, aux: true); Put(0, aux: true); break; // read data: no motion
            case 0xEA: case 0xEC: case 0xEE: case 0xF0: Put(Ack, aux: true); break; // stream, reset wrap, wrap, remote mode
            case 0xF2: Put(Ack, aux: true); Put(0x00, aux: true); break;           // device ID: standard mouse
            case 0xF4: _mouseStatus |= 0x20; Put(Ack, aux: true); break;           // enable reporting
            case 0xF5: _mouseStatus &= unchecked((byte)~0x20); Put(Ack, aux: true); break;
            case 0xF6:                                                              // defaults
                _mouseRate = 100;
                _mouseResolution = 2;
                _mouseStatus = 0;
                Put(Ack, aux: true);
                break;
            case 0xFF:                                                              // reset: ACK, self-test passed, ID
                _mouseRate = 100;
                _mouseResolution = 2;
                _mouseStatus = 0;
                Put(Ack, aux: true);
                Put(SelfTestPassed, aux: true);
                Put(0x00, aux: true);
                break;
            default: Put(Resend, aux: true); break;
        }
    }

    /// <summary>
    /// A host key went down or up: <paramref name="set1"/> is its scan code set 1 make code, <paramref name="extended"/>
    /// its E0 prefix. The keyboard sends it in its current set (set 1 directly, or set 2's make / F0-break bytes, set 3
    /// being sent as set 2), translated to set 1 when command-byte bit 6 is set. Dropped while the keyboard is disabled
    /// or its clock is off, and whole when the buffer has no room for all of its bytes.
    /// </summary>
    public void KeyEvent(byte set1, bool extended, bool down)
    {
        if (set1 == 0 || set1 >= 0x80) return;
        lock (_gate)
        {
            if (!_scanning || (_ram[0] & CcbKeyboardOff) != 0) return;
            Span<byte> seq = stackalloc byte[3];
            int n = 0;
            if (extended) seq[n++] = 0xE0;
            if (_scanSet == 1 || (_ram[0] & CcbTranslate) != 0)
                seq[n++] = down ? set1 : (byte)(set1 | 0x80);
            else
            {
                byte code = Vnc.KeyMap.ToSet2(set1);
                if (code == 0) return;
                if (!down) seq[n++] = 0xF0;
                seq[n++] = code;
            }
            if (_queue.Count + n > MaxQueued) return;
            foreach (byte b in seq[..n]) Put(b, aux: false);
        }
    }

    // Queues a byte for the guest; the output buffer takes it at once when empty.
    private void Put(byte value, bool aux)
    {
        if (_queue.Count < MaxQueued) _queue.Enqueue((value, aux));
        Refill();
    }

    private void Refill()
    {
        if (!_outputFull && _queue.TryDequeue(out var next))
        {
            _output = next.Value;
            _outputAux = next.Aux;
            _outputFull = true;
        }
        UpdateIrqs();
    }

    // IRQ 1 is high while the buffer holds keyboard data and the command byte enables it; IRQ 12 likewise for the mouse.
    private void UpdateIrqs()
    {
        bool kbd = _outputFull && !_outputAux && (_ram[0] & CcbKeyboardIrq) != 0;
        bool aux = _outputFull && _outputAux && (_ram[0] & CcbMouseIrq) != 0;
        SetLine(ref _irq1, kbd, KeyboardIrq);
        SetLine(ref _irq12, aux, MouseIrq);
    }

    private void SetLine(ref bool level, bool high, int irq)
    {
        if (level == high) return;
        level = high;
        if (_irq is null) return;
        if (high) _irq.IsaAssert(irq);
        else _irq.IsaDeassert(irq);
    }
}
