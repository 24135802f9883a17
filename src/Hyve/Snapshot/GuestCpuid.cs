// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using Hyve.Kvm;
using Hyve.Soft;
using Hyve.Vmm.Control;
using Hyve.X86;

namespace Hyve.Snapshot;

/// <summary>
/// The CPUID feature words a guest sees on an engine (leaves 1, 7.0, 0xD.1, 0x80000001), recorded in a snapshot's
/// manifest (<c>guest_cpuid</c>) and compared at a restore: a guest that saw a feature (AVX2, say) may be using it, so a
/// restore on an engine or host that lacks it is refused, naming the missing features. Bits that follow the guest's
/// own control registers (OSXSAVE, OSPKE) and the topology's HTT are not compared. <c>-o snapshot.check_cpuid=false</c>
/// given with <c>-r</c> skips the check (the user vouches that the guest uses none of the missing features).
/// </summary>
public static class GuestCpuid
{
    private readonly record struct Word(string Key, uint Leaf, uint Subleaf, int Register, uint Ignored, string?[] Names);

    private static readonly Word[] Words =
    [
        new("1.ecx", 1, 0, 2, 1u << 27, ["sse3", "pclmulqdq", "dtes64", "monitor", "ds_cpl", "vmx", "smx", "est", "tm2", "ssse3", "cid", "sdbg",
            "fma", "cx16", "xtpr", "pdcm", null, "pcid", "dca", "sse4_1", "sse4_2", "x2apic", "movbe", "popcnt", "tsc_deadline_timer", "aes",
            "xsave", null, "avx", "f16c", "rdrand", "hypervisor"]),
        new("1.edx", 1, 0, 3, 1u << 28, ["fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", null, "sep", "mtrr", "pge", "mca",
            "cmov", "pat", "pse36", "pn", "clflush", null, "dts", "acpi", "mmx", "fxsr", "sse", "sse2", "ss", "ht", "tm", "ia64", "pbe"]),
        new("7.0.ebx", 7, 0, 1, 0, ["fsgsbase", "tsc_adjust", "sgx", "bmi1", "hle", "avx2", null, "smep", "bmi2", "erms", "invpcid", "rtm",
            "pqm", null, "mpx", "rdt_a", "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma", null, "clflushopt", "clwb",
            "intel_pt", "avx512pf", "avx512er", "avx512cd", "sha_ni", "avx512bw", "avx512vl"]),
        new("7.0.ecx", 7, 0, 2, 1u << 4, [null, "avx512vbmi", "umip", "pku", null, "waitpkg", "avx512_vbmi2", null, "gfni", "vaes",
            "vpclmulqdq", "avx512_vnni", "avx512_bitalg", "tme", "avx512_vpopcntdq", null, "la57", null, null, null, null, null,
            "rdpid", null, null, "cldemote", null, "movdiri", "movdir64b", "enqcmd", null, null]),
        new("7.0.edx", 7, 0, 3, 0, [null, null, "avx512_4vnniw", "avx512_4fmaps", "fsrm", null, null, null, "avx512_vp2intersect", null,
            "md_clear", null, null, null, "serialize", null, "tsxldtrk", null, "pconfig", null, null, null, "amx_bf16", "avx512_fp16",
            "amx_tile", "amx_int8", "ibrs", "stibp", "flush_l1d", "arch_capabilities", null, "ssbd"]),
        new("d.1.eax", 0xd, 1, 0, 0, ["xsaveopt", "xsavec", "xgetbv1", "xsaves"]),
        new("80000001.ecx", 0x8000_0001, 0, 2, 0, ["lahf_lm", "cmp_legacy", "svm", "extapic", "cr8_legacy", "abm", "sse4a", "misalignsse",
            "3dnowprefetch", "osvw", "ibs", "xop", "skinit", "wdt", null, "lwp", "fma4", "tce", null, "nodeid_msr", null, "tbm",
            "topoext"]),
        // AMD repeats leaf 1's EDX bits here (0-9, 12-17, 23, 24); they are compared as leaf 1's.
        new("80000001.edx", 0x8000_0001, 0, 3, 0x0183_F3FF, [null, null, null, null, null, null, null, null, null, null, null, "syscall", null, null,
            null, null, null, null, null, "mp", "nx", null, "mmxext", null, null, "fxsr_opt", "pdpe1gb", "rdtscp", null, "lm",
            "3dnowext", "3dnow"]),
    ];

