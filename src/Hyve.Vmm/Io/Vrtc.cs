// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.State;

namespace Hyve.Vmm.Io;

/// <summary>
/// The MC146818 real-time clock and CMOS NVRAM behind ports 0x70 (index, bit 7 = NMI mask) and 0x71 (data),
/// modelled after bhyve's vrtc.c. Time is kept as "RTC seconds" (the broken-down registers read as UTC, so a
/// local-time RTC simply holds a shifted value) plus the clock instant at which that second began; the date
/// registers are re-rendered from it whenever a second boundary has passed, so no thread ticks while idle.
/// IRQ 8 is level-style: asserted when IRQF rises and deasserted when reading register C clears it (bhyve
/// pulses instead; a level lets a guest that leaves C unread see no further edges, as on hardware).
/// </summary>
public sealed class Vrtc : IPortDevice, IDeviceState
{
    /// <summary>The index port.</summary>
    public const ushort IndexPort = 0x70;
    /// <summary>The data port.</summary>
    public const ushort DataPort = 0x71;
    /// <summary>The ISA IRQ the RTC raises.</summary>
    public const int Irq = 8;
    /// <summary>Bytes of CMOS including the clock registers.</summary>
    public const int NvramSize = 128;
    /// <summary>Offset of the century byte (IBM PC convention, used by ACPI's FADT CENTURY field).</summary>
    public const int CenturyOffset = 0x32;
    /// <summary>First offset the control tool may touch: 0x00-0x0D are time and control registers.</summary>
    public const int FirstNvramOffset = 0x0E;
    /// <summary>What <see cref="GetTime"/> returns when the guest wrote an invalid date (bhyve's VRTC_BROKEN_TIME).</summary>
    public const long BrokenTime = -1;

    // Register A.
    private const byte AUip = 0x80;
    private const byte ADividerMask = 0x70;
    private const byte ADividerRunning = 0x20; // DV=010: 32.768 kHz time base, divider chain running.
    private const byte ARateMask = 0x0F;
    // Register B.
    private const byte BSet = 0x80, BPie = 0x40, BAie = 0x20, BUie = 0x10, BSqwe = 0x08, BBinary = 0x04, B24Hour = 0x02;
    // Register C.
    private const byte CIrqf = 0x80, CPf = 0x40, CAf = 0x20, CUf = 0x10;
    // Register D: valid RAM and time.
    private const byte DVrt = 0x80;

    private const int RegA = 0x0A, RegB = 0x0B, RegC = 0x0C, RegD = 0x0D;
    private const long NsPerSec = 1_000_000_000;
    // The datasheet raises UIP 244 us before the update cycle; the update itself is modelled as instantaneous.
    private const long UipLeadNs = 244_000;
    // When the divider chain leaves reset the first update follows half a second later (datasheet).
    private const long FirstUpdateAfterDividerResetNs = 500_000_000;

    private readonly Lock _lock = new();
    private readonly IClock _clock;
    private readonly IIrqLines _irq;
    private readonly ITimer _timer;
    private readonly byte[] _ram = new byte[NvramSize];
    private byte _index;
    private bool _nmiMasked;
    private long _secsAtPhase;   // RTC seconds at _phaseNs
    private long _phaseNs;       // clock instant at which a second (and a periodic tick) began
    private long _shownSecs;     // the second the date registers show
    private long _lastTick;      // periodic tick index last seen
    private bool _broken;        // the guest wrote an invalid date: time stands still
    private bool _irqAsserted;

    /// <summary>Creates the RTC showing <paramref name="unixSeconds"/> + <paramref name="utcOffsetSeconds"/>
    /// (pass the host's local-time offset unless bhyve's <c>-u</c> asked for UTC).</summary>
    public Vrtc(IClock clock, IIrqLines irq, long unixSeconds, long utcOffsetSeconds = 0)
    {
        _clock = clock;
        _irq = irq;
        _timer = clock.CreateTimer(OnTimer);
        _ram[RegA] = ADividerRunning; // as bhyve: the divider keeps time, everything else off (no periodic rate)
        _ram[RegB] = B24Hour;
        _ram[RegD] = DVrt;
        _index = RegD; // a harmless index until the guest picks one (bhyve does the same)
        long now = clock.NowNs;
        _secsAtPhase = unixSeconds + utcOffsetSeconds;
        _phaseNs = now;
        _shownSecs = _secsAtPhase;
        _broken = !RenderTime(_secsAtPhase);
    }

