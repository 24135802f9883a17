// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm.Io;

/// <summary>Offsets of the local APIC registers in the xAPIC page (SDM Vol. 3A table 11-1); x2APIC MSR = 0x800 + offset / 16.</summary>
public static class LapicRegisters
{
    /// <summary>Local APIC ID.</summary>
    public const int Id = 0x020;
    /// <summary>Version.</summary>
    public const int Version = 0x030;
    /// <summary>Task priority.</summary>
    public const int Tpr = 0x080;
    /// <summary>Arbitration priority (xAPIC only).</summary>
    public const int Apr = 0x090;
    /// <summary>Processor priority.</summary>
    public const int Ppr = 0x0A0;
    /// <summary>End of interrupt (write-only).</summary>
    public const int Eoi = 0x0B0;
    /// <summary>Remote read (xAPIC only).</summary>
    public const int Rrd = 0x0C0;
    /// <summary>Logical destination.</summary>
    public const int Ldr = 0x0D0;
    /// <summary>Destination format (xAPIC only).</summary>
    public const int Dfr = 0x0E0;
    /// <summary>Spurious interrupt vector.</summary>
    public const int Svr = 0x0F0;
    /// <summary>In-service register, 8 x 32 bits at 16-byte spacing.</summary>
    public const int Isr = 0x100;
    /// <summary>Trigger mode register, 8 x 32 bits.</summary>
    public const int Tmr = 0x180;
    /// <summary>Interrupt request register, 8 x 32 bits.</summary>
    public const int Irr = 0x200;
    /// <summary>Error status.</summary>
    public const int Esr = 0x280;
    /// <summary>LVT corrected machine check interrupt.</summary>
    public const int LvtCmci = 0x2F0;
    /// <summary>Interrupt command, low half.</summary>
    public const int IcrLow = 0x300;
    /// <summary>Interrupt command, high half (xAPIC destination).</summary>
    public const int IcrHigh = 0x310;
    /// <summary>LVT timer.</summary>
    public const int LvtTimer = 0x320;
    /// <summary>LVT thermal sensor.</summary>
    public const int LvtThermal = 0x330;
    /// <summary>LVT performance monitoring counters.</summary>
    public const int LvtPerformance = 0x340;
    /// <summary>LVT LINT0.</summary>
    public const int LvtLint0 = 0x350;
    /// <summary>LVT LINT1.</summary>
    public const int LvtLint1 = 0x360;
    /// <summary>LVT error.</summary>
    public const int LvtError = 0x370;
    /// <summary>Timer initial count.</summary>
    public const int TimerInitialCount = 0x380;
    /// <summary>Timer current count (read-only).</summary>
    public const int TimerCurrentCount = 0x390;
    /// <summary>Timer divide configuration.</summary>
    public const int TimerDivide = 0x3E0;
    /// <summary>Self IPI (x2APIC only, write-only).</summary>
    public const int SelfIpi = 0x3F0;

    /// <summary>IA32_APIC_BASE.</summary>
    public const uint MsrApicBase = 0x1B;
    /// <summary>IA32_TSC_DEADLINE.</summary>
    public const uint MsrTscDeadline = 0x6E0;
    /// <summary>First x2APIC MSR.</summary>
    public const uint MsrX2ApicFirst = 0x800;
    /// <summary>Last x2APIC MSR.</summary>
    public const uint MsrX2ApicLast = 0x8FF;

    /// <summary>IA32_APIC_BASE: this is the bootstrap processor.</summary>
    public const ulong BaseBsp = 1ul << 8;
    /// <summary>IA32_APIC_BASE: x2APIC mode (EXTD).</summary>
    public const ulong BaseX2Apic = 1ul << 10;
    /// <summary>IA32_APIC_BASE: APIC globally enabled (EN).</summary>
    public const ulong BaseEnable = 1ul << 11;
    /// <summary>The architectural default base address.</summary>
    public const ulong DefaultBaseAddress = 0xFEE0_0000;

    /// <summary>ESR: send illegal vector.</summary>
    public const uint EsrSendIllegalVector = 1u << 5;
    /// <summary>ESR: receive illegal vector.</summary>
    public const uint EsrReceiveIllegalVector = 1u << 6;
    /// <summary>ESR: illegal register address.</summary>
    public const uint EsrIllegalRegister = 1u << 7;

    /// <summary>True for the MSRs a local APIC answers (APIC base, TSC deadline and the x2APIC range).</summary>
    public static bool IsLapicMsr(uint msr) => msr == MsrApicBase || msr == MsrTscDeadline || (msr >= MsrX2ApicFirst && msr <= MsrX2ApicLast);
}

/// <summary>The local vector table entries, numbered as bhyve's APIC_LVT_* (and so bhyvectl's --assert-lapic-lvt).</summary>
public enum LapicLvt
{
    /// <summary>LINT0 pin (ExtINT from the 8259 on a PC).</summary>
    Lint0 = 0,
    /// <summary>LINT1 pin (NMI on a PC).</summary>
    Lint1 = 1,
    /// <summary>APIC timer.</summary>
    Timer = 2,
    /// <summary>APIC internal error.</summary>
    Error = 3,
    /// <summary>Performance monitoring counter overflow.</summary>
    Performance = 4,
    /// <summary>Thermal sensor.</summary>
    Thermal = 5,
    /// <summary>Corrected machine check.</summary>
    Cmci = 6,
}

/// <summary>Interrupt delivery modes of the ICR, LVT, IOAPIC redirection entries and MSI data.</summary>
public enum LapicDeliveryMode
{
    /// <summary>The vector to the destination(s).</summary>
    Fixed = 0,
    /// <summary>The vector to the lowest-priority processor among the destinations.</summary>
    LowestPriority = 1,
    /// <summary>System management interrupt (ignored: no SMM).</summary>
    Smi = 2,
    /// <summary>Non-maskable interrupt.</summary>
    Nmi = 4,
    /// <summary>INIT.</summary>
    Init = 5,
    /// <summary>Start-up IPI.</summary>
    Startup = 6,
    /// <summary>External interrupt: the vector comes from the 8259.</summary>
    ExtInt = 7,
}

/// <summary>ICR destination shorthands.</summary>
public enum LapicShorthand
{
    /// <summary>Use the destination field.</summary>
    None = 0,
    /// <summary>The sender only.</summary>
    Self = 1,
    /// <summary>Every local APIC including the sender.</summary>
    AllIncludingSelf = 2,
    /// <summary>Every local APIC except the sender.</summary>
    AllExcludingSelf = 3,
}

/// <summary>An interrupt message on the APIC bus (an IPI, IOAPIC redirection or MSI).</summary>
/// <param name="Destination">Destination ID: 8 bits in xAPIC format, 32 in x2APIC format.</param>
/// <param name="Logical">Logical (true) or physical destination mode.</param>
/// <param name="Mode">Delivery mode.</param>
/// <param name="Vector">Vector (fixed, lowest priority, start-up).</param>
/// <param name="LevelTriggered">Trigger mode: true for level.</param>
/// <param name="Assert">Level: false only for an INIT level de-assert, which is ignored.</param>
/// <param name="Shorthand">Destination shorthand (IPIs only).</param>
/// <param name="X2ApicFormat">True when <paramref name="Destination"/> is a 32-bit x2APIC destination (broadcast 0xFFFFFFFF rather than 0xFF).</param>
public readonly record struct LapicMessage(uint Destination, bool Logical, LapicDeliveryMode Mode, byte Vector,
    bool LevelTriggered, bool Assert, LapicShorthand Shorthand, bool X2ApicFormat);
