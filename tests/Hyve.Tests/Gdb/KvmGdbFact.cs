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
