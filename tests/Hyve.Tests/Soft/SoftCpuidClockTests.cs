// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Soft;
using Hyve.Vmm.Control;
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.Soft;

/// <summary>The software CPU reports its clocks in CPUID as the SDM defines the leaves (Vol. 2A, CPUID leaves 15H, 16H
/// and 80000007H), so Linux takes the TSC frequency and the APIC timer period as known instead of calibrating them.</summary>
public class SoftCpuidClockTests
{
    private static readonly CpuTopology One = new(1, 1, 1, 1);

    [Fact]
    public void IntelReportsTheTscCrystalRatioAndFrequencies()
    {
        var cpuid = new SoftCpuid(One, 0);
        var cpu = new CpuState();
        Assert.True(cpuid.Query(cpu, 0, 0).Eax >= 0x16);
        var l15 = cpuid.Query(cpu, 0x15, 0);
        Assert.Equal(1_000_000_000u, l15.Ecx);          // crystal = the APIC timer's 1 GHz input
        Assert.Equal(1_000_000_000L, (long)l15.Ecx * l15.Ebx / l15.Eax); // TSC = crystal * EBX / EAX
        var l16 = cpuid.Query(cpu, 0x16, 0);
        Assert.Equal((1000u, 1000u, 1000u), (l16.Eax, l16.Ebx, l16.Ecx)); // base, max and bus MHz
        Assert.Equal(1u << 8, cpuid.Query(cpu, 0x80000007, 0).Edx & (1u << 8)); // invariant TSC
        // Leaves between the topology leaf and 0x15 are zeros, as reserved leaves read on Intel.
        Assert.Equal(default, cpuid.Query(cpu, 0x12, 0));
    }

    [Fact]
    public void TheRatioFollowsATscRateFromAnotherHost()
    {
        var cpuid = new SoftCpuid(One, 0) { TscHz = () => 2_899_999_000 };
        var l15 = cpuid.Query(new CpuState(), 0x15, 0);
        Assert.Equal(2_899_999_000L, (long)l15.Ecx * l15.Ebx / l15.Eax);
        Assert.Equal(0L, (long)l15.Ecx * l15.Ebx % l15.Eax);
        Assert.Equal(2899u, cpuid.Query(new CpuState(), 0x16, 0).Eax);
    }

    [Fact]
    public void AmdHasNoIntelClockLeavesButTheInvariantTsc()
    {
        var cpuid = new SoftCpuid(One, 0, CpuModel.Named("x86-64", CpuVendor.Amd));
        var cpu = new CpuState();
        Assert.Equal(0xbu, cpuid.Query(cpu, 0, 0).Eax);
        Assert.Equal(default, cpuid.Query(cpu, 0x15, 0));
        Assert.Equal(default, cpuid.Query(cpu, 0x16, 0));
        Assert.Equal(1u << 8, cpuid.Query(cpu, 0x80000007, 0).Edx);
    }
}
