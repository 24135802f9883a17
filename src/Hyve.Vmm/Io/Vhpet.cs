// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.State;

namespace Hyve.Vmm.Io;

/// <summary>
/// The High Precision Event Timer (IA-PC HPET 1.0a) at 0xFED00000, modelled after bhyve's vhpet.c: eight timers,
/// a 32-bit main counter and 32-bit comparators, 2^24 Hz. Legacy replacement routing is not offered
/// (LEG_RT_CAP reads 0), so every timer routes to an IOAPIC pin named in its route capability or signals
/// an MSI through its FSB route register. Timers run on <see cref="ITimer"/>s, one per HPET timer.
/// </summary>
public sealed class Vhpet : IMmioDevice, IDeviceState, Hyve.Vmm.State.IQuiescent
{
    /// <summary>The conventional guest-physical base (what ACPI's HPET table names).</summary>
    public const ulong DefaultBase = 0xFED0_0000;
    /// <summary>Length of the register block.</summary>
    public const ulong Size = 0x400;
    /// <summary>Number of timers.</summary>
    public const int TimerCount = 8;
    /// <summary>Main counter frequency (bhyve's HPET_FREQ, 16.777216 MHz).</summary>
    public const long Frequency = 16_777_216;
    /// <summary>Counter period in femtoseconds as the capabilities register reports it.</summary>
    public const uint PeriodFs = (uint)(1_000_000_000_000_000L / Frequency);
    /// <summary>
    /// Default interrupt route capability: IOAPIC pins 20-23, bhyve's choice (the four highest pins) for a 24-pin IOAPIC.
    /// </summary>
    public const uint DefaultRouteCapability = 0x00F0_0000;

    private const int RegCapabilities = 0x000, RegConfig = 0x010, RegStatus = 0x020, RegCounter = 0x0F0;
    private const int TimerBase = 0x100, TimerStride = 0x20;
    private const ulong ConfEnable = 1;
    private const ulong TnIntTypeLevel = 1ul << 1, TnIntEnable = 1ul << 2, TnPeriodic = 1ul << 3, TnPeriodicCap = 1ul << 4;
    private const ulong TnValSet = 1ul << 6, TnRouteMask = 0x1Ful << 9, TnFsbEnable = 1ul << 14, TnFsbCap = 1ul << 15;
    // Tn_32MODE_CNF is not writable: every timer is 32 bits wide already (Tn_SIZE_CAP = 0), so it reads 0 as in bhyve.
    private const ulong TnWritable = TnIntTypeLevel | TnIntEnable | TnPeriodic | TnValSet | TnRouteMask | TnFsbEnable;
    private const long NsPerSec = 1_000_000_000;
    // A periodic timer never interrupts more often than this, so a tiny period cannot flood the host thread.
    private const long MinPeriodicIntervalNs = 100_000;

    private readonly Lock _lock = new();
    private readonly IClock _clock;
    private readonly IIrqLines _irq;
    private readonly uint _routeCap;
    private readonly TimerState[] _t = new TimerState[TimerCount];
    private readonly ITimer[] _timers = new ITimer[TimerCount];
    private ulong _config;
    private uint _status;
    private uint _counterBase; // counter value at _baseNs (or the halted value)
    private long _baseNs;

    private struct TimerState
    {
        public ulong Config;    // writable bits only
        public uint Comparator;
        public uint Period;     // the periodic increment
        public ulong FsbRoute;  // address in 63:32, data in 31:0
        public bool Matched;    // the match at Comparator was handled (a one-shot timer delivered it)
        public bool Asserted;   // level interrupt raised on AssertedPin
        public int AssertedPin;
    }

    /// <summary>Creates the HPET; <paramref name="routeCapability"/> is the bitmap of IOAPIC pins a timer may route to.</summary>
    public Vhpet(IClock clock, IIrqLines irq, uint routeCapability = DefaultRouteCapability)
    {
        _clock = clock;
        _irq = irq;
        _routeCap = routeCapability;
        for (int i = 0; i < TimerCount; i++)
        {
            int n = i;
            _timers[i] = clock.CreateTimer(now => OnTimer(n, now));
        }
        ResetLocked();
    }

    /// <summary>bhyve's route capability for an IOAPIC with <paramref name="ioapicPins"/> pins: its four highest pins
    /// (pins 24-31 from 32 pins up, none below 20 pins).</summary>
    public static uint RouteCapabilityFor(int ioapicPins) =>
        ioapicPins >= 32 ? 0xFF00_0000u : ioapicPins >= 20 ? 0xFu << (ioapicPins - 4) : 0u;

