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

/// <summary>The local APIC's task-priority register as CR8 reaches it (SDM Vol. 3 11.8.6: CR8[3:0] is TPR[7:4]).</summary>
public interface ITaskPriorityRegister
{
    /// <summary>The TPR (bits 7:0); setting it re-evaluates the processor priority and any interrupt it now lets through.</summary>
    uint TaskPriority { get; set; }
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
/// The CPUID of a <see cref="CpuModel"/> for one processor: vendor and signature (leaves 0, 1, 0x80000001), the model's
/// feature words (leaves 1, 7.0, 0x80000001), the bits that follow the guest's control registers (OSXSAVE, OSPKE), a
/// brand string, and the address widths (0x80000008). Leaves above the maxima return zeros. With the default model
/// this is GenuineIntel family 6 with the x86-64 baseline, as the engine has always reported.
/// </summary>
public sealed class MinimalCpuidModel : ICpuidModel
{
    /// <summary>Initial APIC ID reported in leaf 1 EBX[31:24].</summary>
    public byte ApicId { get; set; }
    /// <summary>Physical-address width reported in leaf 0x80000008.</summary>
    public int PhysAddrBits { get; set; } = 48;

    /// <summary>The CPU model whose features and vendor are reported.</summary>
    public CpuModel Model { get; set; } = CpuModel.Default;

    /// <summary>The default model (APIC ID 0).</summary>
    public static MinimalCpuidModel Shared { get; } = new();

    /// <summary>The highest basic leaf this model has content for (7 when it reports any leaf-7 feature, else 1).</summary>
    public uint MaxBasicLeaf => (Model.Word(CpuidWord.Leaf7Ebx) | Model.Word(CpuidWord.Leaf7Ecx) | Model.Word(CpuidWord.Leaf7Edx)) != 0 ? 7u : 1u;

    /// <summary>Leaf 0's vendor registers (EBX, ECX, EDX) for <paramref name="vendor"/>.</summary>
    public static (uint Ebx, uint Ecx, uint Edx) VendorRegisters(CpuVendor vendor) => vendor == CpuVendor.Amd
        ? (0x68747541u, 0x444d4163u, 0x69746e65u)   // "AuthenticAMD"
        : (0x756e6547u, 0x6c65746eu, 0x49656e69u);  // "GenuineIntel"

    // AMD repeats these leaf-1 EDX bits in 0x80000001 EDX (APM Vol. 3 E.4.2: FPU..APIC, MTRR..PSE36, MMX, FXSR).
    private const uint AmdMirroredEdx = 0x0183f3ff;

    /// <inheritdoc />
    public CpuidResult Query(CpuState cpu, uint leaf, uint subleaf)
    {
        var m = Model;
        switch (leaf)
        {
            case 0:
            {
                var (b, c, d) = VendorRegisters(m.Vendor);
                return new CpuidResult(MaxBasicLeaf, b, c, d);
            }
            case 1:
            {
                uint ebx = (uint)ApicId << 24 | 1u << 16 | 8u << 8; // one logical processor, CLFLUSH line 64 bytes
                bool osxsave = (cpu.Cr4 & (1ul << 18)) != 0;
                return new CpuidResult(m.Signature, ebx, m.Word(CpuidWord.Leaf1Ecx) | (osxsave ? 1u << 27 : 0), m.Word(CpuidWord.Leaf1Edx));
            }
            case 7 when MaxBasicLeaf >= 7:
            {
                if (subleaf != 0) return default;
                bool ospke = (cpu.Cr4 & CpuState.Cr4Pke) != 0;
                return new CpuidResult(0, m.Word(CpuidWord.Leaf7Ebx), m.Word(CpuidWord.Leaf7Ecx) | (ospke ? 1u << 4 : 0), m.Word(CpuidWord.Leaf7Edx));
            }
            case 0x80000000:
            {
                // AMD repeats the vendor here; Intel returns zeros in EBX..EDX.
                var (b, c, d) = m.Vendor == CpuVendor.Amd ? VendorRegisters(m.Vendor) : default;
                return new CpuidResult(0x80000008, b, c, d);
            }
            case 0x80000001:
            {
                uint edx = m.Word(CpuidWord.Ext1Edx);
                if (m.Vendor == CpuVendor.Amd) edx |= m.Word(CpuidWord.Leaf1Edx) & AmdMirroredEdx;
                return new CpuidResult(m.Vendor == CpuVendor.Amd ? m.Signature : 0, 0, m.Word(CpuidWord.Ext1Ecx), edx);
            }
            case 0x80000002: case 0x80000003: case 0x80000004:
                return Brand((int)(leaf - 0x80000002));
            case 0x80000008: return new CpuidResult((uint)((m.Has("la57") ? 57 : 48) << 8 | PhysAddrBits), 0, 0, 0);
            default: return default;
        }
    }

    // "Hyve x86-64 CPU", NUL-padded to 48 bytes, 16 bytes a leaf.
    private static CpuidResult Brand(int part)
    {
        ReadOnlySpan<byte> name = "Hyve x86-64 CPU"u8;
        Span<uint> r = stackalloc uint[4];
        for (int k = 0; k < 16; k++)
        {
            int at = part * 16 + k;
            if (at < name.Length) r[k / 4] |= (uint)name[at] << (8 * (k % 4));
        }
        return new CpuidResult(r[0], r[1], r[2], r[3]);
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
        // Address-holding MSRs take canonical values only (SDM Vol. 4: #GP on a non-canonical write): 57-bit canonical
        // with 5-level paging on, else 48-bit.
        bool canonical = Segmentation.IsCanonical(cpu, value);
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
