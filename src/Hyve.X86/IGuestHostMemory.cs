// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.X86;

/// <summary>
/// Guest-physical memory whose RAM and ROM pages live in native host memory that never moves, so a software TLB may
/// cache host addresses of whole pages (the software CPU's fast path). Implementations bump <see cref="Version"/> whenever
/// the guest-physical map changes, which makes every cached host address stale.
/// </summary>
public unsafe interface IGuestHostMemory : IGuestPhysicalMemory
{
    /// <summary>
    /// Host address of the 4 KiB guest-physical page that holds <paramref name="gpa"/> when the whole page is RAM or ROM
    /// (and not claimed by MMIO); null otherwise. <paramref name="writable"/> is false for read-only memory (writes there go
    /// through <see cref="IGuestPhysicalMemory.TryWriteMmio"/>).
    /// </summary>
    byte* HostPage(ulong gpa, out bool writable);

    /// <summary>The guest-physical map's version counter (read on the hot path without a call).</summary>
    MapVersion Version { get; }
}

/// <summary>A counter bumped on every guest-physical map change; software TLBs compare it to drop cached host addresses.</summary>
public sealed class MapVersion
{
    /// <summary>The current version; read with <see cref="Volatile"/> semantics by readers on other threads.</summary>
    public int Value;

    /// <summary>Marks every cached host address stale.</summary>
    public void Bump() => Interlocked.Increment(ref Value);
}