    /// <summary>True when the last write to port 0x70 had bit 7 set (NMI masked).</summary>
    public bool NmiMasked { get { lock (_lock) return _nmiMasked; } }

    /// <summary>The currently selected register index (0-127).</summary>
    public int Index { get { lock (_lock) return _index; } }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        // Only byte accesses decode, as on the ISA bus the chip sits on; wider reads see nothing.
        if (size != 1) return 0xFFFF_FFFF;
        if (port == IndexPort) return 0xFF; // the index latch is write-only (bhyve reads 0xff too)
        if (port != DataPort) return 0xFF;
        lock (_lock)
        {
            long now = _clock.NowNs;
            Sync(now);
            int i = _index;
            byte v;
            switch (i)
            {
                case RegA:
                    v = (byte)(_ram[RegA] & ~AUip);
                    if (UpdateInProgress(now)) v |= AUip;
                    break;
                case RegC:
                    v = _ram[RegC];
                    _ram[RegC] = 0;
                    UpdateIrq();
                    Rearm(now);
                    break;
                default:
                    v = _ram[i];
                    break;
            }
            return v;
        }
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        if (size != 1) return;
        byte b = (byte)value;
        lock (_lock)
        {
            if (port == IndexPort)
            {
                _index = (byte)(b & 0x7F);
                _nmiMasked = (b & 0x80) != 0;
                return;
            }
            if (port != DataPort) return;
            long now = _clock.NowNs;
            Sync(now);
            WriteRegister(_index, b, now);
            Rearm(now);
        }
    }

    /// <summary>The RTC's time in seconds since the epoch (of its broken-down registers read as UTC), or <see cref="BrokenTime"/>.</summary>
    public long GetTime()
    {
        lock (_lock)
        {
            Sync(_clock.NowNs);
            return _broken ? BrokenTime : CurrentSecs(_clock.NowNs);
        }
    }

    /// <summary>Sets the RTC's time (bhyvectl --set-rtc-time); the second starts now.</summary>
    public void SetTime(long unixSeconds)
    {
        // Hyve's own sentence: the runtime's ArgumentOutOfRangeException message is a resource key under NativeAOT.
        if (!IsRepresentable(unixSeconds))
            throw new ArgumentException($"RTC time {unixSeconds} is outside years 1-9999 (-62135596800 to 253402300799 seconds since 1970)");
        lock (_lock)
        {
            long now = _clock.NowNs;
            Sync(now);
            _broken = false;
            Rebase(unixSeconds, now);
            // Rendered even while SET is held, so the guest's clearing of SET picks up the host's time.
            RenderTime(unixSeconds);
            Rearm(now);
        }
    }

    /// <summary>Reads an NVRAM byte; offsets 0x00-0x0D (time and control) and beyond 127 are refused.</summary>
    public byte NvramRead(int offset)
    {
        if (!TryNvramRead(offset, out byte v)) throw new ArgumentException($"RTC offset 0x{offset:x} is not NVRAM", nameof(offset));
        return v;
    }

    /// <summary>Writes an NVRAM byte; offsets 0x00-0x0D (time and control), the century byte and beyond 127 are refused.</summary>
    public void NvramWrite(int offset, byte value)
    {
        if (!TryNvramWrite(offset, value)) throw new ArgumentException($"RTC offset 0x{offset:x} is not NVRAM", nameof(offset));
    }

    /// <summary>Reads any of the 128 bytes as the control tool sees them (bhyve lets every offset be read; only writes to
    /// the time and control registers are refused). Reading register C this way does not clear it. False past 127.</summary>
    public bool TryNvramRead(int offset, out byte value)
    {
        value = 0;
        if (offset < 0 || offset >= NvramSize) return false;
        lock (_lock)
        {
            Sync(_clock.NowNs);
            value = _ram[offset];
            return true;
        }
    }

    /// <summary>Writes an NVRAM byte, false for a refused offset (also the century byte, part of the date, as bhyve refuses it).</summary>
    public bool TryNvramWrite(int offset, byte value)
    {
        if (offset < FirstNvramOffset || offset >= NvramSize || offset == CenturyOffset) return false;
        lock (_lock) _ram[offset] = value;
        return true;
    }

    /// <summary>
    /// Fills the CMOS memory-size bytes firmware reads, as bhyve's rtc.c does: base memory (640 KiB) at 0x15/0x16,
    /// extended memory 1M-64M in KiB at 0x17/0x18 and 0x30/0x31, memory from 16 MiB to the top of low memory in
    /// 64 KiB units at 0x34/0x35, and memory above 4 GiB in 64 KiB units at 0x5b-0x5d.
    /// </summary>
    public void SetMemorySize(ulong lowMemBytes, ulong highMemBytes)
    {
        const ulong Mi = 1024 * 1024;
        ulong ext = (Math.Min(lowMemBytes, 64 * Mi) - Math.Min(lowMemBytes, Mi)) / 1024;
        ulong lmem = lowMemBytes > 16 * Mi ? Math.Min((lowMemBytes - 16 * Mi) / 65536, 0xFFFF) : 0;
        ulong hmem = Math.Min(highMemBytes / 65536, 0xFF_FFFF);
        lock (_lock)
        {
            _ram[0x15] = 640 & 0xFF; _ram[0x16] = 640 >> 8;
            _ram[0x17] = (byte)ext; _ram[0x18] = (byte)(ext >> 8);
            _ram[0x30] = (byte)ext; _ram[0x31] = (byte)(ext >> 8);
            _ram[0x34] = (byte)lmem; _ram[0x35] = (byte)(lmem >> 8);
            _ram[0x5b] = (byte)hmem; _ram[0x5c] = (byte)(hmem >> 8); _ram[0x5d] = (byte)(hmem >> 16);
        }
    }

    /// <summary>VM reset (the chip's RESET pin): time and NVRAM survive; interrupt enables, SQWE and flags clear.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            long now = _clock.NowNs;
            Sync(now);
            _ram[RegB] &= unchecked((byte)~(BPie | BAie | BUie | BSqwe));
            _ram[RegC] = 0;
            _index = 0;
            _nmiMasked = false;
            UpdateIrq();
            Rearm(now);
        }
    }

    /// <inheritdoc/>
    public string StateName => "vrtc";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Writes the 128 bytes of CMOS, the index and NMI mask, the RTC seconds now and how far into that second
    /// the divider chain is, the second the date registers show and the broken-date flag.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_lock)
        {
            long now = _clock.NowNs;
            Sync(now);
            w.Write(_ram);
            w.Write(_index);
            w.Write(_nmiMasked);
            w.Write(TimeRuns ? CurrentSecs(now) : _secsAtPhase);
            w.Write(TimeRuns ? (now - _phaseNs) % NsPerSec : 0);
            w.Write(_shownSecs);
            w.Write(_broken);
        }
    }

    /// <summary>Reads what <see cref="SaveState"/> wrote; the time continues from the saved second on this clock.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        var ram = r.ReadBytes(NvramSize);
        if (ram.Length != NvramSize) throw new EndOfStreamException();
        byte index = r.ReadByte();
        bool nmi = r.ReadBoolean();
        long secs = r.ReadInt64(), into = r.ReadInt64(), shown = r.ReadInt64();
        bool broken = r.ReadBoolean();
        if (index > 0x7F || into < 0 || into >= NsPerSec) throw new InvalidDataException("RTC state has an impossible index or phase");
        lock (_lock)
        {
            long now = _clock.NowNs;
            ram.CopyTo(_ram, 0);
            _ram[RegD] = DVrt;
            _index = index;
            _nmiMasked = nmi;
            _broken = broken;
            _secsAtPhase = secs;
            _phaseNs = now - into;
            _shownSecs = shown;
            _lastTick = TickIndex(now);
            UpdateIrq();
            Rearm(now);
        }
    }

    private bool DividerRuns => (_ram[RegA] & ADividerMask) == ADividerRunning;
    private bool TimeRuns => DividerRuns && (_ram[RegB] & BSet) == 0 && !_broken;
    private bool Binary => (_ram[RegB] & BBinary) != 0;

    private long CurrentSecs(long now) =>
        TimeRuns ? _secsAtPhase + Math.Max(0, now - _phaseNs) / NsPerSec : _secsAtPhase;

    private bool UpdateInProgress(long now) =>
        TimeRuns && Math.Max(0, now - _phaseNs) % NsPerSec >= NsPerSec - UipLeadNs;

    // Periodic rate select: RS 1 and 2 give 256 and 128 Hz on a 32.768 kHz base (as RS 8 and 9); RS n >= 3 gives 32768 >> (n-1) Hz.
    private int RateShift()
    {
        int rs = _ram[RegA] & ARateMask;
        if (rs == 0) return -1;
        if (rs <= 2) rs += 7;
        return rs - 1; // period = 2^(rs-1) / 32768 s
    }

    private long TickIndex(long now)
    {
        int shift = RateShift();
        if (shift < 0) return 0;
        Int128 elapsed = Math.Max(0, now - _phaseNs);
        return (long)((elapsed << 15) / ((Int128)NsPerSec << shift));
    }

    private long TickTime(long index)
    {
        int shift = RateShift();
        Int128 t = (index * ((Int128)NsPerSec << shift) + 32767) >> 15;
        Int128 r = _phaseNs + t;
        return r > long.MaxValue ? long.MaxValue : (long)r;
    }

    private void Rebase(long secs, long now)
    {
        _secsAtPhase = secs;
        _phaseNs = now;
        _shownSecs = secs;
        _lastTick = TickIndex(now);
    }

    // Brings flags and date registers up to 'now'. Flags are set whether or not their interrupt is enabled, as on the chip.
    private void Sync(long now)
    {
        if (!DividerRuns) return;
        if (RateShift() >= 0)
        {
            long tick = TickIndex(now);
            if (tick != _lastTick)
            {
                _lastTick = tick;
                _ram[RegC] |= CPf;
            }
        }
        if (TimeRuns)
        {
            long secs = CurrentSecs(now);
            if (secs != _shownSecs)
            {
                // With AIE set every second passed is checked against the alarm (as bhyve does), up to a day of them;
                // otherwise only the second now shown is, which is all a guest polling AF can tell apart.
                long first = (_ram[RegB] & BAie) != 0 && secs > _shownSecs && secs - _shownSecs <= 86_400 ? _shownSecs + 1 : secs;
                for (long t = first; t <= secs; t++)
                {
                    if (!RenderTime(t))
                    {
                        _broken = true;
                        _secsAtPhase = t;
                        break;
                    }
                    if (AlarmMatches()) _ram[RegC] |= CAf;
                }
                _shownSecs = secs;
                _ram[RegC] |= CUf;
            }
        }
        UpdateIrq();
    }

    private bool AlarmMatches()
    {
        // Alarm bytes 0xC0-0xFF are "don't care" and match every value.
        return Match(_ram[1], _ram[0]) && Match(_ram[3], _ram[2]) && Match(_ram[5], _ram[4]);
        static bool Match(byte alarm, byte now) => alarm >= 0xC0 || alarm == now;
    }

    private void UpdateIrq()
    {
        byte c = (byte)(_ram[RegC] & (CPf | CAf | CUf));
        byte b = _ram[RegB];
        bool irqf = ((c & CPf) != 0 && (b & BPie) != 0) || ((c & CAf) != 0 && (b & BAie) != 0) || ((c & CUf) != 0 && (b & BUie) != 0);
        _ram[RegC] = (byte)(c | (irqf ? CIrqf : 0));
        if (irqf && !_irqAsserted) { _irqAsserted = true; _irq.IsaAssert(Irq); }
        else if (!irqf && _irqAsserted) { _irqAsserted = false; _irq.IsaDeassert(Irq); }
    }

    private void WriteRegister(int i, byte b, long now)
    {
        switch (i)
        {
            case RegA:
            {
                bool ran = DividerRuns;
                long secs = CurrentSecs(now);
                _ram[RegA] = (byte)(b & ~AUip);
                bool runs = DividerRuns;
                if (ran && !runs)
                {
                    // Divider in reset: time stands still at the current second.
                    _secsAtPhase = secs;
                    _phaseNs = now;
                }
                else if (!ran && runs)
                {
                    // Out of reset: the first update comes half a second later.
                    _secsAtPhase = secs;
                    _phaseNs = now - (NsPerSec - FirstUpdateAfterDividerResetNs);
                    _shownSecs = secs;
                }
                _lastTick = TickIndex(now);
                break;
            }
            case RegB:
            {
                byte old = _ram[RegB];
                if ((b & BSet) != 0 && (old & BSet) == 0)
                {
                    // SET stops updates; the datasheet also clears UIE.
                    _secsAtPhase = CurrentSecs(now);
                    b &= unchecked((byte)~BUie);
                    _ram[RegB] = b;
                }
                else if ((b & BSet) == 0 && (old & BSet) != 0)
                {
                    _ram[RegB] = b;
                    TakeTimeFromRegisters(now);
                }
                else
                {
                    _ram[RegB] = b;
                    // A format change re-renders the registers while time runs, so they stay readable.
                    if ((b & BSet) == 0 && ((b ^ old) & (BBinary | B24Hour)) != 0 && !_broken) RenderTime(CurrentSecs(now));
                }
                UpdateIrq();
                break;
            }
            case RegC:
            case RegD:
                break; // read-only
            default:
                if (i == 0) b &= 0x7F; // bit 7 of the seconds register is read-only (bhyve)
                _ram[i] = b;
                // Writing a date field or the century while the clock runs sets the time at once (some guests skip SET).
                bool timeField = i <= 9 && i != 1 && i != 3 && i != 5;
                if ((timeField || i == CenturyOffset) && (_ram[RegB] & BSet) == 0) TakeTimeFromRegisters(now);
                break;
        }
    }

    private void TakeTimeFromRegisters(long now)
    {
        if (TryParseTime(out long secs))
        {
            _broken = false;
            Rebase(secs, now);
        }
        else
        {
            _broken = true;
        }
    }

    private byte ToReg(int v) => Binary ? (byte)v : (byte)(((v / 10) << 4) | (v % 10));

    private bool FromReg(byte r, out int v)
    {
        if (Binary) { v = r; return true; }
        int hi = r >> 4, lo = r & 0xF;
        v = hi * 10 + lo;
        return hi <= 9 && lo <= 9;
    }

    private static bool IsRepresentable(long secs) => secs >= -62135596800L && secs <= 253402300799L; // years 1-9999

    private bool RenderTime(long secs)
    {
        if (!IsRepresentable(secs)) return false;
        var t = DateTime.UnixEpoch.AddSeconds(secs);
        _ram[0] = ToReg(t.Second);
        _ram[2] = ToReg(t.Minute);
        int hour = t.Hour;
        if ((_ram[RegB] & B24Hour) != 0) _ram[4] = ToReg(hour);
        else
        {
            int h12 = hour % 12 == 0 ? 12 : hour % 12;
            _ram[4] = (byte)(ToReg(h12) | (hour >= 12 ? 0x80 : 0));
        }
        _ram[6] = ToReg((int)t.DayOfWeek + 1); // 1 = Sunday
        _ram[7] = ToReg(t.Day);
        _ram[8] = ToReg(t.Month);
        _ram[9] = ToReg(t.Year % 100);
        _ram[CenturyOffset] = ToReg(t.Year / 100);
        return true;
    }

    private bool TryParseTime(out long secs)
    {
        secs = 0;
        if (!FromReg(_ram[0], out int sec) || sec > 59) return false;
        if (!FromReg(_ram[2], out int min) || min > 59) return false;
        int hour;
        if ((_ram[RegB] & B24Hour) != 0)
        {
            if (!FromReg(_ram[4], out hour) || hour > 23) return false;
        }
        else
        {
            bool pm = (_ram[4] & 0x80) != 0;
            if (!FromReg((byte)(_ram[4] & 0x7F), out int h12) || h12 < 1 || h12 > 12) return false;
            hour = h12 % 12 + (pm ? 12 : 0);
        }
        if (!FromReg(_ram[7], out int day) || day < 1) return false;
        if (!FromReg(_ram[8], out int month) || month < 1 || month > 12) return false;
        if (!FromReg(_ram[9], out int yy) || yy > 99) return false;
        if (!FromReg(_ram[CenturyOffset], out int cc) || cc > 99) return false;
        int year = cc * 100 + yy;
        if (year < 1 || day > DateTime.DaysInMonth(year, month)) return false;
        // Day of week is not checked: the chip never validates it either.
        var t = new DateTime(year, month, day, hour, min, sec, DateTimeKind.Utc);
        secs = (long)(t - DateTime.UnixEpoch).TotalSeconds;
        return true;
    }

    private void OnTimer(long firedNs)
    {
        lock (_lock)
        {
            long now = Math.Max(firedNs, _clock.NowNs);
            Sync(now);
            Rearm(now);
        }
    }

    // Arms the one timer for the next event an enabled interrupt needs: a periodic tick (PIE) or a second boundary (UIE/AIE).
    private void Rearm(long now)
    {
        long next = long.MaxValue;
        byte b = _ram[RegB];
        if (DividerRuns && (b & BPie) != 0 && RateShift() >= 0)
            next = TickTime(TickIndex(now) + 1);
        if (TimeRuns && (b & (BUie | BAie)) != 0)
        {
            long elapsed = Math.Max(0, now - _phaseNs);
            long boundary = _phaseNs + (elapsed / NsPerSec + 1) * NsPerSec;
            if (boundary < next) next = boundary;
        }
        if (next == long.MaxValue) _timer.Stop();
        else _timer.Start(next);
    }
}
