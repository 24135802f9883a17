// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Control;
using Hyve.X86;

namespace Hyve.Soft;

/// <summary>
/// CPUID of one software vCPU: the VM's <see cref="CpuModel"/> through <see cref="MinimalCpuidModel"/>, plus the VM's topology in
/// leaf 1 (initial APIC ID, logical processors per package, HTT), leaf 4 (cores per package, cache sharing) and
/// leaf 0xB (x2APIC topology levels), as KVM's CPUID is made to describe it (<c>CpuidTopology</c> in Hyve.Kvm).
/// The engine's clocks are reported too, so a guest need not calibrate them against the PIT (which an interpreted
/// polling loop on a busy host does badly): an Intel model has leaf 0x15 (TSC/crystal ratio, the crystal being the
/// local APIC timer's input clock) and leaf 0x16 (base and bus MHz), which Linux takes as the known TSC frequency and
/// the APIC timer period; every model reports the invariant TSC (0x80000007 EDX[8]): the TSC runs at one rate.
/// </summary>
public sealed class SoftCpuid : ICpuidModel
{
    private const uint MaxBasicLeafAmd = 0xb, MaxBasicLeafIntel = 0x16;

    private readonly MinimalCpuidModel _base;
    private readonly CpuTopology _topology;
    private readonly uint _apicId;

    /// <summary>Creates the CPUID of vCPU <paramref name="vcpu"/> of a VM with <paramref name="topology"/> and CPU
    /// <paramref name="model"/> (default: <see cref="CpuModel.Default"/>).</summary>
    public SoftCpuid(CpuTopology topology, int vcpu, CpuModel? model = null)
    {
        _topology = topology;
        _apicId = topology.ApicId(vcpu);
        _base = new MinimalCpuidModel { ApicId = (byte)_apicId, Model = model ?? CpuModel.Default };
    }

    /// <summary>The CPU model reported.</summary>
    public CpuModel Model => _base.Model;

    /// <summary>When set and returning false, CPUID.1:EDX.APIC reads clear (the local APIC is disabled in IA32_APIC_BASE,
    /// SDM Vol. 3 11.4.3).</summary>
    public Func<bool>? ApicEnabled { get; set; }

    /// <summary>The vCPU's TSC rate in Hz (it may change when a snapshot from another host is restored).</summary>
    public Func<long> TscHz { get; set; } = () => 1_000_000_000;

    /// <summary>The local APIC timer's input clock in Hz (leaf 0x15's crystal).</summary>
    public long CrystalHz { get; set; } = 1_000_000_000;

    private uint MaxBasicLeaf => Model.Vendor == CpuVendor.Amd ? MaxBasicLeafAmd : MaxBasicLeafIntel;

    /// <inheritdoc/>
    public CpuidResult Query(CpuState cpu, uint leaf, uint subleaf)
    {
        int threadBits = _topology.ThreadBits, coreBits = _topology.CoreBits;
        uint perPackage = 1u << (threadBits + coreBits);
        switch (leaf)
        {
            case 0:
            {
                var (b, c, d) = MinimalCpuidModel.VendorRegisters(Model.Vendor);
                return new CpuidResult(MaxBasicLeaf, b, c, d);
            }
            case 1:
            {
                var r = _base.Query(cpu, 1, 0);
                uint ebx = (r.Ebx & 0x0000ffff) | (Math.Min(perPackage, 255u) << 16) | ((_apicId & 0xff) << 24);
                uint edx = perPackage > 1 ? r.Edx | 1u << 28 : r.Edx & ~(1u << 28);
                if (ApicEnabled is { } enabled && !enabled()) edx &= ~(1u << 9);
                return new CpuidResult(r.Eax, ebx, r.Ecx | 1u << 31 /* running under a hypervisor */, edx);
            }
            case 4:
                // Intel's deterministic cache leaf; reserved (zeros) on AMD, whose guests read 0x80000005/6.
                return Model.Vendor == CpuVendor.Amd ? default : CacheLeaf(subleaf, threadBits, coreBits, perPackage);
            case 7:
                return _base.Query(cpu, 7, subleaf);
            case 0x80000001 when Model.Vendor == CpuVendor.Amd && perPackage > 1:
            {
                // CmpLegacy: the logical processors of leaf 1 EBX are cores (APM Vol. 3 E.4.2).
                var r = _base.Query(cpu, leaf, subleaf);
                return r with { Ecx = r.Ecx | 1u << 1 };
            }
            case 0x80000008 when Model.Vendor == CpuVendor.Amd:
            {
                // NC (logical processors per package - 1) and ApicIdCoreIdSize (APM Vol. 3 E.4.7).
                var r = _base.Query(cpu, leaf, subleaf);
                return r with { Ecx = (uint)(threadBits + coreBits) << 12 | (Math.Min(perPackage, 256u) - 1) };
            }
            case 0xb:
                return subleaf switch
                {
                    0 => new CpuidResult((uint)threadBits, (uint)_topology.Threads, 1u << 8, _apicId),
                    1 => new CpuidResult((uint)(threadBits + coreBits), (uint)(_topology.Threads * _topology.Cores), 2u << 8 | 1, _apicId),
                    _ => new CpuidResult(0, 0, subleaf & 0xff, _apicId),
                };
            case 0x15 when leaf <= MaxBasicLeaf:
            {
                // TSC = crystal * EBX / EAX, in lowest terms so both fit 32 bits.
                long tsc = TscHz(), crystal = CrystalHz, g = (long)System.Numerics.BigInteger.GreatestCommonDivisor(tsc, crystal);
                return new CpuidResult((uint)(crystal / g), (uint)(tsc / g), (uint)crystal, 0);
            }
            case 0x16 when leaf <= MaxBasicLeaf:
            {
                uint mhz = (uint)(TscHz() / 1_000_000);
                return new CpuidResult(mhz, mhz, (uint)(CrystalHz / 1_000_000), 0);
            }
            case 0x80000007:
                return new CpuidResult(0, 0, 0, 1u << 8); // invariant TSC
            case var _ when leaf <= MaxBasicLeaf:
                return default;
            default:
                return _base.Query(cpu, leaf, subleaf);
        }
    }

    // Deterministic cache parameters (SDM Vol. 2 CPUID leaf 4): 32 KiB L1D and L1I and 1 MiB L2 per core, 16 MiB L3 per
    // package; the fields that matter to guests are EAX[25:14] (threads sharing) and EAX[31:26] (cores per package - 1).
    private static CpuidResult CacheLeaf(uint subleaf, int threadBits, int coreBits, uint perPackage)
    {
        uint type, level, ways, sets;
        switch (subleaf)
        {
            case 0: type = 1; level = 1; ways = 8; sets = 64; break;
            case 1: type = 2; level = 1; ways = 8; sets = 64; break;
            case 2: type = 3; level = 2; ways = 16; sets = 1024; break;
            case 3: type = 3; level = 3; ways = 16; sets = 16384; break;
            default: return default;
        }
        uint sharing = level == 3 ? perPackage : 1u << threadBits;
        uint eax = type | level << 5 | 1u << 8 /* self-initialising */ | (sharing - 1) << 14 | ((1u << coreBits) - 1) << 26;
        uint ebx = 63u /* line size - 1 */ | (ways - 1) << 22;
        return new CpuidResult(eax, ebx, sets - 1, 0);
    }
}
