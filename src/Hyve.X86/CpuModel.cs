// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

/// <summary>The CPU vendor a model reports in CPUID leaf 0 and whose vendor-specific behaviours the engine follows.</summary>
public enum CpuVendor
{
    /// <summary>GenuineIntel.</summary>
    Intel,
    /// <summary>AuthenticAMD.</summary>
    Amd,
}

/// <summary>The CPUID feature words a model fills (each a register of one leaf/sub-leaf).</summary>
public enum CpuidWord
{
    /// <summary>CPUID.1:ECX.</summary>
    Leaf1Ecx,
    /// <summary>CPUID.1:EDX.</summary>
    Leaf1Edx,
    /// <summary>CPUID.(7,0):EBX.</summary>
    Leaf7Ebx,
    /// <summary>CPUID.(7,0):ECX.</summary>
    Leaf7Ecx,
    /// <summary>CPUID.(7,0):EDX.</summary>
    Leaf7Edx,
    /// <summary>CPUID.80000001H:ECX.</summary>
    Ext1Ecx,
    /// <summary>CPUID.80000001H:EDX.</summary>
    Ext1Edx,
}

/// <summary>
/// A CPU model: vendor, signature and the CPUID feature bits a guest sees (issue 17 item 2). The engine executes an
/// instruction only when the model reports every feature it needs (otherwise #UD, as a CPU without the feature raises),
/// CR4 bits of features the model lacks are reserved (#GP on MOV to CR4), and the vendor picks the vendor-specific
/// behaviours (SYSCALL outside 64-bit mode and SYSENTER in long mode). Models are chosen by <c>-o cpu.vendor=</c>,
/// <c>-o cpu.model=</c> and <c>-o cpu.features=+a,-b</c>; features are named as Linux's /proc/cpuinfo names them.
/// </summary>
/// <remarks>
/// Named models: <c>x86-64</c> (the default: x86-64 baseline with POPCNT and LAHF in 64-bit mode, what the engine has
/// always reported, so snapshots keep their CPUID), and <c>max</c> (every feature the engine implements: adds
/// CMPXCHG16B, MOVBE, x2APIC, TSC-deadline, PCID, MTRR, DE, FSGSBASE, BMI1, SMEP, SMAP, INVPCID, UMIP, PKU, RDPID, LA57,
/// SERIALIZE, LZCNT, PREFETCHW, RDTSCP and 1 GiB pages). The x86-64-v2/v3 levels need SSE3..SSE4.2 (and AVX/AVX2), which
/// the engine does not implement, so they are refused by name rather than reported falsely.
/// </remarks>
public sealed class CpuModel
{
    private readonly uint[] _words = new uint[7];

    /// <summary>The model's name (as given to <c>cpu.model</c>).</summary>
    public string Name { get; }

    /// <summary>The vendor.</summary>
    public CpuVendor Vendor { get; }

    /// <summary>CPUID.1:EAX, the family/model/stepping signature.</summary>
    public uint Signature => Vendor == CpuVendor.Amd ? 0x00830f10u /* family 17h model 31h (Zen 2) */ : 0x000306a9u /* family 6 model 3Ah */;

    private CpuModel(string name, CpuVendor vendor)
    {
        Name = name;
        Vendor = vendor;
    }

    /// <summary>The names <see cref="Named"/> accepts.</summary>
    public static IReadOnlyList<string> ModelNames { get; } = ["x86-64", "max"];