    /// <summary>The general capabilities and ID register: period, vendor 0x8086, 8 timers, 32-bit counter, no legacy route, revision 1.</summary>
    public static ulong Capabilities => ((ulong)PeriodFs << 32) | (0x8086ul << 16) | ((ulong)(TimerCount - 1) << 8) | 0x01;

    /// <inheritdoc/>
    public ulong MmioRead(ulong offset, int size)
    {
        ulong ones = size is >= 1 and < 8 ? (1ul << (size * 8)) - 1 : ulong.MaxValue;
        // Only naturally aligned 4- and 8-byte accesses decode (the spec forbids others).
        if ((size != 4 && size != 8) || offset >= Size || (offset & (ulong)(size - 1)) != 0) return ones;
        lock (_lock)
        {
            ulong v = ReadRegister((int)(offset & ~7ul), _clock.NowNs);
            if (size == 8) return v;
            return (offset & 4) != 0 ? v >> 32 : v & 0xFFFF_FFFF;
        }
    }

    /// <inheritdoc/>
    public void MmioWrite(ulong offset, int size, ulong value)
    {
        if ((size != 4 && size != 8) || offset >= Size || (offset & (ulong)(size - 1)) != 0) return;
        ulong mask = ulong.MaxValue;
        if (size == 4)
        {
            int shift = (offset & 4) != 0 ? 32 : 0;
            value = (value & 0xFFFF_FFFF) << shift;
            mask = 0xFFFF_FFFFul << shift;
        }
        lock (_lock) WriteRegister((int)(offset & ~7ul), value, mask, _clock.NowNs);
    }

    /// <summary>Puts the HPET into its power-on state: halted, counter 0, timers disabled, comparators all ones.</summary>
    public void Reset()
    {
        lock (_lock) ResetLocked();
    }

