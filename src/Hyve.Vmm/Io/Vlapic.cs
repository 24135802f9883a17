// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Numerics;
using static Hyve.Vmm.Io.LapicRegisters;

namespace Hyve.Vmm.Io;

/// <summary>
/// A local APIC (xAPIC page and x2APIC MSRs) for the software CPU, and the snapshot format of the LAPIC for both
/// backends (through <see cref="ToKvmState"/> / <see cref="FromKvmState"/>). Modelled on the SDM Vol. 3A chapter 11
/// with bhyve's vlapic.c as a behavioural reference.
/// The timer counts at <c>busHz</c> (default 1 GHz, KVM's APIC bus rate, so a count in a KVM snapshot means the same
/// time here); the TSC for TSC-deadline mode comes from a delegate or, by default, from the clock at <c>tscHz</c>.
/// Outbound messages (IPIs, level EOIs) leave through <see cref="ILapicBus"/> after the lock is released.
/// </summary>
public sealed class Vlapic : IMmioDevice, Hyve.X86.ITaskPriorityRegister
{
    /// <summary>Bytes in the xAPIC register page.</summary>
    public const int PageSize = 0x1000;
    /// <summary>Number of LVT entries (timer, thermal, performance, LINT0, LINT1, error, CMCI).</summary>
    public const int LvtCount = 7;
    /// <summary>Shortest interval between periodic timer interrupts (KVM's min_timer_period_us), so a tiny count cannot flood the host.</summary>
    public const long MinPeriodicIntervalNs = 200_000;

    private const uint LvtMasked = 1u << 16;
    private const uint SvrEnable = 1u << 8, SvrFocusDisabled = 1u << 9, SvrEoiSuppress = 1u << 12;
    private const uint TimerModeMask = 3u << 17;
    private const uint TimerOneShot = 0, TimerPeriodic = 1u << 17, TimerTscDeadline = 2u << 17;
    private const long NsPerSec = 1_000_000_000;
    private const int PendingEsrSlot = 0x290; // reserved in the page: see ToKvmState

    private readonly Lock _lock = new();
    private readonly IClock _clock;
    private readonly ILapicBus _bus;
    private readonly ILapicCpu _cpu;
    private readonly ITimer _timer;
    private readonly Func<ulong>? _readTsc;
    private readonly long _busHz;
    private long _tscHz;
    private readonly bool _eoiSuppression;
    private readonly uint _initialId;
    private readonly bool _bsp;

    private ulong _apicBase;
    private uint _idReg;          // xAPIC ID register (ID in bits 31:24)
    private uint _tpr, _ldr, _dfr, _svr;
    private readonly uint[] _isr = new uint[8], _tmr = new uint[8], _irr = new uint[8];
    private uint _esr, _esrPending;
    private bool _esrFiring;
    private uint _icrLow, _icrHigh;
    private readonly uint[] _lvt = new uint[LvtCount];
    private uint _timerInitial, _dcr;
    private bool _timerRunning;
    private long _timerStartNs;   // when _timerLoad was loaded
    private uint _timerLoad;      // count loaded at _timerStartNs (the initial count, or a restored current count)
    private int _timerDivisor;    // divisor in force since _timerStartNs
    private ulong _tscDeadline;

    /// <summary>Creates a local APIC with <paramref name="apicId"/> in its power-on state.</summary>
    /// <param name="apicId">Initial APIC ID (the x2APIC ID; the xAPIC ID is its low 8 bits).</param>
    /// <param name="bsp">True for the bootstrap processor (IA32_APIC_BASE bit 8).</param>
    /// <param name="clock">The VM clock for the timer.</param>
    /// <param name="bus">Where IPIs and level EOIs go.</param>
    /// <param name="cpu">The vCPU's signal sink (null: signals are dropped, for tests of register behaviour).</param>
    /// <param name="busHz">Timer input frequency before the divider.</param>
    /// <param name="tscHz">TSC frequency, to turn TSC deadlines into clock time.</param>
    /// <param name="readTsc">Reads the vCPU's TSC; null derives it from the clock at <paramref name="tscHz"/>.</param>
    /// <param name="eoiBroadcastSuppression">Offer directed EOI (version bit 24, SVR bit 12); off by default as in bhyve,
    /// because an IOAPIC without an EOI register would then never see the EOI.</param>
    public Vlapic(uint apicId, bool bsp, IClock clock, ILapicBus bus, ILapicCpu? cpu = null,
        long busHz = NsPerSec, long tscHz = NsPerSec, Func<ulong>? readTsc = null, bool eoiBroadcastSuppression = false)
    {
        if (busHz <= 0) throw new ArgumentOutOfRangeException(nameof(busHz));
        if (tscHz <= 0) throw new ArgumentOutOfRangeException(nameof(tscHz));
        _initialId = apicId;
        _bsp = bsp;
        _clock = clock;
        _bus = bus;
        _cpu = cpu ?? NullCpu.Instance;
        _busHz = busHz;
        _tscHz = tscHz;
        _readTsc = readTsc;
        _eoiSuppression = eoiBroadcastSuppression;
        _timer = clock.CreateTimer(OnTimer);
        PowerOnReset();
    }