    // Linux's /proc/cpuinfo names of the bits a model may carry, with the word and bit.
    private static readonly (string Name, CpuidWord Word, int Bit)[] Catalogue =
    [
        ("fpu", CpuidWord.Leaf1Edx, 0), ("vme", CpuidWord.Leaf1Edx, 1), ("de", CpuidWord.Leaf1Edx, 2), ("pse", CpuidWord.Leaf1Edx, 3),
        ("tsc", CpuidWord.Leaf1Edx, 4), ("msr", CpuidWord.Leaf1Edx, 5), ("pae", CpuidWord.Leaf1Edx, 6), ("mce", CpuidWord.Leaf1Edx, 7),
        ("cx8", CpuidWord.Leaf1Edx, 8), ("apic", CpuidWord.Leaf1Edx, 9), ("sep", CpuidWord.Leaf1Edx, 11), ("mtrr", CpuidWord.Leaf1Edx, 12),
        ("pge", CpuidWord.Leaf1Edx, 13), ("mca", CpuidWord.Leaf1Edx, 14), ("cmov", CpuidWord.Leaf1Edx, 15), ("pat", CpuidWord.Leaf1Edx, 16),
        ("pse36", CpuidWord.Leaf1Edx, 17), ("clflush", CpuidWord.Leaf1Edx, 19), ("mmx", CpuidWord.Leaf1Edx, 23),
        ("fxsr", CpuidWord.Leaf1Edx, 24), ("sse", CpuidWord.Leaf1Edx, 25), ("sse2", CpuidWord.Leaf1Edx, 26),
        ("sse3", CpuidWord.Leaf1Ecx, 0), ("pclmulqdq", CpuidWord.Leaf1Ecx, 1), ("monitor", CpuidWord.Leaf1Ecx, 3), ("vmx", CpuidWord.Leaf1Ecx, 5),
        ("ssse3", CpuidWord.Leaf1Ecx, 9), ("fma", CpuidWord.Leaf1Ecx, 12), ("cx16", CpuidWord.Leaf1Ecx, 13), ("pcid", CpuidWord.Leaf1Ecx, 17),
        ("sse4_1", CpuidWord.Leaf1Ecx, 19), ("sse4_2", CpuidWord.Leaf1Ecx, 20), ("x2apic", CpuidWord.Leaf1Ecx, 21), ("movbe", CpuidWord.Leaf1Ecx, 22),
        ("popcnt", CpuidWord.Leaf1Ecx, 23), ("tsc_deadline_timer", CpuidWord.Leaf1Ecx, 24), ("aes", CpuidWord.Leaf1Ecx, 25),
        ("xsave", CpuidWord.Leaf1Ecx, 26), ("avx", CpuidWord.Leaf1Ecx, 28), ("f16c", CpuidWord.Leaf1Ecx, 29), ("rdrand", CpuidWord.Leaf1Ecx, 30),
        ("fsgsbase", CpuidWord.Leaf7Ebx, 0), ("bmi1", CpuidWord.Leaf7Ebx, 3), ("avx2", CpuidWord.Leaf7Ebx, 5), ("smep", CpuidWord.Leaf7Ebx, 7),
        ("bmi2", CpuidWord.Leaf7Ebx, 8), ("erms", CpuidWord.Leaf7Ebx, 9), ("invpcid", CpuidWord.Leaf7Ebx, 10), ("rdseed", CpuidWord.Leaf7Ebx, 18),
        ("adx", CpuidWord.Leaf7Ebx, 19), ("smap", CpuidWord.Leaf7Ebx, 20), ("clflushopt", CpuidWord.Leaf7Ebx, 23), ("clwb", CpuidWord.Leaf7Ebx, 24),
        ("sha_ni", CpuidWord.Leaf7Ebx, 29),
        ("umip", CpuidWord.Leaf7Ecx, 2), ("pku", CpuidWord.Leaf7Ecx, 3), ("la57", CpuidWord.Leaf7Ecx, 16), ("rdpid", CpuidWord.Leaf7Ecx, 22),
        ("fsrm", CpuidWord.Leaf7Edx, 4), ("serialize", CpuidWord.Leaf7Edx, 14),
        ("lahf_lm", CpuidWord.Ext1Ecx, 0), ("svm", CpuidWord.Ext1Ecx, 2), ("abm", CpuidWord.Ext1Ecx, 5), ("sse4a", CpuidWord.Ext1Ecx, 6),
        ("3dnowprefetch", CpuidWord.Ext1Ecx, 8),
        ("syscall", CpuidWord.Ext1Edx, 11), ("nx", CpuidWord.Ext1Edx, 20), ("pdpe1gb", CpuidWord.Ext1Edx, 26), ("rdtscp", CpuidWord.Ext1Edx, 27),
        ("lm", CpuidWord.Ext1Edx, 29),
    ];

    // x86-64 (the default): the set the engine has reported since the beginning (snapshots record it).
    private static readonly string[] BaselineFeatures =
    [
        "fpu", "pse", "tsc", "msr", "pae", "cx8", "apic", "sep", "pge", "cmov", "pat", "clflush", "mmx", "fxsr", "sse", "sse2",
        "popcnt", "lahf_lm", "syscall", "nx", "lm",
    ];

    // What max adds: every feature whose instructions, registers and checks the engine and the software vCPU implement.
    private static readonly string[] MaxExtra =
    [
        "vme", "de", "mtrr", "cx16", "movbe", "x2apic", "tsc_deadline_timer", "pcid", "fsgsbase", "bmi1", "smep", "erms", "invpcid", "smap",
        "clflushopt", "umip", "pku", "la57", "rdpid", "fsrm", "serialize", "abm", "3dnowprefetch", "pdpe1gb", "rdtscp",
    ];