    /// <inheritdoc/>
    public string StateName => "vhpet";
    /// <inheritdoc/>
    public int StateVersion => 2;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Writes the general configuration and status, the main counter now, then each timer's configuration,
    /// comparator, period and FSB route; version 2 adds a byte per timer: 1 when its match has come and not been handled.</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_lock)
        {
            uint counter = Counter(_clock.NowNs);
            w.Write(_config);
            w.Write(_status);
            w.Write(counter);
            for (int i = 0; i < TimerCount; i++)
            {
                w.Write(_t[i].Config);
                w.Write(_t[i].Comparator);
                w.Write(_t[i].Period);
                w.Write(_t[i].FsbRoute);
            }
            for (int i = 0; i < TimerCount; i++) w.Write(Enabled && MatchDue(i, counter) ? (byte)1 : (byte)0);
        }
    }

    // A snapshot holds the clock's callbacks while it writes, so a match may come in that window (or be late under load)
    // without its callback having run. As the comparator matches only on equality, a restored timer would then wait a
    // whole 32-bit wrap (about 5 minutes), and a guest using it as its clockevent would sleep that long: such a match
    // is saved as due and delivered once the restored vCPUs run (Resume).
    private bool MatchDue(int i, uint counter)
    {
        ref var t = ref _t[i];
        bool wanted = (t.Config & TnIntEnable) != 0 || (t.Config & TnPeriodic) != 0;
        return wanted && !t.Matched && unchecked(counter - t.Comparator) < 0x8000_0000u;
    }

    private readonly bool[] _dueAfterRestore = new bool[TimerCount];

    /// <summary>Reads what <see cref="SaveState"/> wrote: the counter continues from its saved value, timers re-arm on
    /// this clock, level interrupts whose status bit was set are raised again, and matches saved as due are delivered at
    /// <see cref="Resume"/> (when the vCPUs have their state).</summary>
    public void LoadState(BinaryReader r, int version)
    {
        ulong config = r.ReadUInt64();
        uint status = r.ReadUInt32();
        uint counter = r.ReadUInt32();
        var timers = new (ulong Config, uint Comparator, uint Period, ulong Fsb)[TimerCount];
        for (int i = 0; i < TimerCount; i++) timers[i] = (r.ReadUInt64(), r.ReadUInt32(), r.ReadUInt32(), r.ReadUInt64());
        var due = new bool[TimerCount];
        if (version >= 2)
            for (int i = 0; i < TimerCount; i++) due[i] = r.ReadByte() != 0;
        lock (_lock)
        {
            ResetLocked();
            long now = _clock.NowNs;
            _config = config & ConfEnable;
            _counterBase = counter;
            _baseNs = now;
            for (int i = 0; i < TimerCount; i++)
            {
                _t[i].Config = timers[i].Config & TnWritable;
                if (!RouteAllowed((int)((_t[i].Config & TnRouteMask) >> 9))) _t[i].Config &= ~TnRouteMask;
                _t[i].Comparator = timers[i].Comparator;
                _t[i].Period = timers[i].Period;
                _t[i].FsbRoute = timers[i].Fsb;
                // A comparator the counter has passed was handled, unless the file says its match is still due.
                _t[i].Matched = !due[i] && unchecked(counter - timers[i].Comparator) < 0x8000_0000u;
                _dueAfterRestore[i] = due[i];
            }
            for (int i = 0; i < TimerCount; i++)
                if ((status & (1u << i)) != 0 && IsLevelToPin(i)) RaiseLevel(i);
            for (int i = 0; i < TimerCount; i++) Arm(i, now);
        }
    }

    /// <summary>Nothing to finish before a snapshot (timer callbacks are held by the clock).</summary>
    public void Quiesce() { }

    /// <summary>Delivers the matches a restore found due (see <see cref="SaveState"/>).</summary>
    public void Resume()
    {
        for (int i = 0; i < TimerCount; i++)
        {
            bool due;
            lock (_lock)
            {
                due = _dueAfterRestore[i];
                _dueAfterRestore[i] = false;
            }
            if (due) OnTimer(i, _clock.NowNs);
        }
    }

    private bool Enabled => (_config & ConfEnable) != 0;

    private uint Counter(long now)
    {
        if (!Enabled) return _counterBase;
        return unchecked(_counterBase + (uint)TicksSince(now));
    }

    private long TicksSince(long now)
    {
        long d = Math.Max(0, now - _baseNs);
        return (long)((Int128)d * Frequency / NsPerSec);
    }

    private long TickTimeNs(long ticksFromBase) => _baseNs + (long)(((Int128)ticksFromBase * NsPerSec + Frequency - 1) / Frequency);

    private bool RouteAllowed(int pin) => pin is >= 0 and < 32 && (_routeCap & (1u << pin)) != 0;

    private bool IsLevelToPin(int n) => (_t[n].Config & (TnIntTypeLevel | TnFsbEnable)) == TnIntTypeLevel;

    private ulong ReadRegister(int reg, long now)
    {
        switch (reg)
        {
            case RegCapabilities: return Capabilities;
            case RegConfig: return _config;
            case RegStatus: return _status;
            case RegCounter: return Counter(now);
        }
        if (reg >= TimerBase && reg < TimerBase + TimerCount * TimerStride)
        {
            int n = (reg - TimerBase) / TimerStride;
            switch ((reg - TimerBase) % TimerStride)
            {
                case 0x00: return _t[n].Config | TnPeriodicCap | TnFsbCap | ((ulong)_routeCap << 32);
                case 0x08: return _t[n].Comparator;
                case 0x10: return _t[n].FsbRoute;
            }
        }
        return 0; // reserved registers read as zero
    }

    private void WriteRegister(int reg, ulong value, ulong mask, long now)
    {
        switch (reg)
        {
            case RegConfig:
            {
                // Only ENABLE_CNF is writable: LEG_RT_CNF is reserved because LEG_RT_CAP is 0.
                ulong next = ((_config & ~mask) | (value & mask)) & ConfEnable;
                if (next == _config) return;
                if ((next & ConfEnable) != 0)
                {
                    _baseNs = now; // counting resumes from the halted value
                    _config = next;
                }
                else
                {
                    _counterBase = Counter(now);
                    _config = next;
                }
                for (int i = 0; i < TimerCount; i++) Arm(i, now);
                return;
            }
            case RegStatus:
            {
                uint clear = (uint)(value & mask) & _status;
                for (int i = 0; i < TimerCount; i++)
                    if ((clear & (1u << i)) != 0) LowerLevel(i);
                return;
            }
            case RegCounter:
                // The spec asks software to halt the counter before writing it; a write while it runs restarts counting from
                // the new value, as bhyve does. The counter is 32 bits wide, so a write to the upper half changes nothing.
                if ((mask & 0xFFFF_FFFF) == 0) return;
                _counterBase = (uint)value;
                _baseNs = now;
                for (int i = 0; i < TimerCount; i++) Arm(i, now);
                return;
        }
        if (reg < TimerBase || reg >= TimerBase + TimerCount * TimerStride) return;
        int n = (reg - TimerBase) / TimerStride;
        ref var t = ref _t[n];
        switch ((reg - TimerBase) % TimerStride)
        {
            case 0x00:
            {
                ulong old = t.Config;
                ulong next = ((old & ~mask) | (value & mask)) & TnWritable;
                // An unsupported route reads back as the old one (the spec's "value read back will not match").
                if (!RouteAllowed((int)((next & TnRouteMask) >> 9))) next = (next & ~TnRouteMask) | (old & TnRouteMask);
                const ulong delivery = TnIntTypeLevel | TnIntEnable | TnRouteMask | TnFsbEnable;
                if (((old ^ next) & delivery) != 0) LowerLevel(n);
                t.Config = next;
                if ((next & TnPeriodic) == 0) t.Period = 0; // a later switch to periodic needs a new period (bhyve)
                Arm(n, now);
                return;
            }
            case 0x08:
            {
                if ((mask & 0xFFFF_FFFF) == 0) return; // the upper half of a 32-bit comparator is read-only zero
                uint v = (uint)value;
                if ((t.Config & TnPeriodic) != 0)
                {
                    // bhyve's reading of the value-set rule: every write sets the period; with VAL_SET the comparator
                    // (accumulator) is set too. So "VAL_SET, write start, write period" programs start and period.
                    t.Period = v;
                    if ((t.Config & TnValSet) != 0) t.Comparator = v;
                }
                else
                {
                    t.Comparator = v;
                }
                t.Matched = false;
                t.Config &= ~TnValSet;
                Arm(n, now);
                return;
            }
            case 0x10:
                t.FsbRoute = (t.FsbRoute & ~mask) | (value & mask);
                return;
        }
    }

    // Arms timer n for its next comparator match. One-shot timers match again after the counter wraps, as the hardware does.
    private void Arm(int n, long now)
    {
        ref var t = ref _t[n];
        bool wanted = Enabled && ((t.Config & TnIntEnable) != 0 || (t.Config & TnPeriodic) != 0);
        if (!wanted) { _timers[n].Stop(); return; }
        long ticksNow = TicksSince(now);
        uint counter = unchecked(_counterBase + (uint)ticksNow);
        uint delta = unchecked(t.Comparator - counter);
        long target = ticksNow + (delta == 0 ? 1L << 32 : delta);
        _timers[n].Start(TickTimeNs(target));
    }

    private void OnTimer(int n, long firedNs)
    {
        lock (_lock)
        {
            if (!Enabled) return;
            long now = Math.Max(firedNs, _clock.NowNs);
            ref var t = ref _t[n];
            uint counter = Counter(now);
            // A stale callback (comparator moved since arming) is recognised by the counter not having reached the comparator.
            if (unchecked(counter - t.Comparator) >= 0x8000_0000u) { Arm(n, now); return; }
            if ((t.Config & TnIntEnable) != 0) Deliver(n);
            if ((t.Config & TnPeriodic) != 0)
            {
                if (t.Period == 0) { _timers[n].Stop(); return; }
                uint passed = unchecked(counter - t.Comparator);
                ulong steps = passed / t.Period + 1;
                t.Comparator = unchecked(t.Comparator + (uint)(steps * t.Period));
                long ticksNow = TicksSince(now);
                long target = ticksNow + unchecked(t.Comparator - counter);
                _timers[n].Start(Math.Max(TickTimeNs(target), now + MinPeriodicIntervalNs));
            }
            else
            {
                t.Matched = true;
                Arm(n, now); // comparator == counter now, so the next match is one full wrap away
            }
        }
    }

    private void Deliver(int n)
    {
        ref var t = ref _t[n];
        if ((t.Config & TnFsbEnable) != 0)
        {
            _irq.Msi(t.FsbRoute >> 32, t.FsbRoute & 0xFFFF_FFFF);
            return;
        }
        int pin = (int)((t.Config & TnRouteMask) >> 9);
        if (!RouteAllowed(pin)) return;
        if ((t.Config & TnIntTypeLevel) != 0) RaiseLevel(n);
        else _irq.IoapicPulse(pin);
    }

    private void RaiseLevel(int n)
    {
        ref var t = ref _t[n];
        int pin = (int)((t.Config & TnRouteMask) >> 9);
        _status |= 1u << n;
        if (t.Asserted || !RouteAllowed(pin)) return;
        t.Asserted = true;
        t.AssertedPin = pin;
        _irq.IoapicAssert(pin);
    }

    private void LowerLevel(int n)
    {
        ref var t = ref _t[n];
        _status &= ~(1u << n);
        if (!t.Asserted) return;
        t.Asserted = false;
        _irq.IoapicDeassert(t.AssertedPin);
    }

    private void ResetLocked()
    {
        for (int i = 0; i < TimerCount; i++)
        {
            LowerLevel(i);
            _timers[i].Stop();
            _t[i] = new TimerState { Comparator = 0xFFFF_FFFF };
        }
        _config = 0;
        _status = 0;
        _counterBase = 0;
        _baseNs = _clock.NowNs;
    }
}
