// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;

namespace Hyve.X86;

/// <summary>The four registers a CPUID leaf returns.</summary>
/// <param name="Eax">EAX.</param>
/// <param name="Ebx">EBX.</param>
/// <param name="Ecx">ECX.</param>
/// <param name="Edx">EDX.</param>
public readonly record struct CpuidResult(uint Eax, uint Ebx, uint Ecx, uint Edx);

/// <summary>What CPUID reports: the engine asks it for every CPUID the guest executes (must not allocate).</summary>
public interface ICpuidModel
{
    /// <summary>Returns leaf <paramref name="leaf"/> (EAX) / sub-leaf <paramref name="subleaf"/> (ECX) for the vCPU in <paramref name="cpu"/>.</summary>
    CpuidResult Query(CpuState cpu, uint leaf, uint subleaf);
}

/// <summary>Model-specific registers the VMM handles (APIC base, MTRRs, ...): consulted before <see cref="ArchitecturalMsrs"/>.</summary>
public interface IMsrHandler
{
    /// <summary>Reads MSR <paramref name="index"/>; false when this handler does not know it (or the read faults).</summary>
    bool TryRead(CpuState cpu, uint index, out ulong value);
    /// <summary>Writes MSR <paramref name="index"/>; false when this handler does not know it (or the value is invalid).</summary>
    bool TryWrite(CpuState cpu, uint index, ulong value);
}

/// <summary>Source of the time-stamp counter for RDTSC, RDTSCP and RDMSR IA32_TIME_STAMP_COUNTER.</summary>
public interface ITscSource
{
    /// <summary>The TSC value the vCPU in <paramref name="cpu"/> reads now.</summary>
    ulong ReadTsc(CpuState cpu);
}

/// <summary>
/// An invariant TSC that counts host monotonic time at <see cref="Hz"/> (1 GHz unless a restore says otherwise) from an
/// offset. A snapshot taken on KVM carries the host's TSC rate, which the guest calibrated against; restored here, the
/// TSC goes on at that rate from the saved value (<see cref="Rebase"/>), so the guest's clocks keep their speed.
/// </summary>
public sealed class HostTsc : ITscSource
{
    /// <summary>1 GHz: the rate this engine's TSC has from power-on.</summary>
    public const long DefaultHz = 1_000_000_000;
    private static readonly double NsPerTick = 1e9 / Stopwatch.Frequency;

    /// <summary>Added to the scaled host time (as a VMCS TSC offset is).</summary>
    public long Offset { get; set; }

    /// <summary>Ticks per second.</summary>
    public long Hz { get; private set; } = DefaultHz;

    /// <summary>The default source.</summary>
    public static HostTsc Shared { get; } = new();

    /// <summary>Host monotonic time in nanoseconds.</summary>
    public static long HostNs => (long)(Stopwatch.GetTimestamp() * NsPerTick);

    /// <summary>The TSC at host time <paramref name="hostNs"/> for a rate and an offset.</summary>
    public static ulong Value(long hostNs, long hz, long offset) =>
        (ulong)((hz == DefaultHz ? hostNs : (long)((Int128)hostNs * hz / DefaultHz)) + offset);

    /// <summary>The offset that makes the TSC read <paramref name="tsc"/> at host time <paramref name="hostNs"/> at rate <paramref name="hz"/>.</summary>
    public static long OffsetFor(ulong tsc, long hz, long hostNs) => (long)tsc - (long)Value(hostNs, hz, 0);

    /// <summary>Continues from <paramref name="tsc"/> now, counting at <paramref name="hz"/> from here on.</summary>
    public void Rebase(ulong tsc, long hz)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(hz, 1_000_000);
        Hz = hz;
        Offset = OffsetFor(tsc, hz, HostNs);
    }

    /// <inheritdoc />
    public ulong ReadTsc(CpuState cpu) => Value(HostNs, Hz, Offset);
}

