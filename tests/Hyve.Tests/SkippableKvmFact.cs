// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Kvm;
using Xunit;

namespace Hyve.Tests;

/// <summary>A fact that needs /dev/kvm: skipped with the reason when KVM cannot be opened.</summary>
public sealed class SkippableKvmFactAttribute : FactAttribute
{
    public SkippableKvmFactAttribute()
    {
        if (!KvmSystem.IsAvailable(out var reason)) Skip = $"KVM unavailable: {reason}";
    }
}
