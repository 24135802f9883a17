// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Kvm;
using Xunit;

namespace Hyve.Tests;

/// <summary>A fact that needs /dev/kvm: skipped with the reason when KVM cannot be opened. For KVM-only tests (the KVM API,
/// its CPUID); a test that runs a guest runs on every engine instead: <c>[Theory, KvmData, SoftData]</c> (Backends.cs).</summary>
public sealed class SkippableKvmFactAttribute : FactAttribute
{
    public SkippableKvmFactAttribute()
    {
        if (!KvmSystem.IsAvailable(out var reason)) Skip = $"KVM unavailable: {reason}";
    }
}