    /// <summary>The TSC rate the TSC-deadline timer converts with (the vCPU's TSC rate); set before <see cref="Restore"/>
    /// when a restore changes it.</summary>
    public long TscHz
    {
        get { lock (_lock) return _tscHz; }
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            lock (_lock) _tscHz = value;
        }
    }

    /// <summary>The initial (hardware) APIC ID.</summary>
    public uint ApicId => _initialId;

    /// <summary>The version register: version 0x14, max LVT entry 6 (seven LVTs with CMCI), bit 24 if directed EOI is offered.</summary>
    public uint VersionValue => 0x14u | ((LvtCount - 1u) << 16) | (_eoiSuppression ? 1u << 24 : 0);

    /// <summary>The CPU model reports x2APIC (CPUID.1:ECX[21]): without it, setting IA32_APIC_BASE.EXTD is #GP (SDM Vol. 3
    /// 11.12.1) and the x2APIC MSRs do not exist. Default true.</summary>
    public bool X2ApicSupported { get; set; } = true;

    /// <summary>The CPU model reports the TSC-deadline timer (CPUID.1:ECX[24]): without it IA32_TSC_DEADLINE is #GP.
    /// Default true.</summary>
    public bool TscDeadlineSupported { get; set; } = true;

    /// <summary>The TPR as MOV CR8 reaches it: a write re-evaluates the PPR and signals an interrupt it now lets through.</summary>
    public uint TaskPriority
    {
        get { lock (_lock) return _tpr; }
        set
        {
            lock (_lock)
            {
                _tpr = value & 0xFF;
                NotifyIfPending();
            }
        }
    }

    /// <summary>IA32_APIC_BASE.</summary>
    public ulong ApicBase { get { lock (_lock) return _apicBase; } }

    /// <summary>The guest-physical base of the xAPIC page.</summary>
    public ulong BaseAddress { get { lock (_lock) return _apicBase & 0x000F_FFFF_FFFF_F000ul; } }

    /// <summary>True when globally enabled (IA32_APIC_BASE.EN).</summary>
    public bool HardwareEnabled { get { lock (_lock) return (_apicBase & BaseEnable) != 0; } }

    /// <summary>True in x2APIC mode.</summary>
    public bool X2ApicMode { get { lock (_lock) return IsX2Apic; } }

    /// <summary>True when globally enabled and software-enabled (SVR bit 8).</summary>
    public bool SoftwareEnabled { get { lock (_lock) return IsHwEnabled && (_svr & SvrEnable) != 0; } }

    /// <summary>The processor priority (PPR).</summary>
    public int ProcessorPriority { get { lock (_lock) return (int)ComputePpr(); } }

    /// <summary>Priority used to pick the lowest-priority destination: the PPR's class.</summary>
    public int ArbitrationPriority { get { lock (_lock) return (int)(ComputePpr() & 0xF0); } }

    private bool IsHwEnabled => (_apicBase & BaseEnable) != 0;
    private bool IsX2Apic => (_apicBase & (BaseEnable | BaseX2Apic)) == (BaseEnable | BaseX2Apic);
    private bool IsSwEnabled => IsHwEnabled && (_svr & SvrEnable) != 0;
    private uint X2ApicLdr => ((_initialId >> 4) << 16) | (1u << (int)(_initialId & 0xF));

    // ---------------------------------------------------------------- resets

    /// <summary>Power-on reset: IA32_APIC_BASE = 0xFEE00000 | EN (| BSP), xAPIC ID = initial ID, then the INIT state.</summary>
    public void PowerOnReset()
    {
        lock (_lock)
        {
            _apicBase = DefaultBaseAddress | BaseEnable | (_bsp ? BaseBsp : 0);
            _idReg = _initialId << 24;
            InitState();
        }
    }

    /// <summary>INIT reset (SDM 11.4.7.3): everything as at power-on except the APIC ID and IA32_APIC_BASE (x2APIC mode is kept).</summary>
    public void Reset()
    {
        lock (_lock) InitState();
    }

    private void InitState()
    {
        _tpr = 0;
        _ldr = 0;
        _dfr = 0xFFFF_FFFF;
        _svr = 0xFF;
        Array.Clear(_isr);
        Array.Clear(_tmr);
        Array.Clear(_irr);
        _esr = _esrPending = 0;
        _icrLow = _icrHigh = 0;
        for (int i = 0; i < LvtCount; i++) _lvt[i] = LvtMasked;
        _timerInitial = 0;
        _dcr = 0;
        _timerRunning = false;
        _timerLoad = 0;
        _timerDivisor = 2;
        _tscDeadline = 0;
        _timer.Stop();
    }

    // ---------------------------------------------------------------- xAPIC MMIO

    /// <inheritdoc/>
    public ulong MmioRead(ulong offset, int size)
    {
        ulong ones = size is >= 1 and < 8 ? (1ul << (size * 8)) - 1 : ulong.MaxValue;
        if (size < 1 || size > 8 || offset >= PageSize) return ones;
        int within = (int)(offset & 0xF);
        // Registers are 32 bits wide at 16-byte spacing; a read covering only the first 4 bytes of a slot sees the register.
        if (within + size > 4) return 0;
        lock (_lock)
        {
            if (!IsHwEnabled || IsX2Apic) return ones; // the page is not decoded
            uint v = ReadLocked((int)(offset & 0xFF0), false, out _);
            return (v >> (within * 8)) & ones;
        }
    }

    /// <inheritdoc/>
    public void MmioWrite(ulong offset, int size, ulong value)
    {
        // Only aligned 32-bit writes reach a register (the SDM makes other sizes undefined; we ignore them).
        if (size != 4 || offset >= PageSize || (offset & 0xF) != 0) return;
        Outbound o;
        lock (_lock)
        {
            if (!IsHwEnabled || IsX2Apic) return;
            WriteLocked((int)offset, (uint)value, 0, false, out o);
        }
        Send(o);
    }

    // ---------------------------------------------------------------- MSRs

    /// <summary>RDMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register; false means #GP(0).</summary>
    public bool ReadMsr(uint msr, out ulong value)
    {
        value = 0;
        lock (_lock)
        {
            if (msr == MsrApicBase) { value = _apicBase; return true; }
            if (msr == MsrTscDeadline && TscDeadlineSupported)
            {
                value = TimerMode == TimerTscDeadline ? _tscDeadline : 0;
                return true;
            }
            if (msr < MsrX2ApicFirst || msr > MsrX2ApicLast || !IsX2Apic) return false;
            int reg = (int)(msr - MsrX2ApicFirst) << 4;
            if (reg == IcrLow) { value = ((ulong)_icrHigh << 32) | _icrLow; return true; }
            uint v = ReadLocked(reg, true, out bool ok);
            value = v;
            return ok;
        }
    }

    /// <summary>WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register; false means #GP(0).</summary>
    public bool WriteMsr(uint msr, ulong value)
    {
        Outbound o;
        lock (_lock)
        {
            if (msr == MsrApicBase) return WriteApicBase(value);
            if (msr == MsrTscDeadline && TscDeadlineSupported)
            {
                WriteTscDeadline(value);
                return true;
            }
            if (msr < MsrX2ApicFirst || msr > MsrX2ApicLast || !IsX2Apic) return false;
            int reg = (int)(msr - MsrX2ApicFirst) << 4;
            uint hi = (uint)(value >> 32);
            if (reg != IcrLow && hi != 0) return false; // every x2APIC register but the ICR is 32 bits; the rest is reserved
            if (!WriteLocked(reg, (uint)value, hi, true, out o)) return false;
        }
        Send(o);
        return true;
    }

    private bool WriteApicBase(ulong value)
    {
        // Reserved: bits 0-7 and 9, and address bits above a 52-bit MAXPHYADDR.
        const ulong reserved = 0xFFF0_0000_0000_02FFul;
        if ((value & reserved) != 0) return false;
        ulong oldMode = _apicBase & (BaseEnable | BaseX2Apic);
        ulong newMode = value & (BaseEnable | BaseX2Apic);
        if ((value & BaseX2Apic) != 0 && !X2ApicSupported) return false;                     // EXTD is reserved without x2APIC
        if (newMode == BaseX2Apic) return false;                                             // EXTD without EN is invalid
        if (oldMode == (BaseEnable | BaseX2Apic) && newMode == BaseEnable) return false;      // x2APIC -> xAPIC
        if (oldMode == 0 && newMode == (BaseEnable | BaseX2Apic)) return false;               // disabled -> x2APIC
        // BSP is a hardware strap: software writes do not change it.
        _apicBase = (value & ~BaseBsp) | (_apicBase & BaseBsp);
        if (oldMode != 0 && newMode == 0)
        {
            // Disabling: the APIC comes back in its power-up state when re-enabled (SDM 11.4.3).
            _idReg = _initialId << 24;
            InitState();
        }
        return true;
    }

    private void WriteTscDeadline(ulong value)
    {
        // Ignored outside TSC-deadline mode (SDM 11.5.4.1).
        if (TimerMode != TimerTscDeadline) return;
        _tscDeadline = value;
        ArmTscDeadline();
    }

    // ---------------------------------------------------------------- register core

    private uint TimerMode => _lvt[(int)LapicLvt.Timer] & TimerModeMask;

    private uint ReadLocked(int reg, bool x2, out bool ok)
    {
        ok = true;
        switch (reg)
        {
            case Id: return x2 ? _initialId : _idReg;
            case LapicRegisters.Version: return VersionValue;
            case Tpr: return _tpr;
            case Apr: if (x2) break; return 0; // arbitration is not modelled: reads 0 as in bhyve and KVM
            case Ppr: return ComputePpr();
            case Eoi: if (x2) break; return 0; // write-only
            case Rrd: if (x2) break; return 0;
            case Ldr: return x2 ? X2ApicLdr : _ldr;
            case Dfr: if (x2) break; return _dfr;
            case Svr: return _svr;
            case Esr: return _esr;
            case LvtCmci: return _lvt[(int)LapicLvt.Cmci];
            case IcrLow: return _icrLow;
            case IcrHigh: if (x2) break; return _icrHigh;
            case LvtTimer: return _lvt[(int)LapicLvt.Timer];
            case LvtThermal: return _lvt[(int)LapicLvt.Thermal];
            case LvtPerformance: return _lvt[(int)LapicLvt.Performance];
            case LvtLint0: return _lvt[(int)LapicLvt.Lint0];
            case LvtLint1: return _lvt[(int)LapicLvt.Lint1];
            case LvtError: return _lvt[(int)LapicLvt.Error];
            case TimerInitialCount: return _timerInitial;
            case TimerCurrentCount: return CurrentCount(_clock.NowNs);
            case TimerDivide: return _dcr;
            case SelfIpi: break; // write-only (and absent in xAPIC mode)
            default:
                if (reg >= Isr && reg < Isr + 0x80) return _isr[(reg - Isr) >> 4];
                if (reg >= Tmr && reg < Tmr + 0x80) return _tmr[(reg - Tmr) >> 4];
                if (reg >= Irr && reg < Irr + 0x80) return _irr[(reg - Irr) >> 4];
                break;
        }
        ok = !x2; // reserved: xAPIC reads 0, x2APIC raises #GP
        return 0;
    }

    // Returns false for an x2APIC #GP. Outbound messages are returned in 'o' to be sent after the lock is dropped.
    private bool WriteLocked(int reg, uint v, uint hi, bool x2, out Outbound o)
    {
        o = default;
        o.EoiVector = -1;
        switch (reg)
        {
            case Id:
                if (x2) return false; // read-only in x2APIC mode
                _idReg = v & 0xFF00_0000;
                return true;
            case Tpr:
                _tpr = v & 0xFF;
                NotifyIfPending();
                return true;
            case Eoi:
                if (x2 && v != 0) return false;
                o.EoiVector = DoEoi();
                return true;
            case Ldr:
                if (x2) return false;
                _ldr = v & 0xFF00_0000;
                return true;
            case Dfr:
                if (x2) return false;
                _dfr = (v & 0xF000_0000) | 0x0FFF_FFFF;
                return true;
            case Svr:
            {
                uint mask = 0x3FFu | (_eoiSuppression ? SvrEoiSuppress : 0);
                _svr = v & mask;
                if ((_svr & SvrEnable) == 0)
                {
                    // Software disable masks every LVT (SDM 11.4.7.2).
                    for (int i = 0; i < LvtCount; i++) _lvt[i] |= LvtMasked;
                }
                else
                {
                    NotifyIfPending();
                }
                return true;
            }
            case Esr:
                if (x2 && v != 0) return false;
                // A write latches the errors found since the previous write (SDM 11.5.3).
                _esr = _esrPending;
                _esrPending = 0;
                return true;
            case IcrLow:
                // x2APIC faults on the ICR's reserved bits (31:20, 17:16, 13) as KVM does; xAPIC ignores them.
                if (x2 && (v & 0xFFF3_2000u) != 0) return false;
                _icrLow = v & 0x000C_CFFF; // vector, mode, dest mode, level, trigger, shorthand; delivery status reads 0
                if (x2) _icrHigh = hi;
                o = PrepareIpi(x2);
                return true;
            case IcrHigh:
                if (x2) return false;
                _icrHigh = v & 0xFF00_0000;
                return true;
            case LvtCmci: WriteLvt(LapicLvt.Cmci, v); return true;
            case LvtTimer: WriteLvt(LapicLvt.Timer, v); return true;
            case LvtThermal: WriteLvt(LapicLvt.Thermal, v); return true;
            case LvtPerformance: WriteLvt(LapicLvt.Performance, v); return true;
            case LvtLint0: WriteLvt(LapicLvt.Lint0, v); return true;
            case LvtLint1: WriteLvt(LapicLvt.Lint1, v); return true;
            case LvtError: WriteLvt(LapicLvt.Error, v); return true;
            case TimerInitialCount:
                if (TimerMode == TimerTscDeadline) return true; // ignored in TSC-deadline mode
                _timerInitial = v;
                StartCountdown(_clock.NowNs, v);
                return true;
            case TimerDivide:
                ChangeDivider(v & 0xB);
                return true;
            case SelfIpi:
                if (!x2) return true;
                if ((v & ~0xFFu) != 0) return false;
                if (v < 16) { SetError(EsrSendIllegalVector); return true; }
                o.HasIpi = true;
                o.Ipi = new LapicMessage(0, false, LapicDeliveryMode.Fixed, (byte)v, false, true, LapicShorthand.Self, true);
                return true;
        }
        // Read-only (ID in x2APIC, version, PPR, ISR/TMR/IRR, current count) and reserved registers: xAPIC ignores, x2APIC #GP.
        return !x2;
    }

    private static uint LvtWritableMask(LapicLvt lvt) => lvt switch
    {
        LapicLvt.Timer => 0x0007_00FFu,                        // vector, mask, timer mode (2 bits)
        LapicLvt.Lint0 or LapicLvt.Lint1 => 0x0001_A7FFu,      // vector, delivery mode, polarity, trigger, mask
        LapicLvt.Error => 0x0001_00FFu,                        // vector, mask
        _ => 0x0001_07FFu,                                     // thermal, performance, CMCI: vector, delivery mode, mask
    };

    private void WriteLvt(LapicLvt lvt, uint v)
    {
        int i = (int)lvt;
        uint old = _lvt[i];
        uint next = v & LvtWritableMask(lvt);
        // Remote IRR (LINT0/1) is kept by the APIC, not written by software.
        next |= old & (1u << 14) & (lvt is LapicLvt.Lint0 or LapicLvt.Lint1 ? ~0u : 0u);
        if (!IsSwEnabled) next |= LvtMasked;
        if (lvt == LapicLvt.Timer)
        {
            if ((next & TimerModeMask) == TimerModeMask || ((next & TimerModeMask) == TimerTscDeadline && !TscDeadlineSupported))
                next = (next & ~TimerModeMask) | (old & TimerModeMask); // mode 11 is reserved, and 10 without TSC-deadline support
            _lvt[i] = next;
            if (((old ^ next) & TimerModeMask) != 0)
            {
                // Switching between TSC-deadline and count modes disarms the timer (SDM 11.5.4.1), as KVM does.
                bool deadlineInvolved = (old & TimerModeMask) == TimerTscDeadline || (next & TimerModeMask) == TimerTscDeadline;
                if (deadlineInvolved)
                {
                    _timer.Stop();
                    _timerRunning = false;
                    _timerInitial = 0;
                    _tscDeadline = 0;
                }
                else if (_timerRunning)
                {
                    ArmCountdown(_clock.NowNs); // one-shot <-> periodic: the running count continues in the new mode
                }
            }
            return;
        }
        _lvt[i] = next;
    }

    // ---------------------------------------------------------------- priorities and vectors

    private static int Highest(uint[] bits)
    {
        for (int w = 7; w >= 0; w--)
            if (bits[w] != 0) return (w << 5) + 31 - BitOperations.LeadingZeroCount(bits[w]);
        return -1;
    }

    private static bool Test(uint[] bits, int v) => (bits[v >> 5] & (1u << (v & 31))) != 0;
    private static void Set(uint[] bits, int v) => bits[v >> 5] |= 1u << (v & 31);
    private static void Clear(uint[] bits, int v) => bits[v >> 5] &= ~(1u << (v & 31));

    private uint ComputePpr()
    {
        int isrv = Highest(_isr);
        uint isrClass = isrv < 0 ? 0 : (uint)isrv & 0xF0;
        return (_tpr & 0xF0) >= isrClass ? _tpr : isrClass;
    }

    private int PendingVector()
    {
        if (!IsSwEnabled) return -1;
        int v = Highest(_irr);
        if (v < 0) return -1;
        return ((uint)v & 0xF0) > (ComputePpr() & 0xF0) ? v : -1;
    }

    private void NotifyIfPending()
    {
        if (PendingVector() >= 0) _cpu.InterruptPending();
    }

    /// <summary>The highest pending vector whose priority class is above the PPR; false if none (or the APIC is disabled).</summary>
    public bool TryGetPendingInterrupt(out int vector)
    {
        lock (_lock)
        {
            vector = PendingVector();
            return vector >= 0;
        }
    }

    /// <summary>The CPU took <paramref name="vector"/> (INTA): it moves from IRR to ISR and the PPR rises.</summary>
    public void AcknowledgeInterrupt(int vector)
    {
        if ((uint)vector > 255) return;
        lock (_lock)
        {
            if (!Test(_irr, vector)) return;
            Clear(_irr, vector);
            Set(_isr, vector);
        }
    }

    /// <summary>Accepts a fixed interrupt into the IRR (TMR set for level); false when refused
    /// (illegal vector 0-15, which sets "receive illegal vector", or APIC software-disabled).</summary>
    public bool SetIrr(int vector, bool levelTriggered)
    {
        if ((uint)vector > 255) return false;
        lock (_lock) return SetIrrLocked(vector, levelTriggered);
    }

    private bool SetIrrLocked(int vector, bool level)
    {
        if (!IsSwEnabled) return false; // a software-disabled APIC ignores fixed interrupts (bhyve does the same)
        if (vector < 16)
        {
            SetError(EsrReceiveIllegalVector);
            return false;
        }
        Set(_irr, vector);
        if (level) Set(_tmr, vector); else Clear(_tmr, vector);
        NotifyIfPending();
        return true;
    }

    private int DoEoi()
    {
        int v = Highest(_isr);
        if (v < 0) return -1;
        Clear(_isr, v);
        NotifyIfPending();
        if (!Test(_tmr, v)) return -1;
        // With EOI-broadcast suppression the guest EOIs the IOAPIC itself.
        if ((_svr & SvrEoiSuppress) != 0) return -1;
        return v;
    }

    private void SetError(uint bits)
    {
        _esrPending |= bits;
        // The error LVT may itself carry an illegal vector: the guard stops the recursion, as bhyve's esr_firing does.
        if (_esrFiring) return;
        _esrFiring = true;
        FireLvt(LapicLvt.Error);
        _esrFiring = false;
    }

    /// <summary>True if this APIC is the focus processor for <paramref name="vector"/> (focus checking enabled and the vector in IRR or ISR).</summary>
    public bool IsFocusFor(int vector)
    {
        if ((uint)vector > 255) return false;
        lock (_lock) return (_svr & SvrFocusDisabled) == 0 && (Test(_isr, vector) || Test(_irr, vector));
    }

    // ---------------------------------------------------------------- local interrupts

    /// <summary>Asserts a local interrupt source (bhyve's vlapic_trigger_lvt, bhyvectl --assert-lapic-lvt); false for a bad index.
    /// With the APIC globally disabled LINT0 acts as INTR and LINT1 as NMI, as on a processor without an APIC.</summary>
    public bool AssertLocalInterrupt(int lvtIndex)
    {
        if ((uint)lvtIndex >= LvtCount) return false;
        lock (_lock)
        {
            if (!IsHwEnabled)
            {
                if (lvtIndex == (int)LapicLvt.Lint0) _cpu.ExtInt();
                else if (lvtIndex == (int)LapicLvt.Lint1) _cpu.Nmi();
                return true;
            }
            FireLvt((LapicLvt)lvtIndex);
            return true;
        }
    }

    private void FireLvt(LapicLvt lvt)
    {
        uint e = _lvt[(int)lvt];
        if ((e & LvtMasked) != 0 || !IsSwEnabled) return;
        // Timer and error entries have no delivery-mode field: they are always fixed.
        var mode = lvt is LapicLvt.Timer or LapicLvt.Error ? LapicDeliveryMode.Fixed : (LapicDeliveryMode)((e >> 8) & 7);
        switch (mode)
        {
            case LapicDeliveryMode.Fixed:
            {
                bool level = (lvt is LapicLvt.Lint0 or LapicLvt.Lint1) && (e & (1u << 15)) != 0;
                SetIrrLocked((int)(e & 0xFF), level);
                break;
            }
            case LapicDeliveryMode.Nmi:
                _cpu.Nmi();
                break;
            case LapicDeliveryMode.ExtInt:
                _cpu.ExtInt();
                break;
            default:
                break; // SMI, INIT and reserved modes in an LVT are ignored (no SMM; INIT via LVT is not a PC wiring)
        }
    }

    // ---------------------------------------------------------------- IPIs

    private struct Outbound
    {
        public int EoiVector;
        public bool HasIpi;
        public LapicMessage Ipi;
    }

    private Outbound PrepareIpi(bool x2)
    {
        var o = new Outbound { EoiVector = -1 };
        uint lo = _icrLow;
        var mode = (LapicDeliveryMode)((lo >> 8) & 7);
        int vector = (int)(lo & 0xFF);
        bool logical = (lo & (1u << 11)) != 0;
        bool assert = (lo & (1u << 14)) != 0;
        bool level = (lo & (1u << 15)) != 0;
        var shorthand = (LapicShorthand)((lo >> 18) & 3);
        switch (mode)
        {
            case LapicDeliveryMode.Fixed:
            case LapicDeliveryMode.LowestPriority:
                if (vector < 16) { SetError(EsrSendIllegalVector); return o; }
                break;
            case LapicDeliveryMode.Init:
                if (level && !assert) return o; // INIT level de-assert: obsolete, ignored
                break;
            case LapicDeliveryMode.Nmi:
            case LapicDeliveryMode.Startup:
                break;
            default:
                return o; // SMI (no SMM), ExtINT and reserved modes are not sent
        }
        // The self shorthand carries only fixed interrupts (SDM table 11-3 note).
        if (shorthand == LapicShorthand.Self && mode != LapicDeliveryMode.Fixed) return o;
        uint dest = x2 ? _icrHigh : _icrHigh >> 24;
        o.HasIpi = true;
        o.Ipi = new LapicMessage(dest, logical, mode, (byte)vector, level, true, shorthand, x2);
        return o;
    }

    private void Send(in Outbound o)
    {
        if (o.EoiVector >= 0) _bus.LevelEoi(this, o.EoiVector);
        if (o.HasIpi) _bus.SendIpi(this, o.Ipi);
    }

    /// <summary>Whether a message with this destination reaches this APIC (used by the bus; shorthands are resolved there).</summary>
    public bool MatchesDestination(uint destination, bool logical, bool x2ApicFormat)
    {
        lock (_lock)
        {
            if (!IsHwEnabled) return false;
            uint broadcast = x2ApicFormat ? 0xFFFF_FFFFu : 0xFFu;
            if (destination == broadcast) return true;
            if (IsX2Apic)
            {
                if (!logical) return destination == _initialId;
                uint ldr = X2ApicLdr;
                return (destination >> 16) == (ldr >> 16) && (destination & ldr & 0xFFFF) != 0;
            }
            if (destination > 0xFF) return false; // an x2APIC-only destination cannot name an xAPIC
            if (!logical) return destination == _idReg >> 24;
            uint mine = _ldr >> 24;
            if ((_dfr >> 28) == 0xF) return (destination & mine) != 0; // flat: one bit per APIC
            // Cluster: high nibble names the cluster (15 = all clusters), low nibble the members.
            uint cluster = destination >> 4;
            return (cluster == 0xF || cluster == mine >> 4) && (destination & mine & 0xF) != 0;
        }
    }

    /// <summary>Receives a message the bus resolved to this APIC.</summary>
    public void Receive(in LapicMessage m)
    {
        lock (_lock)
        {
            if (!IsHwEnabled) return;
            switch (m.Mode)
            {
                case LapicDeliveryMode.Fixed:
                case LapicDeliveryMode.LowestPriority:
                    SetIrrLocked(m.Vector, m.LevelTriggered);
                    break;
                case LapicDeliveryMode.Nmi:
                    _cpu.Nmi();
                    break;
                case LapicDeliveryMode.Init:
                    if (!m.Assert && m.LevelTriggered) break;
                    InitState();
                    _cpu.Init();
                    break;
                case LapicDeliveryMode.Startup:
                    _cpu.Startup(m.Vector);
                    break;
                case LapicDeliveryMode.ExtInt:
                    _cpu.ExtInt();
                    break;
                default:
                    break; // SMI: no SMM
            }
        }
    }

    // ---------------------------------------------------------------- timer

    private static int Divisor(uint dcr)
    {
        uint code = (dcr & 3) | ((dcr >> 1) & 4);
        return code == 7 ? 1 : 2 << (int)code;
    }

    // Clock nanoseconds for 'ticks' timer ticks at the given divisor, rounded up so a deadline never precedes its tick.
    private long TicksToNs(long ticks, int divisor)
    {
        Int128 ns = ((Int128)ticks * divisor * NsPerSec + _busHz - 1) / _busHz;
        return ns > long.MaxValue / 2 ? long.MaxValue / 2 : (long)ns;
    }

    private long ElapsedTicks(long now) =>
        (long)((Int128)Math.Max(0, now - _timerStartNs) * _busHz / ((Int128)NsPerSec * _timerDivisor));

    private uint CurrentCount(long now)
    {
        if (!_timerRunning || TimerMode == TimerTscDeadline) return 0;
        long elapsed = ElapsedTicks(now);
        if (elapsed < _timerLoad) return (uint)(_timerLoad - elapsed);
        if (TimerMode != TimerPeriodic || _timerInitial == 0) return 0;
        long into = (elapsed - _timerLoad) % _timerInitial;
        return (uint)(_timerInitial - into);
    }

    // The current count a saved state carries. A one-shot countdown that reached zero while the clock was held (a
    // checkpoint pauses timer delivery) has not fired yet: saving 0 would restore it as stopped and lose the interrupt,
    // freezing a tickless guest whose clockevent it is. It is saved as 1, so it fires one tick after the restore.
    private uint SavedCurrentCount(long now)
    {
        uint count = CurrentCount(now);
        return count == 0 && _timerRunning && TimerMode != TimerTscDeadline && TimerMode != TimerPeriodic ? 1u : count;
    }

    private void StartCountdown(long now, uint count)
    {
        _timerStartNs = now;
        _timerLoad = count;
        _timerDivisor = Divisor(_dcr);
        _timerRunning = count != 0;
        if (_timerRunning) ArmCountdown(now);
        else _timer.Stop();
    }

    // Arms the timer for the next time the count reaches zero after 'now'.
    private void ArmCountdown(long now)
    {
        if (!_timerRunning) { _timer.Stop(); return; }
        long elapsed = ElapsedTicks(now);
        long next;
        if (elapsed < _timerLoad) next = _timerLoad;
        else if (TimerMode == TimerPeriodic && _timerInitial != 0)
            next = _timerLoad + ((elapsed - _timerLoad) / _timerInitial + 1) * (long)_timerInitial;
        else { _timerRunning = false; _timer.Stop(); return; }
        _timer.Start(_timerStartNs + TicksToNs(next, _timerDivisor));
    }

    private void ChangeDivider(uint dcr)
    {
        long now = _clock.NowNs;
        if (_timerRunning && TimerMode != TimerTscDeadline)
        {
            // The remaining count carries on at the new rate (what KVM does); a periodic reload uses the initial count.
            uint remaining = CurrentCount(now);
            _dcr = dcr;
            if (remaining != 0)
            {
                _timerStartNs = now;
                _timerLoad = remaining;
                _timerDivisor = Divisor(dcr);
                ArmCountdown(now);
                return;
            }
        }
        _dcr = dcr;
    }

    private ulong ReadTsc() => _readTsc is not null ? _readTsc() : (ulong)((Int128)_clock.NowNs * _tscHz / NsPerSec);

    private void ArmTscDeadline()
    {
        if (_tscDeadline == 0) { _timer.Stop(); return; }
        ulong tsc = ReadTsc();
        if (_tscDeadline <= tsc)
        {
            // A deadline already passed fires at once and the MSR reads 0 afterwards.
            _timer.Stop();
            _tscDeadline = 0;
            FireLvt(LapicLvt.Timer);
            return;
        }
        Int128 ns = ((Int128)(_tscDeadline - tsc) * NsPerSec + _tscHz - 1) / _tscHz;
        long now = _clock.NowNs;
        _timer.Start(ns > long.MaxValue / 2 ? long.MaxValue / 2 : now + (long)ns);
    }

    private void OnTimer(long firedNs)
    {
        lock (_lock)
        {
            long now = Math.Max(firedNs, _clock.NowNs);
            if (TimerMode == TimerTscDeadline)
            {
                ArmTscDeadline(); // fires if due, re-arms if the TSC is behind the clock's estimate
                return;
            }
            if (!_timerRunning) return;
            long elapsed = ElapsedTicks(now);
            if (elapsed < _timerLoad) { ArmCountdown(now); return; } // early or stale
            FireLvt(LapicLvt.Timer);
            if (TimerMode == TimerPeriodic && _timerInitial != 0)
            {
                long next = _timerLoad + ((elapsed - _timerLoad) / _timerInitial + 1) * (long)_timerInitial;
                long at = _timerStartNs + TicksToNs(next, _timerDivisor);
                _timer.Start(Math.Max(at, now + MinPeriodicIntervalNs));
            }
            else
            {
                _timerRunning = false;
            }
        }
    }

    // ---------------------------------------------------------------- KVM layout and snapshots

    /// <summary>
    /// Writes the register page in the layout of KVM's <c>struct kvm_lapic_state</c> (the first 1 KiB of the APIC page,
    /// each register a little-endian dword at its offset). In x2APIC mode the ID is the 32-bit x2APIC ID
    /// (KVM_X2APIC_API_USE_32BIT_IDS) and ICR's destination sits in 0x310's full 32 bits, as KVM's userspace format has it.
    /// The current count at 0x390 carries the timer's remaining time. One Hyve extension: errors detected but not yet
    /// latched into ESR by an ESR write sit in the reserved dword at 0x290, which KVM keeps verbatim and guests cannot read.
    /// </summary>
    public void ToKvmState(Span<byte> page)
    {
        if (page.Length < LapicState.Size) throw new ArgumentException("the KVM LAPIC state is 1024 bytes", nameof(page));
        page = page[..LapicState.Size];
        page.Clear();
        lock (_lock)
        {
            bool x2 = IsX2Apic;
            Put(page, Id, x2 ? _initialId : _idReg);
            Put(page, LapicRegisters.Version, VersionValue);
            Put(page, Tpr, _tpr);
            Put(page, Ppr, ComputePpr());
            Put(page, Ldr, x2 ? X2ApicLdr : _ldr);
            Put(page, Dfr, _dfr);
            Put(page, Svr, _svr);
            for (int i = 0; i < 8; i++)
            {
                Put(page, Isr + i * 16, _isr[i]);
                Put(page, Tmr + i * 16, _tmr[i]);
                Put(page, Irr + i * 16, _irr[i]);
            }
            Put(page, Esr, _esr);
            Put(page, PendingEsrSlot, _esrPending);
            Put(page, LvtCmci, _lvt[(int)LapicLvt.Cmci]);
            Put(page, IcrLow, _icrLow);
            Put(page, IcrHigh, _icrHigh);
            Put(page, LvtTimer, _lvt[(int)LapicLvt.Timer]);
            Put(page, LvtThermal, _lvt[(int)LapicLvt.Thermal]);
            Put(page, LvtPerformance, _lvt[(int)LapicLvt.Performance]);
            Put(page, LvtLint0, _lvt[(int)LapicLvt.Lint0]);
            Put(page, LvtLint1, _lvt[(int)LapicLvt.Lint1]);
            Put(page, LvtError, _lvt[(int)LapicLvt.Error]);
            Put(page, TimerInitialCount, _timerInitial);
            Put(page, TimerCurrentCount, SavedCurrentCount(_clock.NowNs));
            Put(page, TimerDivide, _dcr);
        }
    }

    /// <summary>
    /// Loads the register page from KVM's layout (see <see cref="ToKvmState"/>). IA32_APIC_BASE must already hold the mode
    /// the page was taken in (KVM asks the same: set the MSR before KVM_SET_LAPIC). Version and PPR are recomputed;
    /// a running one-shot or periodic timer resumes with the page's current count, as KVM_SET_LAPIC does.
    /// </summary>
    public void FromKvmState(ReadOnlySpan<byte> page)
    {
        if (page.Length < LapicState.Size) throw new ArgumentException("the KVM LAPIC state is 1024 bytes", nameof(page));
        lock (_lock)
        {
            bool x2 = IsX2Apic;
            if (!x2) _idReg = Get(page, Id) & 0xFF00_0000;
            _tpr = Get(page, Tpr) & 0xFF;
            _ldr = x2 ? 0 : Get(page, Ldr) & 0xFF00_0000;
            _dfr = (Get(page, Dfr) & 0xF000_0000) | 0x0FFF_FFFF;
            _svr = Get(page, Svr) & (0x3FFu | (_eoiSuppression ? SvrEoiSuppress : 0));
            for (int i = 0; i < 8; i++)
            {
                _isr[i] = Get(page, Isr + i * 16);
                _tmr[i] = Get(page, Tmr + i * 16);
                _irr[i] = Get(page, Irr + i * 16);
            }
            // Vectors 0-15 can never be accepted: drop them rather than trust the page.
            _isr[0] &= 0xFFFF_0000; _tmr[0] &= 0xFFFF_0000; _irr[0] &= 0xFFFF_0000;
            _esr = Get(page, Esr) & 0xFF;
            _esrPending = Get(page, PendingEsrSlot) & 0xFF;
            _icrLow = Get(page, IcrLow) & 0x000C_CFFF;
            _icrHigh = x2 ? Get(page, IcrHigh) : Get(page, IcrHigh) & 0xFF00_0000;
            _lvt[(int)LapicLvt.Cmci] = Get(page, LvtCmci) & LvtWritableMask(LapicLvt.Cmci);
            _lvt[(int)LapicLvt.Thermal] = Get(page, LvtThermal) & LvtWritableMask(LapicLvt.Thermal);
            _lvt[(int)LapicLvt.Performance] = Get(page, LvtPerformance) & LvtWritableMask(LapicLvt.Performance);
            _lvt[(int)LapicLvt.Lint0] = Get(page, LvtLint0) & (LvtWritableMask(LapicLvt.Lint0) | (1u << 14));
            _lvt[(int)LapicLvt.Lint1] = Get(page, LvtLint1) & (LvtWritableMask(LapicLvt.Lint1) | (1u << 14));
            _lvt[(int)LapicLvt.Error] = Get(page, LvtError) & LvtWritableMask(LapicLvt.Error);
            uint timerLvt = Get(page, LvtTimer) & LvtWritableMask(LapicLvt.Timer);
            if ((timerLvt & TimerModeMask) == TimerModeMask) timerLvt &= ~TimerModeMask;
            _lvt[(int)LapicLvt.Timer] = timerLvt;
            _dcr = Get(page, TimerDivide) & 0xB;
            _timerInitial = Get(page, TimerInitialCount);
            uint current = Get(page, TimerCurrentCount);
            _timer.Stop();
            _timerRunning = false;
            if (TimerMode == TimerTscDeadline)
            {
                _timerInitial = 0;
                ArmTscDeadline();
            }
            else
            {
                _tscDeadline = 0;
                if (_timerInitial != 0 && current != 0)
                    StartCountdown(_clock.NowNs, Math.Min(current, _timerInitial));
            }
        }
    }

    /// <summary>Captures the whole LAPIC state (IA32_APIC_BASE, IA32_TSC_DEADLINE and the KVM-layout page).</summary>
    public VlapicState Save()
    {
        var s = new VlapicState();
        ToKvmState(s.Page);
        lock (_lock)
        {
            s.ApicBase = _apicBase;
            s.TscDeadline = TimerMode == TimerTscDeadline ? _tscDeadline : 0;
        }
        return s;
    }

    /// <summary>Restores a state from <see cref="Save"/> (or one built from a KVM vCPU); other versions or shapes are refused.</summary>
    public void Restore(VlapicState s)
    {
        if (s.Version != VlapicState.CurrentVersion || s.Page is null || s.Page.Length != LapicState.Size)
            throw new ArgumentException("unusable LAPIC state", nameof(s));
        ulong mode = s.ApicBase & (BaseEnable | BaseX2Apic);
        if (mode == BaseX2Apic) throw new ArgumentException("IA32_APIC_BASE has x2APIC without enable", nameof(s));
        lock (_lock)
        {
            _apicBase = (s.ApicBase & 0x000F_FFFF_FFFF_FC00ul) | (_apicBase & BaseBsp);
            _idReg = _initialId << 24;
            _tscDeadline = s.TscDeadline;
            FromKvmState(s.Page);
        }
    }

    private static void Put(Span<byte> page, int offset, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(page[offset..], v);
    private static uint Get(ReadOnlySpan<byte> page, int offset) => BinaryPrimitives.ReadUInt32LittleEndian(page[offset..]);

    private sealed class NullCpu : ILapicCpu
    {
        public static readonly NullCpu Instance = new();
        public void InterruptPending() { }
        public void Nmi() { }
        public void ExtInt() { }
        public void Init() { }
        public void Startup(int vector) { }
    }
}
