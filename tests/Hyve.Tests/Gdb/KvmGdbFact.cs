// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Kvm;
using Xunit;

namespace Hyve.Tests.Gdb;

/// <summary>A fact that needs /dev/kvm and Debian's gdb: skipped with the reason when either is missing.</summary>
public sealed class KvmGdbFactAttribute : FactAttribute
{
    public KvmGdbFactAttribute()
    {
        if (!KvmSystem.IsAvailable(out var reason)) Skip = $"KVM unavailable: {reason}";
        else if (!File.Exists("/usr/bin/gdb")) Skip = "gdb is not installed (/usr/bin/gdb)";
    }
}

/// <summary>A fact that needs KVM with hardware virtualization (this host's kvm-pvm lacks debug features the test
/// uses, named by the constructor argument), and gdb.</summary>
public sealed class KvmHardwareDebugFactAttribute : FactAttribute
{
    public KvmHardwareDebugFactAttribute(string whatKvmPvmLacks)
    {
        if (!KvmSystem.IsAvailable(out var reason)) Skip = $"KVM unavailable: {reason}";
        else if (!File.Exists("/usr/bin/gdb")) Skip = "gdb is not installed (/usr/bin/gdb)";
        else if (!KvmSystem.HostHasHardwareVirtualization())
            Skip = $"this host's KVM runs without VT-x/AMD-V (kvm-pvm): {whatKvmPvmLacks}; the software-CPU test covers it";
    }
}

/// <summary>A fact that needs Debian's gdb (the software CPU runs everywhere).</summary>
public sealed class GdbFactAttribute : FactAttribute
{
    public GdbFactAttribute()
    {
        if (!File.Exists("/usr/bin/gdb")) Skip = "gdb is not installed (/usr/bin/gdb)";
    }
}