/// <summary>
/// A minimal CPUID: GenuineIntel, family 6, with the features the engine and <see cref="CpuState"/> model
/// (FPU, TSC, MSR, PAE, CX8, APIC, SEP, PGE, CMOV, PAT, MMX, FXSR, SSE/SSE2, long mode, NX, SYSCALL). Leaves above the
/// maxima return zeros.
/// </summary>
public sealed class MinimalCpuidModel : ICpuidModel
{
    /// <summary>Initial APIC ID reported in leaf 1 EBX[31:24].</summary>
    public byte ApicId { get; set; }
    /// <summary>Physical-address width reported in leaf 0x80000008.</summary>
    public int PhysAddrBits { get; set; } = 48;

    /// <summary>The default model (APIC ID 0).</summary>
    public static MinimalCpuidModel Shared { get; } = new();

    // "GenuineIntel" as EBX, EDX, ECX.
    private const uint VendorEbx = 0x756e6547, VendorEdx = 0x49656e69, VendorEcx = 0x6c65746e;

    /// <inheritdoc />
    public CpuidResult Query(CpuState cpu, uint leaf, uint subleaf)
    {
        switch (leaf)
        {
            case 0: return new CpuidResult(1, VendorEbx, VendorEcx, VendorEdx);
            case 1:
            {
                const uint edx = 1u << 0 | 1u << 3 | 1u << 4 | 1u << 5 | 1u << 6 | 1u << 8 | 1u << 9 | 1u << 11 | 1u << 13
                    | 1u << 15 | 1u << 16 | 1u << 19 | 1u << 23 /* MMX */ | 1u << 24 | 1u << 25 | 1u << 26;
                const uint ecx = 1u << 23; // POPCNT
                uint ebx = (uint)ApicId << 24 | 1u << 16 | 8u << 8; // one logical processor, CLFLUSH line 64 bytes
                bool osxsave = (cpu.Cr4 & (1ul << 18)) != 0;
                return new CpuidResult(0x000306a9, ebx, ecx | (osxsave ? 1u << 27 : 0), edx);
            }
            case 0x80000000: return new CpuidResult(0x80000008, 0, 0, 0);
            case 0x80000001: return new CpuidResult(0, 0, 1u << 0 /* LAHF/SAHF in 64-bit */, 1u << 11 | 1u << 20 | 1u << 29);
            case 0x80000008: return new CpuidResult((uint)(48 << 8 | PhysAddrBits), 0, 0, 0);
            default: return default;
        }
    }
}

/// <summary>
/// The MSRs whose state lives in <see cref="CpuState"/>: EFER, STAR, LSTAR, CSTAR, SFMASK, FS/GS base, KERNEL_GS_BASE,
/// TSC_AUX, SYSENTER_CS/ESP/EIP and PAT, with the SDM's #GP conditions (false = #GP(0)).
/// </summary>
public sealed class ArchitecturalMsrs : IMsrHandler
{
    /// <summary>IA32_TIME_STAMP_COUNTER.</summary>
    public const uint Tsc = 0x10;
    /// <summary>IA32_SYSENTER_CS.</summary>
    public const uint SysenterCs = 0x174;
    /// <summary>IA32_SYSENTER_ESP.</summary>
    public const uint SysenterEsp = 0x175;
    /// <summary>IA32_SYSENTER_EIP.</summary>
    public const uint SysenterEip = 0x176;
    /// <summary>IA32_PAT.</summary>
    public const uint Pat = 0x277;
    /// <summary>IA32_EFER.</summary>
    public const uint Efer = 0xc0000080;
    /// <summary>IA32_STAR.</summary>
    public const uint Star = 0xc0000081;
    /// <summary>IA32_LSTAR.</summary>
    public const uint Lstar = 0xc0000082;
    /// <summary>IA32_CSTAR.</summary>
    public const uint Cstar = 0xc0000083;
    /// <summary>IA32_FMASK.</summary>
    public const uint Sfmask = 0xc0000084;
    /// <summary>IA32_FS_BASE.</summary>
    public const uint FsBase = 0xc0000100;
    /// <summary>IA32_GS_BASE.</summary>
    public const uint GsBase = 0xc0000101;
    /// <summary>IA32_KERNEL_GS_BASE.</summary>
    public const uint KernelGsBase = 0xc0000102;
    /// <summary>IA32_TSC_AUX.</summary>
    public const uint TscAux = 0xc0000103;

