// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.State;

namespace Hyve.Vmm.Io;

/// <summary>
/// The 8254 programmable interval timer (bhyve's vatpit) at ports 0x40-0x43, with port 0x61 (NMI status and
/// control) for channel 2's gate and output. Three channels count at 1.193182 MHz of <see cref="IClock"/>
/// time in modes 0-5 with the datasheet's output waveforms; counts and outputs are computed from the time
/// of the last load, so nothing ticks. Channel 0 raises ISA IRQ 0 on each rising edge of its output through
/// one <see cref="ITimer"/>; channels 0 and 1 have their gates tied high, channel 2's gate is port 0x61 bit 0.
/// </summary>
public sealed class Vatpit : IPortDevice, IDeviceState
{
    /// <summary>The input clock, in Hz.</summary>
    public const long Frequency = 1_193_182;

    /// <summary>Port of counter 0 (counters 1 and 2 follow).</summary>
    public const ushort CounterPort = 0x40;

    /// <summary>The mode/command port.</summary>
    public const ushort ControlPort = 0x43;

    /// <summary>NMI status and control (speaker gate, OUT2).</summary>
    public const ushort NmiStatusPort = 0x61;

    /// <inheritdoc/>
    public string StateName => "vatpit";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Shortest interval between two IRQ 0 timer callbacks: a guest programming a tiny period gets
    /// coalesced edges (its IRR bit is latched anyway) instead of flooding the host.</summary>
    public const long MinTimerIntervalNs = 20_000;

    // The DRAM refresh request toggles port 0x61 bit 4 about every 15 us; BIOS delay loops count its flips.
    private const long RefreshPeriodNs = 15_085;

    private readonly Lock _lock = new();
    private readonly IClock _clock;
    private readonly IIrqLines _irq;
    private readonly ITimer _timer;
    private readonly Channel[] _ch = [new(), new(), new()];
    private byte _port61;     // bits 3:0 as written: gate 2, speaker data, parity check and channel check disable
    private bool _timerArmed;

    /// <summary>Creates the PIT on <paramref name="clock"/>, raising IRQ 0 through <paramref name="irq"/>.</summary>
    public Vatpit(IClock clock, IIrqLines irq)
    {
        ArgumentNullException.ThrowIfNull(clock);
        ArgumentNullException.ThrowIfNull(irq);
        _clock = clock;
        _irq = irq;
        _timer = clock.CreateTimer(OnTimer);
        Reset();
    }

    /// <summary>Registers ports 0x40-0x43 and 0x61 on <paramref name="bus"/>.</summary>
    public void RegisterPorts(PortBus bus)
    {
        bus.Register(CounterPort, 4, this);
        bus.Register(NmiStatusPort, 1, this);
    }

