// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Config;
using Hyve.Kvm;
using Hyve.Soft;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vmm.Io;
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.X86;

/// <summary>
/// Issue 17 item 2: the CPU model (cpu.vendor, cpu.model, cpu.features). CPUID and execution agree: an instruction
/// whose CPUID feature the model reports executes, one whose feature it does not report raises #UD (SDM Vol. 2, each
/// instruction's "#UD if CPUID.xx.yy = 0"), CR4 bits of absent features are #GP, and the vendor picks AMD's or Intel's
/// SYSCALL/SYSENTER rules (APM Vol. 3 SYSCALL, SYSENTER).
/// </summary>
public sealed class CpuModelTests
{
    private readonly TestMemory _mem = new(4 << 20);

    public CpuModelTests()
    {
        _mem.Write64(0x10000, 0x11000 | 3);
        _mem.Write64(0x11000, 0x12000 | 3);
        _mem.Write64(0x12000, 0x83); // 2 MiB identity page
    }

    private static CpuState Long64()
    {
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        cpu.Rip = 0x1000;
        for (int r = 0; r < 16; r++) cpu.Gpr[r] = 0x3000;
        cpu.Gpr[4] = 0x8000;
        return cpu;
    }

    private (InstructionEngine Engine, MinimalCpuidModel Cpuid) Engine(string spec)
    {
        var parts = spec.Split(' ');
        var model = CpuModel.Parse(parts.Length > 2 ? parts[2] : null, parts[0], parts.Length > 1 && parts[1] != "_" ? parts[1] : null);
        var cpuid = new MinimalCpuidModel { Model = model };
        return (new InstructionEngine(_mem) { Model = model, Cpuid = cpuid }, cpuid);
    }

    private static bool CpuidBit(MinimalCpuidModel cpuid, string feature)
    {
        var (word, bit) = CpuModel.Locate(feature);
        var cpu = new CpuState();
        var r = word switch
        {
            CpuidWord.Leaf1Ecx or CpuidWord.Leaf1Edx => cpuid.Query(cpu, 1, 0),
            CpuidWord.Leaf7Ebx or CpuidWord.Leaf7Ecx or CpuidWord.Leaf7Edx => cpuid.Query(cpu, 0, 0).Eax >= 7 ? cpuid.Query(cpu, 7, 0) : default,
            _ => cpuid.Query(cpu, 0x80000001, 0),
        };
        uint v = word switch
        {
            CpuidWord.Leaf7Ebx => r.Ebx,
            CpuidWord.Leaf1Ecx or CpuidWord.Leaf7Ecx or CpuidWord.Ext1Ecx => r.Ecx,
            _ => r.Edx,
        };
        return (v & (1u << bit)) != 0;
    }

