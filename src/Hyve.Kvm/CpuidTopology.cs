// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Control;

namespace Hyve.Kvm;

/// <summary>
/// Makes the host's supported CPUID describe the VM's topology for one vCPU: APIC IDs packed as
/// socket:core:thread bit fields (equal to the vCPU id when counts are powers of two), leaf 1 EBX and HTT,
/// leaves 4, 0xB and 0x1F on Intel, 0x80000001/0x80000008/0x8000001E on AMD.
/// </summary>
internal static class CpuidTopology
{
    /// <summary>Rewrites <paramref name="entries"/> in place for <paramref name="vcpu"/>.</summary>
    public static void Apply(Span<KvmCpuidEntry2> entries, CpuTopology t, int vcpu)
    {
        uint apicId = t.ApicId(vcpu);
        int threadBits = t.ThreadBits, coreBits = t.CoreBits;
        uint perPackage = 1u << (threadBits + coreBits);
        bool intel = false, amd = false;
        foreach (ref var e in entries)
            if (e.Function == 0)
            {
                intel = e.Ebx == 0x756e6547; // "Genu"
                amd = e.Ebx == 0x68747541;   // "Auth"
            }
        foreach (ref var e in entries)
        {
            switch (e.Function)
            {
                case 1:
                    e.Ebx = (e.Ebx & 0x0000ffff) | (Math.Min(perPackage, 255u) << 16) | (apicId << 24);
                    if (perPackage > 1) e.Edx |= 1u << 28; else e.Edx &= ~(1u << 28);
                    e.Ecx |= 1u << 31; // running under a hypervisor
                    break;
                case 4 when intel:
                    if ((e.Eax & 0x1f) != 0)
                    {
                        uint sharing = (e.Eax >> 5 & 7) >= 3 ? perPackage : (1u << threadBits);
                        e.Eax = (e.Eax & 0x3fff) | ((sharing - 1) << 14) | (((1u << coreBits) - 1) << 26);
                    }
                    break;
                case 0xb:
                case 0x1f:
                    SetExtendedTopology(ref e, t, apicId, threadBits, coreBits);
                    break;
                case 0x80000001 when amd:
                    if (perPackage > 1) e.Ecx |= 1u << 1; else e.Ecx &= ~(1u << 1); // CmpLegacy
                    break;
                case 0x80000008 when amd:
                    e.Ecx = (e.Ecx & ~0xf0ffu) | (perPackage - 1) | ((uint)(threadBits + coreBits) << 12);
                    break;
                case 0x8000001e when amd:
                    e.Eax = apicId;
                    e.Ebx = (uint)(vcpu / t.Threads % t.Cores) | ((uint)(t.Threads - 1) << 8);
                    e.Ecx = (uint)(vcpu / (t.Threads * t.Cores));
                    e.Edx = 0;
                    break;
            }
        }
    }

    private static void SetExtendedTopology(ref KvmCpuidEntry2 e, CpuTopology t, uint apicId, int threadBits, int coreBits)
    {
        e.Edx = apicId;
        switch (e.Index)
        {
            case 0: // SMT level
                e.Eax = (uint)threadBits;
                e.Ebx = (uint)t.Threads;
                e.Ecx = 1u << 8;
                break;
            case 1: // core level
                e.Eax = (uint)(threadBits + coreBits);
                e.Ebx = (uint)(t.Threads * t.Cores);
                e.Ecx = 2u << 8 | 1;
                break;
            default:
                e.Eax = 0;
                e.Ebx = 0;
                e.Ecx = e.Index;
                break;
        }
    }
}
