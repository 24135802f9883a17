// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;

namespace Hyve.Soft;

/// <summary>
/// The software CPU engine for one VM incarnation: one <see cref="SoftVcpu"/> (an instruction engine, a
/// <see cref="Hyve.X86.CpuState"/> and a <see cref="Vlapic"/>) per vCPU, all local APICs on one <see cref="LapicBus"/>
/// that also carries the IOAPIC's, HPET's and PCI devices' MSIs. A guest reset disposes it and creates a fresh one.
/// </summary>
/// <remarks>Use: <c>vm.Run(v =&gt; new SoftBackend(v))</c>.</remarks>
public sealed class SoftBackend : ICpuBackend
{
    private readonly SoftVcpu[] _vcpus;

    /// <summary>Creates the vCPUs of <paramref name="vm"/> in their power-on state.</summary>
    public SoftBackend(Vm vm)
    {
        Vm = vm;
        Bus = new LapicBus { EoiHandler = vm.Ioapic.EndOfInterrupt };
        // Every local APIC exists before any vCPU runs, so an early IPI or MSI finds its target.
        _vcpus = new SoftVcpu[vm.CpuCount];
        for (int i = 0; i < _vcpus.Length; i++) _vcpus[i] = new SoftVcpu(this, i);
    }

    /// <inheritdoc/>
    public string Name => "soft";

    /// <summary>The VM this backend runs.</summary>
    public Vm Vm { get; }

    /// <summary>The APIC bus joining the local APICs.</summary>
    public LapicBus Bus { get; }

    /// <inheritdoc/>
    public IVcpuBackend CreateVcpu(int id)
    {
        if ((uint)id >= (uint)_vcpus.Length) throw new ArgumentException($"vcpu {id} does not exist");
        return _vcpus[id];
    }

    /// <summary>Delivers an MSI to the local APICs (Intel's 0xFEEx_xxxx format).</summary>
    public void DeliverMsi(ulong address, ulong data) => Bus.DeliverMsi(address, data);

    /// <summary>Stops the local APIC timers.</summary>
    public void Dispose()
    {
        foreach (var v in _vcpus) v.Dispose();
    }
}
