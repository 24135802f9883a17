// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm.Io;

/// <summary>
/// What a <see cref="Vlapic"/> sends outward: IPIs to other local APICs and level-triggered EOIs to the IOAPIC(s).
/// A Vlapic calls these without holding its own lock, so an implementation may call back into any Vlapic.
/// </summary>
public interface ILapicBus
{
    /// <summary>Delivers an IPI written to <paramref name="source"/>'s ICR (or self-IPI register).</summary>
    void SendIpi(Vlapic source, in LapicMessage message);

    /// <summary>Tells the IOAPIC(s) that <paramref name="source"/> ended a level-triggered interrupt with <paramref name="vector"/>.</summary>
    void LevelEoi(Vlapic source, int vector);
}

/// <summary>
/// The vCPU side of a local APIC: signals it raises towards the processor. They may be called while the Vlapic holds its
/// lock, from the vCPU's own thread or a timer thread, so implementations only record the event and kick the vCPU.
/// </summary>
public interface ILapicCpu
{
    /// <summary>A fixed interrupt became pending (wake the vCPU from HLT, request an interrupt window).</summary>
    void InterruptPending();

    /// <summary>An NMI arrived (ICR, LINT1 or an NMI message).</summary>
    void Nmi();

    /// <summary>LINT0 in ExtINT mode was asserted: take the vector from the 8259.</summary>
    void ExtInt();

    /// <summary>An INIT arrived; the Vlapic has already reset itself to its INIT state, the CPU resets its own state.</summary>
    void Init();

    /// <summary>A start-up IPI arrived with <paramref name="vector"/> (the CPU starts at vector * 0x1000 if waiting for SIPI).</summary>
    void Startup(int vector);
}

/// <summary>
/// The APIC bus of one VM for the software CPU: resolves IPIs, IOAPIC redirections and MSIs to the registered local APICs
/// (physical, logical flat and cluster, x2APIC cluster, broadcast, shorthands, lowest priority) and forwards level EOIs.
/// </summary>
public sealed class LapicBus : ILapicBus
{
    private Vlapic[] _lapics = [];
    private readonly Lock _lock = new();

    /// <summary>Called with the vector on a level-triggered EOI (the IOAPIC's EOI handling); may be null.</summary>
    public Action<int>? EoiHandler { get; set; }

    /// <summary>The registered local APICs in vCPU order.</summary>
    public ReadOnlySpan<Vlapic> Lapics => Volatile.Read(ref _lapics);

    /// <summary>Registers a local APIC (at VM creation; the array is copied so delivery never locks).</summary>
    public void Add(Vlapic lapic)
    {
        lock (_lock)
        {
            var next = new Vlapic[_lapics.Length + 1];
            _lapics.CopyTo(next, 0);
            next[^1] = lapic;
            Volatile.Write(ref _lapics, next);
        }
    }

    /// <inheritdoc/>
    public void SendIpi(Vlapic source, in LapicMessage message) => Deliver(message, source);

    /// <inheritdoc/>
    public void LevelEoi(Vlapic source, int vector) => EoiHandler?.Invoke(vector);

    /// <summary>Delivers an interrupt from the IOAPIC (a redirection entry's fields).</summary>
    public void DeliverInterrupt(uint destination, bool logical, LapicDeliveryMode mode, int vector, bool levelTriggered)
        => Deliver(new LapicMessage(destination, logical, mode, (byte)vector, levelTriggered, true, LapicShorthand.None, destination > 0xFF), null);

    /// <summary>Delivers an MSI in Intel's format: address 0xFEEx_xxxx with destination in bits 19:12 (extended ID in 11:5),
    /// DM in bit 2; data with vector, delivery mode, level and trigger. Other addresses are dropped.</summary>
    public void DeliverMsi(ulong address, ulong data)
    {
        if ((address >> 20) != 0xFEE) return;
        uint dest = (uint)((address >> 12) & 0xFF) | (uint)(((address >> 5) & 0x7F) << 8);
        bool logical = (address & 4) != 0;
        var mode = (LapicDeliveryMode)((data >> 8) & 7);
        bool level = (data & (1ul << 15)) != 0;
        bool assert = (data & (1ul << 14)) != 0 || !level;
        Deliver(new LapicMessage(dest, logical, mode, (byte)data, level, assert, LapicShorthand.None, dest > 0xFF), null);
    }

    /// <summary>Delivers a message; <paramref name="source"/> is the sending local APIC for shorthands (null for devices).</summary>
    public void Deliver(in LapicMessage m, Vlapic? source)
    {
        var lapics = Volatile.Read(ref _lapics);
        if (m.Mode == LapicDeliveryMode.LowestPriority)
        {
            Vlapic? best = null;
            int bestPrio = int.MaxValue;
            foreach (var l in lapics)
            {
                if (!Targets(l, m, source) || !l.SoftwareEnabled) continue;
                // The focus processor (already servicing or holding the vector) wins; otherwise the lowest priority.
                if (l.IsFocusFor(m.Vector)) { best = l; break; }
                int p = l.ArbitrationPriority;
                if (p < bestPrio) { bestPrio = p; best = l; }
            }
            best?.Receive(m);
            return;
        }
        foreach (var l in lapics)
            if (Targets(l, m, source)) l.Receive(m);
    }

    private static bool Targets(Vlapic l, in LapicMessage m, Vlapic? source) => m.Shorthand switch
    {
        LapicShorthand.Self => ReferenceEquals(l, source),
        LapicShorthand.AllIncludingSelf => true,
        LapicShorthand.AllExcludingSelf => !ReferenceEquals(l, source),
        _ => l.MatchesDestination(m.Destination, m.Logical, m.X2ApicFormat),
    };
}