    /// <summary>The feature words the software CPU gives a guest with <paramref name="topology"/>.</summary>
    public static List<KeyValuePair<string, string>> Soft(CpuTopology topology, CpuModel? cpuModel = null)
    {
        var model = new SoftCpuid(topology, 0, cpuModel);
        var cpu = new CpuState();
        return Collect((leaf, sub) => { var r = model.Query(cpu, leaf, sub); return (r.Eax, r.Ebx, r.Ecx, r.Edx); });
    }

    /// <summary>The feature words a guest can use under KVM on this host: what KVM offers, plus the scalar
    /// instructions of leaves 1 and 0x80000001 that the host CPU executes (KVM can clear their CPUID bits, as kvm-pvm
    /// does with POPCNT, but cannot stop a guest from running them). Features with register state (AVX, XSAVE, ...)
    /// or that KVM must virtualize (VMX, SVM, x2APIC, TSC deadline) count only when KVM offers them.</summary>
    public static List<KeyValuePair<string, string>> Kvm(CpuTopology topology)
    {
        var kvm = KvmSystem.Open();
        return Collect((leaf, sub) =>
        {
            var r = kvm.GuestCpuid(topology, leaf, sub);
            if (!System.Runtime.Intrinsics.X86.X86Base.IsSupported || (leaf != 1 && leaf != 0x8000_0001)) return r;
            var (_, _, hc, hd) = System.Runtime.Intrinsics.X86.X86Base.CpuId(unchecked((int)leaf), 0);
            uint stateful = leaf == 1 ? (1u << 5 | 1u << 6 | 1u << 12 | 1u << 21 | 1u << 24 | 1u << 26 | 1u << 27 | 1u << 28 | 1u << 29) : 1u << 2;
            return (r.Eax, r.Ebx, r.Ecx | ((uint)hc & ~stateful), r.Edx | (leaf == 1 ? (uint)hd & (1u << 23 | 1u << 19) : 0));
        });
    }

    /// <summary>The words of the engine named <paramref name="engine"/> ("soft" or "kvm").</summary>
    public static List<KeyValuePair<string, string>> ForEngine(string engine, CpuTopology topology, CpuModel? cpuModel = null) =>
        engine == "kvm" ? Kvm(topology) : Soft(topology, cpuModel);

    private static List<KeyValuePair<string, string>> Collect(Func<uint, uint, (uint Eax, uint Ebx, uint Ecx, uint Edx)> query)
    {
        var list = new List<KeyValuePair<string, string>>();
        foreach (var w in Words)
        {
            var r = query(w.Leaf, w.Subleaf);
            uint v = w.Register switch { 0 => r.Eax, 1 => r.Ebx, 2 => r.Ecx, _ => r.Edx } & ~w.Ignored;
            list.Add(new(w.Key, v.ToString("x8", CultureInfo.InvariantCulture)));
        }
        return list;
    }

    /// <summary>The features <paramref name="saved"/> has and <paramref name="now"/> lacks, by their /proc/cpuinfo names
    /// (or <c>cpuid.LEAF.REG[bit]</c> for bits without one); a word missing from <paramref name="now"/> counts as zero,
    /// and keys this Hyve does not know are ignored.</summary>
    public static List<string> Missing(IReadOnlyList<KeyValuePair<string, string>> saved, IReadOnlyList<KeyValuePair<string, string>> now)
    {
        ArgumentNullException.ThrowIfNull(saved);
        ArgumentNullException.ThrowIfNull(now);
        var missing = new List<string>();
        foreach (var w in Words)
        {
            uint was = Value(saved, w.Key), have = Value(now, w.Key);
            uint lost = was & ~have & ~w.Ignored;
            for (int bit = 0; bit < 32; bit++)
                if ((lost & (1u << bit)) != 0)
                    missing.Add(bit < w.Names.Length && w.Names[bit] is { } n ? n : $"cpuid.{w.Key}[{bit}]");
        }
        return missing;
    }

    private static uint Value(IReadOnlyList<KeyValuePair<string, string>> words, string key)
    {
        foreach (var (k, v) in words)
            if (k == key) return uint.TryParse(v, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out uint x) ? x : 0;
        return 0;
    }
}