    [Theory]
    [InlineData("bmi1", "c4e278f7c1")]        // BEXTR eax, ecx, eax
    [InlineData("bmi1", "c4e270f2c2")]        // ANDN eax, ecx, edx
    [InlineData("rdtscp", "0f01f9")]          // RDTSCP
    [InlineData("cx16", "480fc708")]          // CMPXCHG16B [rax]
    [InlineData("movbe", "0f38f000")]         // MOVBE eax, [rax]
    [InlineData("rdpid", "f30fc7f8")]         // RDPID rax
    [InlineData("popcnt", "f30fb8c1")]        // POPCNT eax, ecx
    [InlineData("serialize", "0f01e8")]       // SERIALIZE
    public void Cpuid_and_execution_agree_for_each_model(string feature, string hex)
    {
        var bytes = Convert.FromHexString(hex);
        foreach (var spec in new[] { "x86-64", "max", $"max -{feature}", $"x86-64 +{feature}" })
        {
            var (engine, cpuid) = Engine(spec);
            bool reported = CpuidBit(cpuid, feature);
            var r = engine.Step(Long64(), null, bytes);
            bool ud = r.Status == StepStatus.Exception && r.Exception.Vector == Vector.UD;
            Assert.NotEqual(StepStatus.Unsupported, r.Status);
            Assert.True(reported != ud, $"{spec}: CPUID reports {feature} = {reported} but the instruction {(ud ? "raised #UD" : "executed")}");
        }
        Assert.False(CpuidBit(Engine("x86-64").Cpuid, feature) && feature != "popcnt", "the default model reports only the baseline");
        Assert.True(CpuidBit(Engine("max").Cpuid, feature));
    }

    [Fact]
    public void The_default_model_reports_what_the_engine_always_has()
    {
        var cpuid = MinimalCpuidModel.Shared;
        var cpu = new CpuState();
        var l0 = cpuid.Query(cpu, 0, 0);
        Assert.Equal((1u, 0x756e6547u, 0x6c65746eu, 0x49656e69u), (l0.Eax, l0.Ebx, l0.Ecx, l0.Edx)); // GenuineIntel
        var l1 = cpuid.Query(cpu, 1, 0);
        const uint edx = 1u << 0 | 1u << 3 | 1u << 4 | 1u << 5 | 1u << 6 | 1u << 8 | 1u << 9 | 1u << 11 | 1u << 13
            | 1u << 15 | 1u << 16 | 1u << 19 | 1u << 23 | 1u << 24 | 1u << 25 | 1u << 26;
        Assert.Equal((0x000306a9u, 1u << 23, edx), (l1.Eax, l1.Ecx, l1.Edx));
        var e1 = cpuid.Query(cpu, 0x80000001, 0);
        Assert.Equal((1u, 1u << 11 | 1u << 20 | 1u << 29), (e1.Ecx, e1.Edx));
    }

    [Fact]
    public void Tzcnt_and_lzcnt_without_their_feature_execute_as_bsf_and_bsr()
    {
        var tz = Convert.FromHexString("f30fbcc1"); // TZCNT eax, ecx
        var lz = Convert.FromHexString("f30fbdc1"); // LZCNT eax, ecx
        foreach (var (bytes, feature) in new[] { (tz, "bmi1"), (lz, "abm") })
        {
            var (old, _) = Engine("x86-64");
            var cpu = Long64();
            cpu.Gpr[0] = 0x1234; cpu.Gpr[1] = 0;
            Assert.True(old.Step(cpu, null, bytes).IsOk);
            Assert.Equal(0x1234ul, cpu.Gpr[0]); // BSF/BSR of zero: destination unchanged, ZF=1
            Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagZf);
            cpu = Long64();
            cpu.Gpr[1] = 0x10;
            Assert.True(old.Step(cpu, null, bytes).IsOk);
            Assert.Equal(4ul, cpu.Gpr[0]); // bit index 4 from either end
            var (max, cpuid) = Engine("max");
            Assert.True(CpuidBit(cpuid, feature));
            cpu = Long64();
            cpu.Gpr[0] = 0x1234; cpu.Gpr[1] = 0;
            Assert.True(max.Step(cpu, null, bytes).IsOk);
            Assert.Equal(32ul, cpu.Gpr[0]); // TZCNT/LZCNT of zero: the operand size, CF=1
            Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagCf);
        }
    }

    [Theory]
    [InlineData("smep", 20)]
    [InlineData("smap", 21)]
    [InlineData("pku", 22)]
    [InlineData("fsgsbase", 16)]
    [InlineData("pcid", 17)]
    [InlineData("umip", 11)]
    public void Cr4_bits_of_features_the_model_lacks_are_reserved(string feature, int bit)
    {
        var movCr4 = Convert.FromHexString("0f22e0"); // MOV CR4, RAX
        foreach (var spec in new[] { "x86-64", "max", $"max -{feature}" })
        {
            var (engine, cpuid) = Engine(spec);
            var cpu = Long64();
            cpu.Gpr[0] = cpu.Cr4 | 1ul << bit;
            var r = engine.Step(cpu, null, movCr4);
            bool gp = r.Status == StepStatus.Exception && r.Exception.Vector == Vector.GP;
            Assert.True(CpuidBit(cpuid, feature) != gp, $"{spec}: CR4[{bit}] write {(gp ? "#GP" : "accepted")}");
        }
    }

    [Fact]
    public void Efer_nxe_and_tsc_aux_exist_only_with_their_features()
    {
        var wrmsr = Convert.FromHexString("0f30");
        var (noNx, _) = Engine("x86-64 -nx");
        var cpu = Long64();
        cpu.Gpr[1] = ArchitecturalMsrs.Efer; cpu.Gpr[0] = cpu.Efer | CpuState.EferNxe; cpu.Gpr[2] = 0;
        Assert.Equal(Vector.GP, noNx.Step(cpu, null, wrmsr).Exception.Vector);
        var (def, _) = Engine("x86-64");
        Assert.True(def.Step(cpu, null, wrmsr).IsOk);
        cpu = Long64();
        cpu.Gpr[1] = ArchitecturalMsrs.TscAux; cpu.Gpr[0] = 7; cpu.Gpr[2] = 0;
        Assert.Equal(Vector.GP, def.Step(cpu, null, wrmsr).Exception.Vector);
        var (max, _) = Engine("max");
        Assert.True(max.Step(cpu, null, wrmsr).IsOk);
        Assert.Equal(7ul, cpu.TscAux);
    }

    [Fact]
    public void Amd_vendor_reports_authentic_amd_and_follows_amd_syscall_and_sysenter_rules()
    {
        var (amd, cpuid) = Engine("x86-64 _ amd");
        var l0 = cpuid.Query(new CpuState(), 0, 0);
        Assert.Equal("AuthenticAMD", System.Text.Encoding.ASCII.GetString(
            BitConverter.GetBytes(l0.Ebx).Concat(BitConverter.GetBytes(l0.Edx)).Concat(BitConverter.GetBytes(l0.Ecx)).ToArray()));
        Assert.Equal(0x17u, ((cpuid.Query(new CpuState(), 1, 0).Eax >> 8) & 0xf) + ((cpuid.Query(new CpuState(), 1, 0).Eax >> 20) & 0xff));
        // AMD mirrors leaf 1 EDX's FPU..MMX/FXSR bits into 0x80000001 EDX.
        Assert.NotEqual(0u, cpuid.Query(new CpuState(), 0x80000001, 0).Edx & 1);

        // SYSCALL in compatibility mode: AMD enters CSTAR in 64-bit mode; Intel raises #UD.
        CpuState Compat()
        {
            var c = Long64();
            var cs = c.Segs[(int)Seg.Cs];
            c.Segs[(int)Seg.Cs] = new SegmentRegister(cs.Selector, new SegmentDescriptor(0, 0xffffffff, 0xc09b));
            c.Efer |= CpuState.EferSce;
            c.Star = 0x0023_0010ul << 32;
            c.Cstar = 0x5000; c.Lstar = 0x6000;
            return c;
        }
        var syscall = Convert.FromHexString("0f05");
        var cpu = Compat();
        Assert.Equal(32, cpu.CodeBitness);
        Assert.True(amd.Step(cpu, null, syscall).IsOk);
        Assert.Equal(0x5000ul, cpu.Rip);
        Assert.Equal(0x1002ul, cpu.Gpr[1]);
        Assert.Equal(64, cpu.CodeBitness);
        var (intel, _) = Engine("x86-64");
        Assert.Equal(Vector.UD, intel.Step(Compat(), null, syscall).Exception.Vector);

        // SYSENTER in long mode: #UD on AMD, a fast call on Intel.
        var sysenter = Convert.FromHexString("0f34");
        cpu = Long64();
        cpu.SysenterCs = 0x10; cpu.SysenterEip = 0x7000; cpu.SysenterEsp = 0x9000;
        Assert.Equal(Vector.UD, amd.Step(cpu, null, sysenter).Exception.Vector);
        Assert.True(intel.Step(cpu, null, sysenter).IsOk);
        Assert.Equal(0x7000ul, cpu.Rip);
    }

    [Theory]
    [InlineData("-o cpu.model=pentium", "unknown cpu model 'pentium'")]
    [InlineData("-o cpu.model=x86-64-v2", "does not implement")]
    [InlineData("-o cpu.vendor=via", "unknown cpu vendor 'via'")]
    [InlineData("-o cpu.features=+avx2", "'avx2' is not implemented")]
    [InlineData("-o cpu.features=+frobnicate", "unknown cpu feature 'frobnicate'")]
    public void Bad_cpu_options_are_refused_at_parse_time(string option, string message)
    {
        var parts = option.Split(' ');
        var r = Options.Parse([parts[0], parts[1], "-o", "boot.kernel=/dev/null", "vm"]);
        Assert.NotNull(r.Error);
        Assert.Contains(message, r.Error);
    }

    [Fact]
    public void Good_cpu_options_reach_the_machine_model()
    {
        var r = Options.Parse(["-o", "cpu.vendor=amd", "-o", "cpu.model=max", "-o", "cpu.features=-x2apic,+de", "vm"]);
        Assert.Null(r.Error);
        var m = Hyve.Machine.CpuModelOption(r.Config);
        Assert.Equal(CpuVendor.Amd, m.Vendor);
        Assert.False(m.Has("x2apic"));
        Assert.True(m.Has("pku"));
    }

    [Fact]
    public void X2apic_mode_is_gp_when_the_model_lacks_x2apic_and_cpuid_apic_follows_the_enable_bit()
    {
        var clock = new ManualClock();
        var lapic = new Vlapic(0, true, clock, new LapicBus()) { X2ApicSupported = false };
        ulong baseValue = lapic.ApicBase;
        Assert.False(lapic.WriteMsr(0x1b, baseValue | 1ul << 10)); // EXTD: #GP
        lapic.X2ApicSupported = true;
        Assert.True(lapic.WriteMsr(0x1b, baseValue | 1ul << 10));
        Assert.True(lapic.X2ApicMode);

        var soft = new Vlapic(0, true, clock, new LapicBus());
        var cpuid = new SoftCpuid(new CpuTopology(1, 1, 1, 1), 0) { ApicEnabled = () => soft.HardwareEnabled };
        Assert.NotEqual(0u, cpuid.Query(new CpuState(), 1, 0).Edx & (1u << 9));
        Assert.True(soft.WriteMsr(0x1b, soft.ApicBase & ~(1ul << 11)));
        Assert.Equal(0u, cpuid.Query(new CpuState(), 1, 0).Edx & (1u << 9)); // SDM Vol. 3 11.4.3
    }

    [Fact]
    public void An_amd_model_has_the_amd_msrs_linux_touches_without_a_fault_handler()
    {
        var lapic = new Vlapic(0, true, new ManualClock(), new LapicBus());
        var cpu = new CpuState();
        foreach (uint msr in new uint[] { 0xc001001f /* NB_CFG */, 0xc0010010 /* SYSCFG */, 0xc0010015 /* HWCR */ })
        {
            var msrs = new SoftMsrs(lapic, new HostTsc(), true, amd: true);
            Assert.True(msrs.TryRead(cpu, msr, out ulong v));
            // HWCR.TscFreqSel (bit 24) is read-only 1 on AMD CPUs since family 10h model 2; writes leave it set.
            Assert.Equal(msr == 0xc0010015 ? 1ul << 24 : 0ul, v);
            Assert.True(msrs.TryWrite(cpu, msr, 0));
            Assert.True(msrs.TryRead(cpu, msr, out v));
            Assert.Equal(msr == 0xc0010015 ? 1ul << 24 : 0ul, v);
            Assert.False(new SoftMsrs(lapic, new HostTsc(), true, amd: false).TryRead(cpu, msr, out _)); // #GP on Intel
        }
    }

    [Fact]
    public void On_kvm_the_model_filters_the_hosts_cpuid_and_refuses_what_the_host_lacks()
    {
        var (b, c, d) = MinimalCpuidModel.VendorRegisters(CpuVendor.Intel);
        KvmCpuidEntry2[] Host() =>
        [
            new() { Function = 0, Eax = 0xd, Ebx = b, Ecx = c, Edx = d },
            new() { Function = 1, Ecx = 1u << 0 /* sse3 */ | 1u << 23 | 1u << 21 /* x2apic */ | 1u << 31, Edx = 0x0789ab79u },
            new() { Function = 7, Flags = 1, Ebx = 1u << 5 /* avx2 */ | 1u << 7 /* smep */ },
            new() { Function = 0x80000001, Ecx = 1, Edx = 1u << 11 | 1u << 20 | 1u << 29 | 1u << 27 },
        ];
        var e = Host();
        CpuidFilter.Apply(e, CpuModel.Parse(null, "x86-64", null));
        Assert.Equal(1u << 23 | 1u << 31, e[1].Ecx); // sse3 and x2apic gone, the hypervisor bit kept
        Assert.Equal(0u, e[2].Ebx);                   // avx2 and smep gone
        Assert.Equal(0u, e[3].Edx & 1u << 27);        // rdtscp gone
        e = Host();
        CpuidFilter.Apply(e, CpuModel.Parse(null, "x86-64", "+smep,+x2apic"));
        Assert.Equal(1u << 7, e[2].Ebx);
        Assert.NotEqual(0u, e[1].Ecx & 1u << 21);
        var ex = Assert.Throws<InvalidOperationException>(() => CpuidFilter.Apply(Host(), CpuModel.Parse(null, "x86-64", "+pku")));
        Assert.Contains("'pku'", ex.Message);
        ex = Assert.Throws<InvalidOperationException>(() => CpuidFilter.Apply(Host(), CpuModel.Parse("amd", "x86-64", null)));
        Assert.Contains("vendor", ex.Message);
    }
}
