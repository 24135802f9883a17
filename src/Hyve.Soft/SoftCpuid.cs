// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Control;
using Hyve.X86;

namespace Hyve.Soft;

/// <summary>
/// CPUID of one software vCPU: the engine's <see cref="MinimalCpuidModel"/> feature set, plus the VM's topology in
/// leaf 1 (initial APIC ID, logical processors per package, HTT), leaf 4 (cores per package, cache sharing) and
/// leaf 0xB (x2APIC topology levels), as KVM's CPUID is made to describe it (<c>CpuidTopology</c> in Hyve.Kvm).
/// </summary>
public sealed class SoftCpuid : ICpuidModel
{
    private const uint MaxBasicLeaf = 0xb;
    // "GenuineIntel" as EBX, EDX, ECX.
    private const uint VendorEbx = 0x756e6547, VendorEdx = 0x49656e69, VendorEcx = 0x6c65746e;

    private readonly MinimalCpuidModel _base;
    private readonly CpuTopology _topology;
    private readonly uint _apicId;

    /// <summary>Creates the model for vCPU <paramref name="vcpu"/> of a VM with <paramref name="topology"/>.</summary>
    public SoftCpuid(CpuTopology topology, int vcpu)
    {
        _topology = topology;
        _apicId = topology.ApicId(vcpu);
        _base = new MinimalCpuidModel { ApicId = (byte)_apicId };
    }

    /// <inheritdoc/>
    public CpuidResult Query(CpuState cpu, uint leaf, uint subleaf)
    {
        int threadBits = _topology.ThreadBits, coreBits = _topology.CoreBits;
        uint perPackage = 1u << (threadBits + coreBits);
        switch (leaf)
        {
            case 0:
                return new CpuidResult(MaxBasicLeaf, VendorEbx, VendorEcx, VendorEdx);
            case 1:
            {
                var r = _base.Query(cpu, 1, 0);
                uint ebx = (r.Ebx & 0x0000ffff) | (Math.Min(perPackage, 255u) << 16) | ((_apicId & 0xff) << 24);
                uint edx = perPackage > 1 ? r.Edx | 1u << 28 : r.Edx & ~(1u << 28);
                return new CpuidResult(r.Eax, ebx, r.Ecx | 1u << 31 /* running under a hypervisor */, edx);
            }
            case 4:
                return CacheLeaf(subleaf, threadBits, coreBits, perPackage);
            case 0xb:
                return subleaf switch
                {
                    0 => new CpuidResult((uint)threadBits, (uint)_topology.Threads, 1u << 8, _apicId),
                    1 => new CpuidResult((uint)(threadBits + coreBits), (uint)(_topology.Threads * _topology.Cores), 2u << 8 | 1, _apicId),
                    _ => new CpuidResult(0, 0, subleaf & 0xff, _apicId),
                };
            case <= MaxBasicLeaf:
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
