// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;

namespace Hyve.Kvm;

/// <summary>
/// <c>-o cpu.model=</c> / <c>cpu.features=</c> on KVM: the host's supported CPUID filtered to the model. Every feature bit
/// the model catalogue names (<see cref="CpuModel"/>) is kept only when the model has it; bits it does not name (the
/// hypervisor bit, OSXSAVE, topology fields) pass through. A feature the model asks for that KVM does not offer cannot
/// be given to the guest, so it is refused with the feature's name, as is a vendor other than the host's.
/// </summary>
internal static class CpuidFilter
{
    private static readonly (CpuidWord Word, uint Leaf, uint Subleaf, int Register)[] Words =
    [
        (CpuidWord.Leaf1Ecx, 1, 0, 2), (CpuidWord.Leaf1Edx, 1, 0, 3), (CpuidWord.Leaf7Ebx, 7, 0, 1), (CpuidWord.Leaf7Ecx, 7, 0, 2),
        (CpuidWord.Leaf7Edx, 7, 0, 3), (CpuidWord.Ext1Ecx, 0x8000_0001, 0, 2), (CpuidWord.Ext1Edx, 0x8000_0001, 0, 3),
    ];

    /// <summary>Filters <paramref name="entries"/> (KVM_GET_SUPPORTED_CPUID's) to <paramref name="model"/>; throws
    /// <see cref="InvalidOperationException"/> naming a feature the model has and KVM does not offer.</summary>
    public static void Apply(KvmCpuidEntry2[] entries, CpuModel model)
    {
        // KVM runs the host's processor: its vendor's behaviours cannot be changed, so another vendor is refused.
        foreach (var e in entries)
            if (e.Function == 0 && (e.Ebx, e.Ecx, e.Edx) != MinimalCpuidModel.VendorRegisters(model.Vendor))
                throw new InvalidOperationException($"cpu.vendor={(model.Vendor == CpuVendor.Amd ? "amd" : "intel")} differs from this host's CPU vendor, which KVM cannot change (use accel=soft)");
        foreach (var (word, leaf, sub, reg) in Words)
        {
            uint known = KnownBits(word);
            uint want = model.Word(word);
            bool found = false;
            for (int k = 0; k < entries.Length; k++)
            {
                ref var e = ref entries[k];
                if (e.Function != leaf || e.Index != sub) continue;
                found = true;
                uint r = reg switch { 1 => e.Ebx, 2 => e.Ecx, _ => e.Edx };
                uint missing = want & ~r;
                // AMD mirrors leaf 1 EDX into 0x80000001 EDX; Intel does not, so only the bits named there count.
                if (leaf == 0x8000_0001 && reg == 3) missing &= ~0x0183f3ffu;
                if (missing != 0) throw new InvalidOperationException($"cpu feature '{Name(word, missing)}' is not offered by this host's KVM");
                r = (r & ~known) | (r & want);
                if (reg == 1) e.Ebx = r; else if (reg == 2) e.Ecx = r; else e.Edx = r;
            }
            if (!found && want != 0) throw new InvalidOperationException($"cpu feature '{Name(word, want)}' is not offered by this host's KVM");
        }
    }

    private static uint KnownBits(CpuidWord word)
    {
        uint m = 0;
        foreach (var name in CpuModel.Named("max", CpuVendor.Intel).Features.Concat(AllNames()))
        {
            var (w, bit) = CpuModel.Locate(name);
            if (w == word) m |= 1u << bit;
        }
        return m;
    }

    private static IEnumerable<string> AllNames()
    {
        foreach (var n in new[] { "vme", "mce", "mca", "pse36", "sse3", "pclmulqdq", "monitor", "vmx", "ssse3", "fma", "sse4_1", "sse4_2", "aes",
            "xsave", "avx", "f16c", "rdrand", "avx2", "bmi2", "rdseed", "adx", "clwb", "sha_ni", "svm", "sse4a" })
            if (CpuModel.IsKnown(n)) yield return n;
    }

    private static string Name(CpuidWord word, uint bits)
    {
        int bit = System.Numerics.BitOperations.TrailingZeroCount(bits);
        foreach (var n in CpuModel.Implemented.Concat(AllNames()))
            if (CpuModel.Locate(n) == (word, bit)) return n;
        return $"{word}[{bit}]";
    }
}
