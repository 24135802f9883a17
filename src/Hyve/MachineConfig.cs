// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Control;

namespace Hyve;

/// <summary>The machine as the config tree describes it, checked and typed.</summary>
public sealed record MachineConfig
{
    /// <summary>VM name.</summary>
    public required string Name { get; init; }
    /// <summary>Guest memory in bytes.</summary>
    public ulong MemorySize { get; init; } = 256ul << 20;
    /// <summary>CPU topology.</summary>
    public CpuTopology Topology { get; init; } = new(1, 1, 1, 1);
    /// <summary>Boot ROM path, if any.</summary>
    public string? BootRom { get; init; }
    /// <summary>Boot ROM variable store path, if any.</summary>
    public string? BootVars { get; init; }
    /// <summary>Serial ports: index 0-3 (COM1-COM4) to backend path ("stdio", a file or a socket).</summary>
    public string?[] ComPaths { get; init; } = new string?[4];
    /// <summary>exit_on_reboot: a guest reset ends hyve with status 0 instead of restarting.</summary>
    public bool ExitOnReboot { get; init; }
    /// <summary>x86.strictmsr.</summary>
    public bool StrictMsr { get; init; } = true;
    /// <summary>memory.guest_in_core (-C).</summary>
    public bool GuestInCore { get; init; }
    /// <summary>vCPU pinning (-p).</summary>
    public Dictionary<int, int[]> Pinning { get; init; } = [];
    /// <summary>accel: kvm, soft or auto.</summary>
    public string Accel { get; init; } = "auto";
}