    /// <summary>Returns every channel to mode 0, 16-bit access, no count; gate 2 low; IRQ 0 timer stopped.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            for (int i = 0; i < 3; i++) _ch[i].PowerOn(gate: i != 2);
            _port61 = 0;
            _timer.Stop();
            _timerArmed = false;
        }
    }

    /// <summary>The output of channel <paramref name="channel"/> now (for tests and the speaker).</summary>
    public bool GetOutput(int channel)
    {
        if ((uint)channel > 2) return false;
        lock (_lock) return _ch[channel].Evaluate(NowTick(), out _);
    }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        // A wider access is split into byte accesses to consecutive ports, as the ISA bridge does.
        uint v = 0;
        lock (_lock)
        {
            for (int i = 0; i < size && i < 4; i++)
                v |= (uint)ReadByte(port + i) << (8 * i);
        }
        return v;
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        lock (_lock)
        {
            for (int i = 0; i < size && i < 4; i++)
                WriteByte(port + i, (byte)(value >> (8 * i)));
        }
    }

    /// <summary>Writes the state: port 0x61, then each channel with times relative to now.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_lock)
        {
            long now = NowTick();
            w.Write(_port61);
            foreach (var c in _ch) c.Save(w, now);
        }
    }

    /// <summary>Reads state written by <see cref="SaveState"/>, rebasing times on this clock's now.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        lock (_lock)
        {
            long now = NowTick();
            _port61 = (byte)(r.ReadByte() & 0x0f);
            foreach (var c in _ch) c.Restore(r, now);
            _ch[0].Gate = _ch[1].Gate = true;
            _ch[2].Gate = (_port61 & 1) != 0;
            Rearm(now, fromCallback: false);
        }
    }

    private long NowTick() => TickAt(_clock.NowNs);

    /// <summary>Number of whole input-clock periods in <paramref name="ns"/> nanoseconds.</summary>
    public static long TickAt(long ns)
    {
        if (ns <= 0) return 0;
        return ns / 1_000_000_000 * Frequency + ns % 1_000_000_000 * Frequency / 1_000_000_000;
    }

    /// <summary>The first nanosecond at which <paramref name="tick"/> input-clock periods have passed.</summary>
    public static long NsOfTick(long tick)
    {
        if (tick <= 0) return 0;
        return tick / Frequency * 1_000_000_000 + (tick % Frequency * 1_000_000_000 + Frequency - 1) / Frequency;
    }

    private int ReadByte(int port)
    {
        switch (port)
        {
            case CounterPort or CounterPort + 1 or CounterPort + 2:
                return _ch[port - CounterPort].ReadPort(NowTick());
            case NmiStatusPort:
                {
                    long now = _clock.NowNs;
                    int v = _port61 & 0x0f;
                    if ((now / RefreshPeriodNs & 1) != 0) v |= 0x10;
                    if (_ch[2].Evaluate(TickAt(now), out _)) v |= 0x20;
                    return v;
                }
            default:
                return 0xff; // the control port cannot be read on the 8254
        }
    }

    private void WriteByte(int port, byte v)
    {
        long now = NowTick();
        switch (port)
        {
            case CounterPort or CounterPort + 1 or CounterPort + 2:
                _ch[port - CounterPort].WritePort(v, now);
                if (port == CounterPort) Rearm(now, fromCallback: false);
                break;
            case ControlPort:
                WriteControl(v, now);
                break;
            case NmiStatusPort:
                _port61 = (byte)(v & 0x0f);
                _ch[2].SetGate((v & 1) != 0, now);
                break;
        }
    }

    private void WriteControl(byte v, long now)
    {
        int sc = v >> 6;
        if (sc == 3)
        {
            // Read-back: bit 5 low latches counts, bit 4 low latches status, bits 3:1 select counters 2-0.
            for (int i = 0; i < 3; i++)
            {
                if ((v & (2 << i)) == 0) continue;
                if ((v & 0x20) == 0) _ch[i].LatchCount(now);
                if ((v & 0x10) == 0) _ch[i].LatchStatus(now);
            }
            return;
        }
        var c = _ch[sc];
        int rw = v >> 4 & 3;
        if (rw == 0) c.LatchCount(now);
        else
        {
            c.SetMode(v >> 1 & 7, rw, (v & 1) != 0, now);
            if (sc == 0) Rearm(now, fromCallback: false);
        }
    }

    // Arms the IRQ 0 timer for channel 0's next rising output edge after tick `now`, or stops it.
    private void Rearm(long now, bool fromCallback)
    {
        long edge = _ch[0].NextRisingEdge(now);
        if (edge < 0)
        {
            _timer.Stop();
            _timerArmed = false;
            return;
        }
        long deadline = NsOfTick(edge);
        if (fromCallback) deadline = Math.Max(deadline, _clock.NowNs + MinTimerIntervalNs);
        _timer.Start(deadline);
        _timerArmed = true;
    }

    private void OnTimer(long firedNs)
    {
        bool pulse = false;
        lock (_lock)
        {
            // Ignore a firing that lost a race with a Stop or a re-arm.
            if (!_timerArmed || _timer.IsPending) return;
            _timerArmed = false;
            // The deadline was a rising edge of OUT0 (any reprogramming since re-armed or stopped the timer);
            // edges missed by a late callback are coalesced into this one pulse.
            pulse = true;
            Rearm(TickAt(Math.Max(firedNs, _clock.NowNs)), fromCallback: true);
        }
        if (pulse) _irq.IsaPulse(0);
    }

    private sealed class Channel
    {
        public int ModeBits;          // M2..M0 as written (6 and 7 read back as written, behave as 2 and 3)
        public int Access;            // 1 LSB, 2 MSB, 3 LSB then MSB
        public bool Bcd;
        public bool Gate;
        public int Cr;                // count register, raw 16 bits as written
        public bool CountValid;       // a whole count has been written since the control word
        public bool WriteMsbNext, ReadMsbNext, LatchMsbNext;
        public byte WriteLsb;
        public bool CountLatched, StatusLatched;
        public int LatchedCount, LatchBytesLeft;
        public byte LatchedStatus;
        // Counting element: loaded with N at StartTick; PausedAt >= 0 while the gate holds counting in modes 0/4.
        public bool Counting;
        public long StartTick, PausedAt = -1;
        public int N;
        public int HeldCe;            // counter value shown while not counting
        public bool HasPending;       // modes 2/3: a new count waits for the next reload at SwitchTick
        public int PendingN;
        public long SwitchTick, NullUntil;

        private int Mode => ModeBits >= 6 ? ModeBits - 4 : ModeBits;
        private int Modulus => Bcd ? 10000 : 65536;

        public void PowerOn(bool gate)
        {
            ModeBits = 0;
            Access = 3;
            Bcd = false;
            Gate = gate;
            Cr = 0;
            CountValid = false;
            WriteMsbNext = ReadMsbNext = LatchMsbNext = false;
            WriteLsb = 0;
            CountLatched = StatusLatched = false;
            LatchedCount = LatchBytesLeft = 0;
            LatchedStatus = 0;
            Counting = false;
            StartTick = 0;
            PausedAt = -1;
            N = 0;
            HeldCe = 0;
            HasPending = false;
            PendingN = 0;
            SwitchTick = 0;
            NullUntil = long.MaxValue;
        }

        // The count register as a number of input clocks; 0 is the largest count (2^16, or 10^4 in BCD).
        private int LoadValue()
        {
            int v = Bcd ? (Cr >> 12 & 15) * 1000 + (Cr >> 8 & 15) * 100 + (Cr >> 4 & 15) * 10 + (Cr & 15) : Cr;
            return v == 0 ? Modulus : v;
        }

        // Modes 2 and 3 need a period of at least two clocks (a count of 1 is illegal in the datasheet).
        private int Period => Math.Max(N, 2);

        private void Sync(long t)
        {
            if (HasPending && t >= SwitchTick)
            {
                StartTick = SwitchTick;
                N = PendingN;
                HasPending = false;
            }
        }

        // Output level at tick t; ce receives the counting element's value (binary, 0..modulus-1).
        public bool Evaluate(long t, out int ce)
        {
            Sync(t);
            int mode = Mode;
            if (!Counting)
            {
                ce = HeldCe;
                return mode != 0; // mode 0 holds OUT low until terminal count; the others idle high
            }
            if (PausedAt >= 0 && t > PausedAt) t = PausedAt;
            long k = t - StartTick;
            if (k < 0)
            {
                ce = HeldCe;
                return mode != 0;
            }
            switch (mode)
            {
                case 0:
                case 1:
                    ce = Wrap(N - k);
                    return k >= N;
                case 2:
                    {
                        int n = Period;
                        long r = k % n;
                        ce = (int)(n - r) % Modulus;
                        return r != n - 1; // low for the one clock before reload
                    }
                case 3:
                    {
                        int n = Period;
                        long r = k % n;
                        long high = (n + 1) / 2;
                        bool odd = (n & 1) != 0;
                        long j = r < high ? r : r - high;
                        // Even counts go down by two; odd ones take one extra clock in the high half
                        // (N, N-1, N-3 .. 2) and one less in the low half (N, N-3, N-5 .. 2).
                        long v = !odd ? n - 2 * j : j == 0 ? n : r < high ? n + 1 - 2 * j : n - 1 - 2 * j;
                        ce = (int)(v % Modulus);
                        return r < high;
                    }
                default: // 4 and 5: a one-clock low strobe when the count reaches zero
                    ce = Wrap(N - k);
                    return k != N;
            }
        }

        private int Wrap(long v)
        {
            long m = Modulus;
            return (int)(((v % m) + m) % m);
        }

        // First tick after `t` at which OUT rises, or -1 if it will not without software or gate action.
        public long NextRisingEdge(long t)
        {
            Sync(t);
            if (!Counting || PausedAt >= 0) return -1;
            long k = t - StartTick;
            switch (Mode)
            {
                case 0:
                case 1:
                    {
                        long e = StartTick + N;
                        return e > t ? e : -1;
                    }
                case 2:
                case 3:
                    {
                        long n = Period;
                        long m = k < 0 ? 1 : k / n + 1;
                        long e = StartTick + m * n;
                        if (HasPending && SwitchTick <= e) e = SwitchTick;
                        return e;
                    }
                default:
                    {
                        long e = StartTick + N + 1;
                        return e > t ? e : -1;
                    }
            }
        }

        private byte CounterByte(int value, bool msb)
        {
            int v = value & 0xffff;
            if (Bcd) v = v % 10 | v / 10 % 10 << 4 | v / 100 % 10 << 8 | v / 1000 % 10 << 12;
            return (byte)(msb ? v >> 8 : v);
        }

        public int ReadPort(long now)
        {
            if (StatusLatched)
            {
                StatusLatched = false;
                return LatchedStatus;
            }
            if (CountLatched)
            {
                bool msb = Access == 2 || Access == 3 && LatchMsbNext;
                if (Access == 3) LatchMsbNext = !LatchMsbNext;
                if (--LatchBytesLeft <= 0) CountLatched = false;
                return CounterByte(LatchedCount, msb);
            }
            Evaluate(now, out int ce);
            bool m = Access == 2 || Access == 3 && ReadMsbNext;
            if (Access == 3) ReadMsbNext = !ReadMsbNext;
            return CounterByte(ce, m);
        }

        public void WritePort(byte v, long now)
        {
            switch (Access)
            {
                case 1: Cr = v; break;
                case 2: Cr = v << 8; break;
                default:
                    if (!WriteMsbNext)
                    {
                        WriteLsb = v;
                        WriteMsbNext = true;
                        if (Mode == 0)
                        {
                            // Mode 0: the first byte of a two-byte count stops counting and drops OUT at once.
                            Evaluate(now, out HeldCe);
                            Counting = false;
                            PausedAt = -1;
                            HasPending = false;
                        }
                        return;
                    }
                    Cr = WriteLsb | v << 8;
                    WriteMsbNext = false;
                    break;
            }
            CountWritten(now);
        }

        private void CountWritten(long now)
        {
            CountValid = true;
            switch (Mode)
            {
                case 0:
                case 4:
                    // Loaded on the next clock, then counts down while the gate is high.
                    Evaluate(now, out HeldCe);
                    Counting = true;
                    N = LoadValue();
                    StartTick = now + 1;
                    PausedAt = Gate ? -1 : StartTick;
                    HasPending = false;
                    NullUntil = StartTick;
                    break;
                case 1:
                case 5:
                    NullUntil = long.MaxValue; // taken at the next gate trigger
                    break;
                default:
                    Sync(now);
                    if (Counting)
                    {
                        // A running rate generator or square wave keeps its period until the next reload.
                        long n = Period, k = now + 1 - StartTick;
                        long m = k <= 0 ? 1 : (k + n - 1) / n;
                        if (!HasPending) SwitchTick = StartTick + m * n;
                        HasPending = true;
                        PendingN = LoadValue();
                        NullUntil = SwitchTick;
                    }
                    else if (Gate)
                    {
                        Counting = true;
                        N = LoadValue();
                        StartTick = now + 1;
                        PausedAt = -1;
                        NullUntil = StartTick;
                    }
                    else NullUntil = long.MaxValue;
                    break;
            }
        }

        public void SetMode(int modeBits, int access, bool bcd, long now)
        {
            Evaluate(now, out HeldCe);
            ModeBits = modeBits;
            Access = access;
            Bcd = bcd;
            CountValid = false;
            Counting = false;
            PausedAt = -1;
            HasPending = false;
            WriteMsbNext = ReadMsbNext = LatchMsbNext = false;
            CountLatched = false;
            StatusLatched = false;
            NullUntil = long.MaxValue;
        }

        public void LatchCount(long now)
        {
            if (CountLatched) return; // a second latch before the first is read is ignored
            Evaluate(now, out LatchedCount);
            CountLatched = true;
            LatchMsbNext = false;
            LatchBytesLeft = Access == 3 ? 2 : 1;
        }

        public void LatchStatus(long now)
        {
            if (StatusLatched) return;
            bool output = Evaluate(now, out _);
            bool nullCount = now < NullUntil;
            LatchedStatus = (byte)((output ? 0x80 : 0) | (nullCount ? 0x40 : 0) | Access << 4 | ModeBits << 1 | (Bcd ? 1 : 0));
            StatusLatched = true;
        }

        public void SetGate(bool high, long now)
        {
            if (high == Gate) return;
            Sync(now);
            Gate = high;
            switch (Mode)
            {
                case 0:
                case 4:
                    if (!Counting) break;
                    if (!high) PausedAt = Math.Max(now, StartTick);
                    else if (PausedAt >= 0)
                    {
                        StartTick += now + 1 - PausedAt;
                        if (HasPending) SwitchTick += now + 1 - PausedAt;
                        PausedAt = -1;
                    }
                    break;
                case 2:
                case 3:
                    if (!high)
                    {
                        // Gate low stops counting and forces OUT high; the rising gate reloads.
                        if (Counting) Evaluate(now, out HeldCe);
                        Counting = false;
                        HasPending = false;
                    }
                    else if (CountValid) Trigger(now);
                    break;
                default: // 1 and 5: the rising gate triggers (and retriggers) the one-shot or strobe
                    if (high && CountValid) Trigger(now);
                    break;
            }
        }

        private void Trigger(long now)
        {
            Counting = true;
            N = LoadValue();
            StartTick = now + 1;
            PausedAt = -1;
            HasPending = false;
            if (NullUntil > StartTick) NullUntil = StartTick;
        }

        public void Save(BinaryWriter w, long now)
        {
            w.Write(ModeBits); w.Write(Access); w.Write(Bcd); w.Write(Gate); w.Write(Cr); w.Write(CountValid);
            w.Write(WriteMsbNext); w.Write(ReadMsbNext); w.Write(LatchMsbNext); w.Write(WriteLsb);
            w.Write(CountLatched); w.Write(StatusLatched); w.Write(LatchedCount); w.Write(LatchBytesLeft); w.Write(LatchedStatus);
            w.Write(Counting); w.Write(StartTick - now); w.Write(PausedAt < 0 ? long.MinValue : PausedAt - now);
            w.Write(N); w.Write(HeldCe); w.Write(HasPending); w.Write(PendingN); w.Write(SwitchTick - now);
            w.Write(NullUntil == long.MaxValue ? long.MaxValue : NullUntil - now);
        }

        // Saved times are offsets from the save; a few years either way is plenty, more is a corrupt file whose
        // sums would overflow.
        private static long Relative(long ticks) => Math.Abs(ticks) < 1L << 48 ? ticks
            : throw new InvalidDataException("8254 state has an impossible time");

        public void Restore(BinaryReader r, long now)
        {
            ModeBits = r.ReadInt32() & 7; Access = r.ReadInt32(); Bcd = r.ReadBoolean(); Gate = r.ReadBoolean();
            Cr = r.ReadInt32() & 0xffff; CountValid = r.ReadBoolean();
            WriteMsbNext = r.ReadBoolean(); ReadMsbNext = r.ReadBoolean(); LatchMsbNext = r.ReadBoolean(); WriteLsb = r.ReadByte();
            CountLatched = r.ReadBoolean(); StatusLatched = r.ReadBoolean(); LatchedCount = r.ReadInt32() & 0xffff;
            LatchBytesLeft = r.ReadInt32(); LatchedStatus = r.ReadByte();
            Counting = r.ReadBoolean(); StartTick = now + Relative(r.ReadInt64());
            long paused = r.ReadInt64(); PausedAt = paused == long.MinValue ? -1 : Math.Max(0, now + Relative(paused));
            N = r.ReadInt32(); HeldCe = r.ReadInt32() & 0xffff; HasPending = r.ReadBoolean(); PendingN = r.ReadInt32();
            SwitchTick = now + Relative(r.ReadInt64());
            long nul = r.ReadInt64(); NullUntil = nul == long.MaxValue ? long.MaxValue : now + Relative(nul);
            // A corrupt file must not give the model impossible values that could loop or divide by zero.
            if (Access is < 1 or > 3) Access = 3;
            if (N is < 1 or > 65536) N = 65536;
            if (PendingN is < 1 or > 65536) PendingN = 65536;
            if (LatchBytesLeft is < 0 or > 2) LatchBytesLeft = 0;
        }
    }
}
