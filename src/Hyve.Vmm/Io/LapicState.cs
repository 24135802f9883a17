// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;

namespace Hyve.Vmm.Io;

/// <summary>
/// KVM's <c>struct kvm_lapic_state</c>: the first 1 KiB of the APIC register page, each 32-bit register little-endian at
/// its xAPIC offset (see <see cref="LapicRegisters"/>). The KVM backend passes <see cref="Bytes"/> to KVM_GET/SET_LAPIC;
/// <see cref="Vlapic.ToKvmState"/> and <see cref="Vlapic.FromKvmState"/> convert to and from the software model.
/// </summary>
public sealed class LapicState
{
    /// <summary>Size of the structure (KVM_APIC_REG_SIZE).</summary>
    public const int Size = 1024;

    /// <summary>The raw page.</summary>
    public byte[] Bytes { get; } = new byte[Size];

    /// <summary>The register at <paramref name="offset"/> (16-byte aligned, below 1 KiB).</summary>
    public uint this[int offset]
    {
        get => BinaryPrimitives.ReadUInt32LittleEndian(Bytes.AsSpan(Check(offset)));
        set => BinaryPrimitives.WriteUInt32LittleEndian(Bytes.AsSpan(Check(offset)), value);
    }

    /// <summary>Tests a vector's bit in a 256-bit register (<see cref="LapicRegisters.Isr"/>, <see cref="LapicRegisters.Tmr"/>, <see cref="LapicRegisters.Irr"/>).</summary>
    public bool TestVector(int registerBase, int vector) =>
        (uint)vector <= 255 && (this[registerBase + (vector >> 5) * 16] & (1u << (vector & 31))) != 0;

    private static int Check(int offset)
    {
        if (offset < 0 || offset > Size - 4 || (offset & 0xF) != 0) throw new ArgumentOutOfRangeException(nameof(offset));
        return offset;
    }
}

/// <summary>A saveable copy of a local APIC, the same for both backends: IA32_APIC_BASE, IA32_TSC_DEADLINE and the KVM-layout page.</summary>
public sealed class VlapicState
{
    /// <summary>The layout version this code writes and accepts.</summary>
    public const int CurrentVersion = 1;
    /// <summary>Layout version.</summary>
    public int Version { get; set; } = CurrentVersion;
    /// <summary>IA32_APIC_BASE (mode bits say how to read the page).</summary>
    public ulong ApicBase { get; set; }
    /// <summary>IA32_TSC_DEADLINE (0 when disarmed or not in TSC-deadline mode).</summary>
    public ulong TscDeadline { get; set; }
    /// <summary>The register page in <c>struct kvm_lapic_state</c> layout.</summary>
    public byte[] Page { get; set; } = new byte[LapicState.Size];
}