    /// <summary>The default model: <c>x86-64</c>, Intel.</summary>
    public static CpuModel Default { get; } = Named("x86-64", CpuVendor.Intel);

    /// <summary>The catalogue names a model can carry on this engine (the <c>max</c> model's features).</summary>
    public static IEnumerable<string> Implemented => BaselineFeatures.Concat(MaxExtra);

    /// <summary>The named model <paramref name="name"/> for <paramref name="vendor"/>; throws <see cref="ArgumentException"/>
    /// with a one-line reason for an unknown name or a level the engine does not implement.</summary>
    public static CpuModel Named(string name, CpuVendor vendor)
    {
        var m = new CpuModel(name, vendor);
        switch (name)
        {
            case "x86-64":
                foreach (var f in BaselineFeatures) m.Set(f, true);
                break;
            case "max":
                foreach (var f in Implemented) m.Set(f, true);
                break;
            case "x86-64-v2": case "x86-64-v3": case "x86-64-v4":
                throw new ArgumentException($"cpu model '{name}' needs SSE3, SSSE3 and SSE4.1/4.2{(name == "x86-64-v2" ? "" : " and AVX/AVX2")}, which the software CPU does not implement; use x86-64 or max");
            default:
                throw new ArgumentException($"unknown cpu model '{name}' (known: {string.Join(", ", ModelNames)})");
        }
        return m;
    }

    /// <summary>
    /// The model for <c>cpu.vendor</c>, <c>cpu.model</c> and <c>cpu.features</c> (each may be null): a named model, then
    /// each <c>+name</c> (or bare name) turned on and <c>-name</c> turned off, left to right. Throws
    /// <see cref="ArgumentException"/> with a one-line reason for an unknown vendor, model or feature, or a feature the
    /// engine does not implement (when <paramref name="implementedOnly"/>).
    /// </summary>
    public static CpuModel Parse(string? vendor, string? model, string? features, bool implementedOnly = true)
    {
        var v = vendor switch
        {
            null or "intel" or "GenuineIntel" => CpuVendor.Intel,
            "amd" or "AuthenticAMD" => CpuVendor.Amd,
            _ => throw new ArgumentException($"unknown cpu vendor '{vendor}' (intel or amd)"),
        };
        var m = Named(model ?? "x86-64", v);
        if (string.IsNullOrEmpty(features)) return m;
        foreach (var raw in features.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            bool on = raw[0] != '-';
            string name = raw[0] is '+' or '-' ? raw[1..] : raw;
            if (!IsKnown(name))
                throw new ArgumentException($"unknown cpu feature '{name}' in cpu.features (names as in /proc/cpuinfo, e.g. +pku,-x2apic)");
            if (on && implementedOnly && !Implemented.Contains(name))
                throw new ArgumentException($"cpu feature '{name}' is not implemented by the software CPU (it implements: {string.Join(" ", Implemented)})");
            m.Set(name, on);
        }
        return m;
    }

    /// <summary>True when <paramref name="name"/> is a feature name this catalogue knows.</summary>
    public static bool IsKnown(string name)
    {
        foreach (var e in Catalogue) if (e.Name == name) return true;
        return false;
    }

    /// <summary>The catalogue entry (word and bit) of feature <paramref name="name"/>.</summary>
    public static (CpuidWord Word, int Bit) Locate(string name)
    {
        foreach (var e in Catalogue) if (e.Name == name) return (e.Word, e.Bit);
        throw new ArgumentException($"unknown cpu feature '{name}'");
    }

    private void Set(string name, bool on)
    {
        var (w, bit) = Locate(name);
        if (on) _words[(int)w] |= 1u << bit;
        else _words[(int)w] &= ~(1u << bit);
    }

    /// <summary>The bits of <paramref name="word"/> the model reports.</summary>
    public uint Word(CpuidWord word) => _words[(int)word];

    /// <summary>True when the model reports feature <paramref name="name"/>.</summary>
    public bool Has(string name)
    {
        var (w, bit) = Locate(name);
        return (_words[(int)w] & (1u << bit)) != 0;
    }

    /// <summary>The names of the features the model reports.</summary>
    public IEnumerable<string> Features
    {
        get
        {
            foreach (var e in Catalogue)
                if ((_words[(int)e.Word] & (1u << e.Bit)) != 0) yield return e.Name;
        }
    }