    /// <summary>The EFER bits a guest may write (SCE, LME, NXE); LMA is read-only.</summary>
    public const ulong EferWritable = CpuState.EferSce | CpuState.EferLme | CpuState.EferNxe;

    /// <summary>The shared instance.</summary>
    public static ArchitecturalMsrs Shared { get; } = new();

    /// <inheritdoc />
    public bool TryRead(CpuState cpu, uint index, out ulong value)
    {
        switch (index)
        {
            case SysenterCs: value = cpu.SysenterCs; return true;
            case SysenterEsp: value = cpu.SysenterEsp; return true;
            case SysenterEip: value = cpu.SysenterEip; return true;
            case Pat: value = cpu.Pat; return true;
            case Efer: value = cpu.Efer; return true;
            case Star: value = cpu.Star; return true;
            case Lstar: value = cpu.Lstar; return true;
            case Cstar: value = cpu.Cstar; return true;
            case Sfmask: value = cpu.Sfmask; return true;
            case FsBase: value = cpu.Segs[(int)Seg.Fs].Descriptor.Base; return true;
            case GsBase: value = cpu.Segs[(int)Seg.Gs].Descriptor.Base; return true;
            case KernelGsBase: value = cpu.KernelGsBase; return true;
            case TscAux: value = cpu.TscAux; return true;
            default: value = 0; return false;
        }
    }

    /// <inheritdoc />
    public bool TryWrite(CpuState cpu, uint index, ulong value)
    {
        // Address-holding MSRs take canonical values only (SDM Vol. 4: #GP on a non-canonical write).
        bool canonical = (ulong)((long)value << 16 >> 16) == value;
        switch (index)
        {
            case SysenterCs: cpu.SysenterCs = value & 0xffff; return true;
            case SysenterEsp: if (!canonical) return false; cpu.SysenterEsp = value; return true;
            case SysenterEip: if (!canonical) return false; cpu.SysenterEip = value; return true;
            case Pat:
                for (int i = 0; i < 8; i++)
                {
                    // Memory types 2 and 3 and everything above 7 are reserved.
                    ulong t = (value >> (8 * i)) & 0xff;
                    if (t is 2 or 3 || t > 7) return false;
                }
                cpu.Pat = value;
                return true;
            case Efer:
            {
                if ((value & ~(EferWritable | CpuState.EferLma)) != 0) return false;
                // LME cannot change while paging is on (SDM Vol. 3 10.8.5).
                if ((cpu.Cr0 & CpuState.Cr0Pg) != 0 && ((value ^ cpu.Efer) & CpuState.EferLme) != 0) return false;
                cpu.Efer = (value & EferWritable) | (cpu.Efer & CpuState.EferLma);
                return true;
            }
            case Star: cpu.Star = value; return true;
            case Lstar: if (!canonical) return false; cpu.Lstar = value; return true;
            case Cstar: if (!canonical) return false; cpu.Cstar = value; return true;
            case Sfmask: cpu.Sfmask = value & 0xffffffff; return true;
            case FsBase: case GsBase:
            {
                if (!canonical) return false;
                ref var s = ref cpu.Segs[index == FsBase ? (int)Seg.Fs : (int)Seg.Gs];
                s.Descriptor = s.Descriptor with { Base = value };
                return true;
            }
            case KernelGsBase: if (!canonical) return false; cpu.KernelGsBase = value; return true;
            case TscAux: if ((value >> 32) != 0) return false; cpu.TscAux = value; return true;
            default: return false;
        }
    }
}
