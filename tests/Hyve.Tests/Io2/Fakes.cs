// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;

namespace Hyve.Tests.Io2;

/// <summary>Records every interrupt-line operation and keeps the level of each line.</summary>
internal sealed class RecordingIrqLines : IIrqLines
{
    public readonly List<string> Events = [];
    public readonly int[] IsaLevel = new int[16];
    public readonly int[] PinLevel = new int[64];
    public readonly List<(ulong Address, ulong Data)> Msis = [];
    public int IsaAsserts(int irq) => Events.Count(e => e == $"isa+{irq}");
    public int PinPulses(int pin) => Events.Count(e => e == $"pin~{pin}");
    public int PinAsserts(int pin) => Events.Count(e => e == $"pin+{pin}");
    public Action<int>? OnIsaAssert;

    public void IsaAssert(int irq) { Events.Add($"isa+{irq}"); IsaLevel[irq]++; OnIsaAssert?.Invoke(irq); }
    public void IsaDeassert(int irq) { Events.Add($"isa-{irq}"); IsaLevel[irq]--; }
    public void PicAssert(int irq) => Events.Add($"pic+{irq}");
    public void PicDeassert(int irq) => Events.Add($"pic-{irq}");
    public void IsaPulse(int irq) => Events.Add($"isa~{irq}");
    public void IoapicAssert(int pin) { Events.Add($"pin+{pin}"); PinLevel[pin]++; }
    public void IoapicDeassert(int pin) { Events.Add($"pin-{pin}"); PinLevel[pin]--; }
    public void IoapicPulse(int pin) => Events.Add($"pin~{pin}");
    public void Msi(ulong address, ulong data) { Events.Add("msi"); Msis.Add((address, data)); }
}

/// <summary>Records the signals a local APIC raises towards its vCPU.</summary>
internal sealed class RecordingCpu : ILapicCpu
{
    public int Pending, Nmis, ExtInts, Inits;
    public readonly List<int> Sipis = [];
    public void InterruptPending() => Pending++;
    public void Nmi() => Nmis++;
    public void ExtInt() => ExtInts++;
    public void Init() => Inits++;
    public void Startup(int vector) => Sipis.Add(vector);
}