    /// <summary>The CR4 bits a MOV to CR4 may set: those of features the model lacks are reserved (#GP, SDM Vol. 3 2.5).</summary>
    public ulong Cr4Writable
    {
        get
        {
            // Bits of features every model has (or whose absence no guest probes by writing CR4) stay writable.
            ulong v = CpuState.Cr4Tsd | CpuState.Cr4De | CpuState.Cr4Pse | CpuState.Cr4Pae
                | 1ul << 6 /* MCE */ | 1ul << 7 /* PGE */ | 1ul << 8 /* PCE */ | CpuState.Cr4Osfxsr | 1ul << 10 /* OSXMMEXCPT */;
            if (Has("vme")) v |= CpuState.Cr4Vme | CpuState.Cr4Pvi; // CPUID.01H:EDX.VME covers both (SDM Vol. 3 2.5)
            if (Has("umip")) v |= CpuState.Cr4Umip;
            if (Has("la57")) v |= CpuState.Cr4La57;
            if (Has("fsgsbase")) v |= 1ul << 16;
            if (Has("pcid")) v |= CpuState.Cr4Pcide;
            if (Has("xsave")) v |= 1ul << 18;
            if (Has("smep")) v |= CpuState.Cr4Smep;
            if (Has("smap")) v |= CpuState.Cr4Smap;
            if (Has("pku")) v |= CpuState.Cr4Pke;
            return v;
        }
    }

    /// <summary>The EFER bits WRMSR may set: SCE with SYSCALL, LME with long mode, NXE with NX (others are reserved).</summary>
    public ulong EferWritable => (Has("syscall") ? CpuState.EferSce : 0) | (Has("lm") ? CpuState.EferLme : 0) | (Has("nx") ? CpuState.EferNxe : 0);

    /// <summary>
    /// True when the model has what Iced says instruction feature <paramref name="f"/> needs. Architectural features
    /// every x86-64 processor has, and hint encodings that execute as NOPs on a processor without the feature, are true.
    /// </summary>
    public bool Supports(CpuidFeature f) => f switch
    {
        CpuidFeature.INTEL8086 or CpuidFeature.INTEL186 or CpuidFeature.INTEL286 or CpuidFeature.INTEL386 or CpuidFeature.INTEL486
            or CpuidFeature.CPUID or CpuidFeature.MULTIBYTENOP or CpuidFeature.PAUSE or CpuidFeature.CET_IBT or CpuidFeature.RDPMC => true,
        CpuidFeature.X64 => Has("lm"),
        CpuidFeature.FPU or CpuidFeature.FPU287 or CpuidFeature.FPU387 => Has("fpu"),
        CpuidFeature.TSC => Has("tsc"),
        CpuidFeature.MSR => Has("msr"),
        CpuidFeature.CX8 => Has("cx8"),
        CpuidFeature.SEP => Has("sep"),
        CpuidFeature.CMOV => Has("cmov"),
        CpuidFeature.CLFSH => Has("clflush"),
        CpuidFeature.MMX => Has("mmx"),
        CpuidFeature.FXSR => Has("fxsr"),
        CpuidFeature.SSE => Has("sse"),
        CpuidFeature.SSE2 => Has("sse2"),
        CpuidFeature.POPCNT => Has("popcnt"),
        CpuidFeature.CMPXCHG16B => Has("cx16"),
        CpuidFeature.MOVBE => Has("movbe"),
        CpuidFeature.XSAVE => Has("xsave"),
        CpuidFeature.FSGSBASE => Has("fsgsbase"),
        CpuidFeature.BMI1 => Has("bmi1"),
        CpuidFeature.INVPCID => Has("invpcid"),
        CpuidFeature.SMAP => Has("smap"),
        CpuidFeature.PKU => Has("pku"),
        CpuidFeature.RDPID => Has("rdpid"),
        CpuidFeature.SERIALIZE => Has("serialize"),
        CpuidFeature.CLFLUSHOPT => Has("clflushopt"),
        CpuidFeature.LZCNT => Has("abm"),
        CpuidFeature.PREFETCHW => Has("3dnowprefetch"),
        CpuidFeature.RDTSCP => Has("rdtscp"),
        CpuidFeature.SYSCALL => Has("syscall"),
        _ => false,
    };

    /// <summary>True when the model has every feature instruction form <paramref name="code"/> needs.</summary>
    public bool Supports(Code code)
    {
        foreach (var f in code.CpuidFeatures())
            if (!Supports(f)) return false;
        return true;
    }
}
