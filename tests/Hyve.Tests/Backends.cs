// SPDX-License-Identifier: BSD-2-Clause
using System.Reflection;
using Hyve.Kvm;
using Hyve.Soft;
using Hyve.Vmm;
using Xunit.Sdk;

namespace Hyve.Tests;

/// <summary>
/// The CPU engines every guest-running test runs on: one parameterized suite, <c>[Theory, KvmData, SoftData]</c> with
/// a <c>string accel</c> parameter ("kvm" or "soft") that the test passes on as <c>-o accel=</c> to ./hyve or to
/// <see cref="Create"/> in process. The KVM row skips with the reason when /dev/kvm cannot be opened; either row may
/// also be skipped for one test with <c>Skip = "why"</c> (a host limitation named precisely).
/// </summary>
public static class Backends
{
    /// <summary>The CPU engine named by <paramref name="accel"/> for an in-process <see cref="Vm.Run"/>.</summary>
    public static ICpuBackend Create(string accel, Vm vm) => accel switch
    {
        "kvm" => new KvmBackend(vm),
        "soft" => new SoftBackend(vm),
        _ => throw new ArgumentException($"unknown accel {accel}"),
    };

    /// <summary>The ./hyve arguments choosing <paramref name="accel"/> followed by <paramref name="args"/>.</summary>
    public static string[] Args(string accel, params string[] args) => ["-o", $"accel={accel}", .. args];
}

/// <summary>The theory row accel = "kvm", skipped with the reason when KVM cannot be opened.</summary>
public sealed class KvmDataAttribute : DataAttribute
{
    /// <summary>The row ("kvm").</summary>
    public KvmDataAttribute()
    {
        if (!KvmSystem.IsAvailable(out var reason)) Skip = $"KVM unavailable: {reason}";
    }

    /// <summary>Skips the row with this reason on a kvm-pvm host only (<see cref="KvmPvm"/>): a limitation of that KVM,
    /// not of Hyve, so the row still runs where KVM has hardware virtualization.</summary>
    public string? SkipOnKvmPvm
    {
        get => KvmPvm.IsHost ? Skip : null;
        set { if (Skip is null && KvmPvm.IsHost) Skip = value; }
    }

    /// <summary>Skips the row with this reason where KVM has hardware virtualization: for behaviour that only kvm-pvm's
    /// instruction emulator shows (an instruction it cannot emulate reaching hyve's fallback).</summary>
    public string? SkipUnlessKvmPvm
    {
        get => KvmPvm.IsHost ? null : Skip;
        set { if (Skip is null && !KvmPvm.IsHost) Skip = value; }
    }

    /// <inheritdoc/>
    public override IEnumerable<object[]> GetData(MethodInfo testMethod) => [["kvm"]];
}

/// <summary>The theory row accel = "soft": the software CPU, available everywhere.</summary>
public sealed class SoftDataAttribute : DataAttribute
{
    /// <inheritdoc/>
    public override IEnumerable<object[]> GetData(MethodInfo testMethod) => [["soft"]];
}

/// <summary>
/// Skip reasons for KVM rows that this kind of host cannot run: kvm-pvm (KVM without VT-x/AMD-V, guests run through
/// the kernel's instruction emulator). On a host with hardware virtualization these rows run.
/// </summary>
public static class KvmPvm
{
    /// <summary>True when /dev/kvm is there but the CPU shows neither VT-x (vmx) nor AMD-V (svm).</summary>
    public static bool IsHost { get; } = !KvmSystem.HostHasHardwareVirtualization();

    /// <summary>KVM's emulator delivers real-mode interrupts without checking the IVT against IDTR.limit.</summary>
    public const string RealModeIvtLimit =
        "kvm-pvm: KVM's instruction emulator delivers real-mode interrupts without checking IDTR.limit (emulate_int_real: \"TODO: Add limit checks\")";
}
