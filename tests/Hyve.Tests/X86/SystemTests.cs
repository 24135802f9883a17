// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>System instructions (SDM Vol. 2; Vol. 3 2.5-2.8, 10.8): mode switches, CR/DR/MSR checks, IF rules, CPUID/TSC models.</summary>
public class SystemTests
{
    private const ulong Gdt = 0x500;
    private readonly TestMemory _mem = new(4 << 20);
    private readonly InstructionEngine _engine;

    public SystemTests()
    {
        _engine = new InstructionEngine(_mem) { Model = CpuModel.Named("max", CpuVendor.Intel) };
        _mem.Write64(Gdt + 0x08, 0x00cf9a000000ffff); // flat 32-bit code
        _mem.Write64(Gdt + 0x10, 0x00cf92000000ffff); // flat data
        _mem.Write64(Gdt + 0x18, 0x00af9a000000ffff); // 64-bit code
        _mem.Write64(Gdt + 0x20, 0x0000890030000067); // available 32-bit TSS at 0x3000 (legacy 8-byte form)
        _mem.Write64(Gdt + 0x28, 0x0000820040000fff); // LDT at 0x4000
        _mem.Write64(Gdt + 0x30, 0);                  // upper half of a 16-byte system descriptor in IA-32e mode
    }

    private static byte[] Asm(int bitness, ulong at, Action<Assembler> emit)
    {
        var a = new Assembler(bitness);
        emit(a);
        var w = new Writer();
        a.Assemble(w, at);
        return w.Bytes.ToArray();
    }

    private sealed class Writer : CodeWriter
    {
        public readonly List<byte> Bytes = new();
        public override void WriteByte(byte value) => Bytes.Add(value);
    }

    private CpuState Protected32(int cpl = 0)
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x3f, 0);
        if (cpl == 3)
        {
            cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0x1b, new SegmentDescriptor(0, 0xffffffff, 0xc0fb));
            cpu.Segs[(int)Seg.Ss] = new SegmentRegister(0x23, new SegmentDescriptor(0, 0xffffffff, 0xc0f3));
        }
        cpu.Rip = 0x1000;
        cpu.Gpr[4] = 0x8000;
        return cpu;
    }

    /// <summary>Identity-maps the first 2 MiB with 4-level paging at 0x10000.</summary>
    private void MapLow()
    {
        _mem.Write64(0x10000, 0x11000 | 7); // user-accessible so CPL 3 code can run
        _mem.Write64(0x11000, 0x12000 | 7);
        _mem.Write64(0x12000, 0x87);
    }

    private CpuState Long64()
    {
        MapLow();
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x3f, 0);
        cpu.Rip = 0x1000;
        cpu.Gpr[4] = 0x8000;
        return cpu;
    }

    private StepResult Run(CpuState cpu, Action<Assembler> emit)
    {
        ulong at = cpu.Segs[(int)Seg.Cs].Descriptor.Base + cpu.Rip;
        _mem.Write(at, Asm(cpu.CodeBitness, cpu.Rip, emit));
        return _engine.Step(cpu);
    }

    private StepResult Run(CpuState cpu, params byte[] code)
    {
        _mem.Write(cpu.Segs[(int)Seg.Cs].Descriptor.Base + cpu.Rip, code);
        return _engine.Step(cpu);
    }

    private static void AssertGp0(StepResult r)
    {
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.GP, r.Exception.Vector);
        Assert.Equal(0u, r.Exception.ErrorCode);
    }

    private static void AssertUd(StepResult r)
    {
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.UD, r.Exception.Vector);
    }

    /// <summary>Steps until RIP reaches <paramref name="until"/>, failing on anything but Ok.</summary>
    private void RunTo(CpuState cpu, ulong until, int max = 50)
    {
        for (int n = 0; n < max && cpu.Rip != until; n++)
        {
            var r = _engine.Step(cpu);
            Assert.True(r.IsOk, $"step {n} at {cpu.Rip:x}: {r.Status} {r.Exception} {r.Code}");
        }
        Assert.Equal(until, cpu.Rip);
    }

    [Fact]
    public void Real_mode_lgdt_mov_cr0_and_far_jmp_enter_protected_mode()
    {
        var cpu = new CpuState();
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        cpu.Rip = 0x7c00;
        // GDT pseudo-descriptor: limit 0x3f, base 0xAA000500 of which a 16-bit LGDT keeps 24 bits.
        _mem.Write(0x7e00, new byte[] { 0x3f, 0x00, 0x00, 0x05, 0x00, 0xaa });
        _mem.Write(0x7c00, Asm(16, 0x7c00, a =>
        {
            a.lgdt(__[0x7e00]);
            a.mov(eax, cr0);
            a.or(al, 1);
            a.mov(cr0, eax);
            a.db(0x66, 0xea, 0x00, 0x7d, 0x00, 0x00, 0x08, 0x00); // jmp dword 0x08:0x7d00
        }));
        _mem.Write(0x7d00, Asm(32, 0x7d00, a => { a.mov(eax, 0x10); a.mov(ds, eax); a.mov(ss, eax); a.nop(); }));
        RunTo(cpu, 0x7d00);
        Assert.Equal(new SegmentDescriptor(0x500, 0x3f, 0), cpu.Gdtr);
        Assert.Equal(0x08, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0xffffffffu, cpu.Segs[(int)Seg.Cs].Descriptor.Limit);
        Assert.Equal(32, cpu.CodeBitness);
        Assert.Equal(0x9bu, (uint)(_mem.Read64(Gdt + 8) >> 40) & 0xff);
        RunTo(cpu, 0x7d09); // mov eax, 0x10; mov ds, eax; mov ss, eax
        Assert.Equal(CpuState.ShadowMovSs, cpu.InterruptShadow);
        Assert.Equal(0x10, cpu.Segs[(int)Seg.Ss].Selector);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0, cpu.InterruptShadow);
    }

    [Fact]
    public void Protected_mode_to_long_mode_via_cr4_cr3_wrmsr_cr0_and_far_jmp()
    {
        MapLow();
        var cpu = Protected32();
        var enable = Asm(32, 0x1000, a =>
        {
            a.mov(eax, cr4); a.or(eax, 0x20); a.mov(cr4, eax);
            a.mov(eax, 0x10000); a.mov(cr3, eax);
            a.mov(ecx, 0xc0000080); a.rdmsr(); a.or(eax, 0x100); a.wrmsr();
            a.mov(eax, cr0); a.or(eax, unchecked((int)0x80000000)); a.mov(cr0, eax);
        });
        _mem.Write(0x1000, enable);
        _mem.Write(0x1000 + (ulong)enable.Length, new byte[] { 0xea, 0x00, 0x20, 0x00, 0x00, 0x18, 0x00 }); // jmp 0x18:0x2000
        _mem.Write(0x2000, Asm(64, 0x2000, a => { a.mov(rax, 0x123456789abcdefL); a.nop(); }));
        RunTo(cpu, 0x1000 + (ulong)enable.Length);
        Assert.NotEqual(0ul, cpu.Efer & CpuState.EferLma);
        Assert.Equal(CpuMode.Compatibility32, cpu.Mode);
        Assert.Equal(PagingMode.Level4, cpu.Paging);
        RunTo(cpu, 0x2000);
        Assert.Equal(CpuMode.Long64, cpu.Mode);
        Assert.Equal(64, cpu.CodeBitness);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x123456789abcdeful, cpu.Gpr[0]);
    }

    [Fact]
    public void Mov_cr_rejects_invalid_values_with_GP0()
    {
        StepResult Cr0(ulong v, CpuState? c = null)
        {
            c ??= Protected32();
            c.Gpr[0] = v;
            if (c.CodeBitness == 64) return Run(c, a => a.mov(cr0, rax));
            return Run(c, a => a.mov(cr0, eax));
        }
        AssertGp0(Cr0(0x80000010));                    // PG without PE
        AssertGp0(Cr0(0x20000011));                    // NW without CD
        var lme = Protected32(); lme.Efer = CpuState.EferLme;
        AssertGp0(Cr0(0x80000011, lme));               // PG with LME but CR4.PAE clear
        AssertGp0(Cr0(1ul << 32 | 0x80000011, Long64())); // bits 63:32
        AssertGp0(Cr0(0x11, Long64()));                // clearing PG in 64-bit mode
        AssertGp0(Cr0(0x11, Protected32(3)));          // CPL 3

        var c = Long64();
        c.Gpr[0] = c.Cr4 & ~CpuState.Cr4Pae;
        AssertGp0(Run(c, a => a.mov(cr4, rax)));      // PAE clear while EFER.LMA=1
        c.Gpr[0] = c.Cr4 | CpuState.Cr4La57;
        AssertGp0(Run(c, a => a.mov(cr4, rax)));      // LA57 change in IA-32e mode
        c.Gpr[0] = c.Cr4 | 1ul << 15;
        AssertGp0(Run(c, a => a.mov(cr4, rax)));      // reserved bit
        c.Gpr[0] = 1ul << 52;
        AssertGp0(Run(c, a => a.mov(cr3, rax)));      // beyond MAXPHYADDR
        c.Gpr[0] = 0x10;
        AssertGp0(Run(c, a => a.mov(cr8, rax)));      // CR8 bits 63:4
        c.Gpr[0] = 0x7;
        Assert.True(Run(c, a => a.mov(cr8, rax)).IsOk);
        Assert.Equal(7ul, c.Cr8);

        // Ok values: CR0 keeps ET set and ignores reserved bits 31:0.
        var p = Protected32();
        Assert.True(Cr0(0x00000021 | 1u << 8, p).IsOk);
        Assert.Equal(0x31ul, p.Cr0);
    }

    [Fact]
    public void Enabling_PAE_paging_checks_the_PDPTEs()
    {
        var c = Protected32();
        c.Cr4 = CpuState.Cr4Pae;
        c.Cr3 = 0x20000;
        _mem.Write64(0x20000, 0x21000 | 1 | 4); // bit 2 is reserved in a PDPTE
        c.Gpr[0] = 0x80000011;
        AssertGp0(Run(c, a => a.mov(cr0, eax)));
        Assert.Equal(0ul, c.Cr0 & CpuState.Cr0Pg);
        _mem.Write64(0x20000, 0x21000 | 1);
        Assert.True(Run(c, a => a.mov(cr0, eax)).IsOk);
        Assert.Equal(PagingMode.Pae, c.Paging);
    }

    [Fact]
    public void Clearing_cr0_pg_in_compatibility_mode_leaves_long_mode()
    {
        var c = Long64();
        c.Segs[(int)Seg.Cs] = new SegmentRegister(0x08, new SegmentDescriptor(0, 0xffffffff, 0xc09b));
        c.Gpr[0] = 0x11;
        Assert.True(Run(c, a => a.mov(cr0, eax)).IsOk);
        Assert.Equal(0ul, c.Efer & CpuState.EferLma);
        Assert.Equal(CpuMode.Protected32, c.Mode);
    }

    [Fact]
    public void Lgdt_sgdt_lidt_sidt_in_16_32_and_64_bit_forms()
    {
        var c = Protected32();
        _mem.Write(0x3000, new byte[] { 0xff, 0x07, 0x44, 0x33, 0x22, 0x11 });
        Assert.True(Run(c, a => a.lidt(__[0x3000])).IsOk);
        Assert.Equal(new SegmentDescriptor(0x11223344, 0x7ff, 0), c.Idtr);
        Assert.True(Run(c, a => a.sidt(__[0x3010])).IsOk);
        Assert.Equal(new byte[] { 0xff, 0x07, 0x44, 0x33, 0x22, 0x11 }, _mem.Ram.AsSpan(0x3010, 6).ToArray());
        // 16-bit operand size: a 24-bit base, and SGDT stores the high byte as 0.
        Assert.True(Run(c, 0x66, 0x0f, 0x01, 0x15, 0x00, 0x30, 0x00, 0x00).IsOk); // o16 lgdt [0x3000]
        Assert.Equal(new SegmentDescriptor(0x223344, 0x7ff, 0), c.Gdtr);
        _mem.Write(0x3020, new byte[] { 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa });
        Assert.True(Run(c, 0x66, 0x0f, 0x01, 0x05, 0x20, 0x30, 0x00, 0x00).IsOk); // o16 sgdt [0x3020]
        Assert.Equal(new byte[] { 0xff, 0x07, 0x44, 0x33, 0x22, 0x00 }, _mem.Ram.AsSpan(0x3020, 6).ToArray());
        // 64-bit mode: 8-byte base.
        var l = Long64();
        _mem.Write(0x3040, new byte[] { 0x0f, 0, 8, 7, 6, 5, 4, 3, 2, 1 });
        Assert.True(Run(l, a => a.lgdt(__[0x3040])).IsOk);
        Assert.Equal(new SegmentDescriptor(0x0102030405060708, 0xf, 0), l.Gdtr);
        Assert.True(Run(l, a => a.sgdt(__[0x3060])).IsOk);
        Assert.Equal(0x0102030405060708ul, _mem.Read64(0x3062));
        // LGDT at CPL 3 and SGDT at CPL 3 under UMIP are #GP(0); SGDT at CPL 3 without UMIP is allowed.
        AssertGp0(Run(Protected32(3), a => a.lgdt(__[0x3000])));
        Assert.True(Run(Protected32(3), a => a.sgdt(__[0x3000])).IsOk);
        var u = Protected32(3); u.Cr4 |= CpuState.Cr4Umip;
        AssertGp0(Run(u, a => a.sgdt(__[0x3000])));
    }

    [Fact]
    public void Ltr_marks_the_TSS_busy_and_lldt_loads_the_LDT()
    {
        var c = Protected32();
        c.Gpr[0] = 0x20;
        Assert.True(Run(c, a => a.ltr(ax)).IsOk);
        Assert.Equal(0x20, c.Tr.Selector);
        Assert.Equal(0x3000ul, c.Tr.Descriptor.Base);
        Assert.Equal(0x8bu, c.Tr.Descriptor.Access & 0xff);
        Assert.Equal(0x8bu, (uint)(_mem.Read64(Gdt + 0x20) >> 40) & 0xff); // busy in the GDT
        var r = Run(c, a => a.ltr(ax)); // a busy TSS cannot be loaded again
        Assert.Equal(Vector.GP, r.Exception.Vector);
        Assert.Equal(0x20u, r.Exception.ErrorCode);
        c.Gpr[0] = 0x28;
        Assert.True(Run(c, a => a.lldt(ax)).IsOk);
        Assert.Equal(new SegmentRegister(0x28, new SegmentDescriptor(0x4000, 0xfff, 0x82)), c.Ldtr);
        Assert.True(Run(c, a => a.sldt(ebx)).IsOk);
        Assert.Equal(0x28ul, c.Gpr[3]);
        Assert.True(Run(c, a => a.str(__word_ptr[0x3100])).IsOk);
        Assert.Equal(0x20u, _mem.Read32(0x3100) & 0xffff);
        c.Gpr[0] = 0x08;
        r = Run(c, a => a.lldt(ax)); // a code segment is not an LDT
        Assert.Equal(0x08u, r.Exception.ErrorCode);
        c.Gpr[0] = 0;
        Assert.True(Run(c, a => a.lldt(ax)).IsOk);
        Assert.NotEqual(0u, c.Ldtr.Descriptor.Access & SegmentDescriptor.Unusable);
        // Real mode: #UD.
        var real = new CpuState();
        real.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        real.Rip = 0x7c00;
        AssertUd(Run(real, a => a.lldt(ax)));
    }

    [Fact]
    public void Lmsw_cannot_clear_PE_and_smsw_clts_work()
    {
        var c = Protected32();
        c.Cr0 |= CpuState.Cr0Ts;
        c.Gpr[0] = 0xfff0;
        Assert.True(Run(c, a => a.lmsw(ax)).IsOk);
        Assert.Equal(1ul, c.Cr0 & 0xf); // PE kept; MP/EM/TS from the operand (all clear)
        c.Gpr[0] = 0xe;
        Assert.True(Run(c, a => a.lmsw(ax)).IsOk);
        Assert.Equal(0xful, c.Cr0 & 0xf);
        Assert.True(Run(c, a => a.clts()).IsOk);
        Assert.Equal(0ul, c.Cr0 & CpuState.Cr0Ts);
        Assert.True(Run(c, a => a.smsw(ebx)).IsOk);
        Assert.Equal(c.Cr0 & 0xffffffff, c.Gpr[3]);
        AssertGp0(Run(Protected32(3), a => a.clts()));
    }

    [Fact]
    public void Mov_dr_aliases_dr4_dr5_and_honours_DE_and_GD()
    {
        var c = Protected32();
        c.Gpr[0] = 0x12345;
        Assert.True(Run(c, a => a.mov(dr0, eax)).IsOk);
        Assert.Equal(0x12345ul, c.Dr[0]);
        c.Gpr[0] = 0;
        Assert.True(Run(c, 0x0f, 0x23, 0xe8).IsOk); // mov dr5, eax: DR7 without CR4.DE
        Assert.Equal(0x400ul, c.Dr[7]);
        c.Cr4 |= CpuState.Cr4De;
        AssertUd(Run(c, 0x0f, 0x23, 0xe8));
        c.Dr[7] |= 1ul << 13; // GD
        var r = Run(c, a => a.mov(ebx, dr0));
        Assert.Equal(Vector.DB, r.Exception.Vector);
        Assert.NotEqual(0ul, c.Dr[6] & (1ul << 13));
        Assert.Equal(0ul, c.Dr[7] & (1ul << 13));
        AssertGp0(Run(Protected32(3), a => a.mov(ebx, dr7)));
    }

    [Fact]
    public void Cli_sti_follow_IOPL_and_STI_opens_a_shadow()
    {
        var c = Protected32(3);
        AssertGp0(Run(c, a => a.cli()));                       // CPL 3 > IOPL 0
        c.Rflags |= CpuState.FlagIopl;
        Assert.True(Run(c, a => a.cli()).IsOk);
        Assert.Equal(0ul, c.Rflags & CpuState.FlagIf);
        Assert.True(Run(c, a => a.sti()).IsOk);
        Assert.NotEqual(0ul, c.Rflags & CpuState.FlagIf);
        Assert.Equal(CpuState.ShadowSti, c.InterruptShadow);
        Assert.True(Run(c, a => a.sti()).IsOk);                // IF already set: no new shadow
        Assert.Equal(0, c.InterruptShadow);
        var pvi = Protected32(3); pvi.Cr4 |= CpuState.Cr4Pvi; pvi.Rflags |= CpuState.FlagIf | CpuState.FlagVif;
        Assert.True(Run(pvi, a => a.cli()).IsOk);              // PVI: CLI clears VIF, IF untouched
        Assert.Equal(0ul, pvi.Rflags & CpuState.FlagVif);
        Assert.NotEqual(0ul, pvi.Rflags & CpuState.FlagIf);
        var v86 = Protected32(); v86.Rflags |= CpuState.FlagVm; v86.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0xf3));
        AssertGp0(Run(v86, a => a.cli()));                     // virtual-8086, IOPL 0, no VME
    }

    [Fact]
    public void Popf_keeps_IOPL_and_IF_by_privilege()
    {
        var c = Protected32(3);
        c.Rflags = 2 | CpuState.FlagIf;
        _mem.Write32(0x7ffc, (uint)(CpuState.FlagIopl | CpuState.FlagCf | CpuState.FlagVm | CpuState.FlagAc));
        c.Gpr[4] = 0x7ffc;
        Assert.True(Run(c, a => a.popfd()).IsOk);
        Assert.Equal(2 | CpuState.FlagCf | CpuState.FlagAc | CpuState.FlagIf, c.Rflags); // IOPL and IF unchanged, VM ignored
        Assert.Equal(0x8000ul, c.Gpr[4]);
        var k = Protected32();
        _mem.Write32(0x7ffc, (uint)(CpuState.FlagIopl | CpuState.FlagCf | CpuState.FlagVm));
        k.Gpr[4] = 0x7ffc;
        k.Rflags = 2 | CpuState.FlagIf;
        Assert.True(Run(k, a => a.popfd()).IsOk);
        Assert.Equal(2 | CpuState.FlagCf | CpuState.FlagIopl, k.Rflags); // CPL 0: IOPL and IF from the stack, VM never
    }

    private sealed class FixedCpuid : ICpuidModel
    {
        public CpuidResult Query(CpuState cpu, uint leaf, uint subleaf) => new(leaf, subleaf, 0xc, 0xd);
    }

    private sealed class ApicBaseMsr : IMsrHandler
    {
        public ulong Value = 0xfee00900;
        public bool TryRead(CpuState cpu, uint index, out ulong value) { value = Value; return index == 0x1b; }
        public bool TryWrite(CpuState cpu, uint index, ulong value) { if (index != 0x1b) return false; Value = value; return true; }
    }

    private sealed class FixedTsc : ITscSource
    {
        public ulong ReadTsc(CpuState cpu) => 0x1122334455667788;
    }

    [Fact]
    public void Cpuid_msr_and_tsc_go_through_the_pluggable_models()
    {
        var c = Long64();
        Assert.True(Run(c, a => a.cpuid()).IsOk); // default model: GenuineIntel
        Assert.Equal(0x756e6547ul, c.Gpr[3]);
        _engine.Cpuid = new FixedCpuid();
        c.Gpr[0] = 0xffffffff_00000007; c.Gpr[1] = 3;
        Assert.True(Run(c, a => a.cpuid()).IsOk);
        Assert.Equal(new ulong[] { 7, 3, 0xc, 0xd }, new[] { c.Gpr[0], c.Gpr[3], c.Gpr[1], c.Gpr[2] });

        var apic = new ApicBaseMsr();
        _engine.Msrs = apic;
        c.Gpr[1] = 0x1b;
        Assert.True(Run(c, a => a.rdmsr()).IsOk);
        Assert.Equal(0xfee00900ul, c.Gpr[0]);
        Assert.Equal(0ul, c.Gpr[2]);
        c.Gpr[0] = 0xfee00800; c.Gpr[2] = 0;
        Assert.True(Run(c, a => a.wrmsr()).IsOk);
        Assert.Equal(0xfee00800ul, apic.Value);
        // Defaults on CpuState: LSTAR, with a non-canonical write refused.
        c.Gpr[1] = ArchitecturalMsrs.Lstar; c.Gpr[0] = 0x89abcdef; c.Gpr[2] = 0xffff8000;
        Assert.True(Run(c, a => a.wrmsr()).IsOk);
        Assert.Equal(0xffff800089abcdeful, c.Lstar);
        c.Gpr[2] = 0x00008000;
        AssertGp0(Run(c, a => a.wrmsr()));
        c.Gpr[1] = ArchitecturalMsrs.FsBase; c.Gpr[0] = 0x1000; c.Gpr[2] = 0;
        Assert.True(Run(c, a => a.wrmsr()).IsOk);
        Assert.Equal(0x1000ul, c.Segs[(int)Seg.Fs].Descriptor.Base);
        // EFER: LME cannot change with paging on; unknown MSRs are #GP(0).
        c.Gpr[1] = ArchitecturalMsrs.Efer; c.Gpr[0] = c.Efer & ~CpuState.EferLme; c.Gpr[2] = 0;
        AssertGp0(Run(c, a => a.wrmsr()));
        c.Gpr[1] = 0x12345;
        AssertGp0(Run(c, a => a.rdmsr()));
        AssertGp0(Run(Protected32(3), a => a.rdmsr()));

        _engine.Tsc = new FixedTsc();
        c.TscAux = 5;
        Assert.True(Run(c, a => a.rdtscp()).IsOk);
        Assert.Equal(0x55667788ul, c.Gpr[0]);
        Assert.Equal(0x11223344ul, c.Gpr[2]);
        Assert.Equal(5ul, c.Gpr[1]);
        var user = Protected32(3); user.Cr4 |= CpuState.Cr4Tsd;
        AssertGp0(Run(user, a => a.rdtsc()));
        user.Cr4 &= ~CpuState.Cr4Tsd;
        Assert.True(Run(user, a => a.rdtsc()).IsOk);
    }

    [Fact]
    public void Enter_and_leave_build_and_drop_a_nested_frame()
    {
        var c = Protected32();
        c.Gpr[5] = 0x7f00;
        _mem.Write32(0x7efc, 0xaaaa);
        Assert.True(Run(c, a => a.enter(0x10, 2)).IsOk);
        // push ebp; copy one outer frame pointer; push the new frame; allocate 16 bytes.
        Assert.Equal(0x7ffcul, c.Gpr[5]);
        Assert.Equal(0x7f00u, _mem.Read32(0x7ffc));
        Assert.Equal(0xaaaau, _mem.Read32(0x7ff8));
        Assert.Equal(0x7ffcu, _mem.Read32(0x7ff4));
        Assert.Equal(0x7ff4ul - 0x10, c.Gpr[4]);
        Assert.True(Run(c, a => a.leave()).IsOk);
        Assert.Equal(0x7f00ul, c.Gpr[5]);
        Assert.Equal(0x8000ul, c.Gpr[4]);
    }

    [Fact]
    public void Privileged_instructions_fault_at_CPL3()
    {
        AssertGp0(Run(Protected32(3), a => a.wbinvd()));
        AssertGp0(Run(Protected32(3), a => a.invlpg(__[0x1000])));
        AssertGp0(Run(Protected32(3), a => a.mov(eax, cr0)));
        AssertGp0(Run(Protected32(3), a => a.hlt()));
        Assert.True(Run(Protected32(), a => a.invd()).IsOk);
    }

    [Fact]
    public void Syscall_sysret_and_swapgs_round_trip()
    {
        var c = Long64();
        c.Star = 0x0023_0008_0000_0000; // kernel CS 0x08 / SS 0x10; user base 0x20 -> CS 0x33, SS 0x2b
        c.Lstar = 0x5000;
        c.Sfmask = CpuState.FlagIf | CpuState.FlagDf;
        c.Segs[(int)Seg.Cs] = new SegmentRegister(0x33, new SegmentDescriptor(0, 0xffffffff, 0xa0fb));
        c.Segs[(int)Seg.Ss] = new SegmentRegister(0x2b, new SegmentDescriptor(0, 0xffffffff, 0xc0f3));
        c.Rflags = 2 | CpuState.FlagIf | CpuState.FlagCf;
        Assert.True(Run(c, a => a.syscall()).IsOk);
        Assert.Equal(0x5000ul, c.Rip);
        Assert.Equal(0x1002ul, c.Gpr[1]);
        Assert.Equal(2 | CpuState.FlagIf | CpuState.FlagCf, c.Gpr[11]);
        Assert.Equal(2 | CpuState.FlagCf, c.Rflags);
        Assert.Equal(0, c.Cpl);
        Assert.Equal(0x08, c.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x10, c.Segs[(int)Seg.Ss].Selector);
        c.KernelGsBase = 0xffff800000001000; c.Segs[(int)Seg.Gs].Descriptor = c.Segs[(int)Seg.Gs].Descriptor with { Base = 0x7000 };
        Assert.True(Run(c, a => a.swapgs()).IsOk);
        Assert.Equal(0xffff800000001000ul, c.Segs[(int)Seg.Gs].Descriptor.Base);
        Assert.Equal(0x7000ul, c.KernelGsBase);
        Assert.True(Run(c, a => a.sysretq()).IsOk);
        Assert.Equal(0x1002ul, c.Rip);
        Assert.Equal(3, c.Cpl);
        Assert.Equal(0x33, c.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x2b, c.Segs[(int)Seg.Ss].Selector);
        Assert.Equal(CpuMode.Long64, c.Mode);
        Assert.NotEqual(0ul, c.Rflags & CpuState.FlagIf);
        AssertGp0(Run(c, a => a.sysretq()));   // CPL 3
        AssertGp0(Run(c, a => a.swapgs()));
        c.Efer &= ~CpuState.EferSce;
        AssertUd(Run(c, a => a.syscall()));
    }

    [Fact]
    public void Sysenter_sysexit_in_protected_mode()
    {
        var c = Protected32(3);
        AssertGp0(Run(c, a => a.sysenter()));  // SYSENTER_CS null
        c.SysenterCs = 0x08; c.SysenterEip = 0x5000; c.SysenterEsp = 0x20000;
        Assert.True(Run(c, a => a.sysenter()).IsOk);
        Assert.Equal(0, c.Cpl);
        Assert.Equal(0x5000ul, c.Rip);
        Assert.Equal(0x20000ul, c.Gpr[4]);
        Assert.Equal(CpuMode.Protected32, c.Mode);
        c.Gpr[2] = 0x1234; c.Gpr[1] = 0x7000;
        Assert.True(Run(c, a => a.sysexit()).IsOk);
        Assert.Equal(3, c.Cpl);
        Assert.Equal(0x1b, c.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x23, c.Segs[(int)Seg.Ss].Selector);
        Assert.Equal(0x1234ul, c.Rip);
        Assert.Equal(0x7000ul, c.Gpr[4]);
    }

    [Fact]
    public void Segment_far_and_system_instructions_do_not_allocate()
    {
        var c = Protected32();
        c.Gdtr = new SegmentDescriptor(Gdt, 0x3f, 0);
        c.Idtr = new SegmentDescriptor(0x6000, 0x7ff, 0);
        _mem.Write64(0x6000 + 8 * 0x40, 0x00008e0000081000 | 0x1000); // int 0x40 -> 0x08:0x1000 (loops back)
        _mem.Write(0x1000, Asm(32, 0x1000, a =>
        {
            a.mov(eax, 0x10); a.mov(ds, eax); a.push(ds); a.pop(es);
            a.cpuid();
            a.mov(ecx, 0xc0000080); a.rdmsr(); a.rdtsc();
            a.mov(eax, cr0); a.mov(cr0, eax);
            a.sgdt(__[0x3000]); a.lgdt(__[0x3000]);
            a.cli(); a.pushfd(); a.popfd();
        }));
        int len = Asm(32, 0x1000, a =>
        {
            a.mov(eax, 0x10); a.mov(ds, eax); a.push(ds); a.pop(es);
            a.cpuid();
            a.mov(ecx, 0xc0000080); a.rdmsr(); a.rdtsc();
            a.mov(eax, cr0); a.mov(cr0, eax);
            a.sgdt(__[0x3000]); a.lgdt(__[0x3000]);
            a.cli(); a.pushfd(); a.popfd();
        }).Length;
        _mem.Write(0x1000 + (ulong)len, new byte[] { 0xea, 0x00, 0x10, 0x00, 0x00, 0x08, 0x00 }); // jmp 0x08:0x1000
        void Loop()
        {
            for (int k = 0; k < 300; k++)
            {
                var r = _engine.Step(c);
                Assert.True(r.IsOk);
            }
            c.Gpr[4] = 0x8000;
            _engine.Deliver(c, new PendingException(0x40, false, 0, 0));
            c.Gpr[4] = 0x8000;
        }
        Loop();
        long before = GC.GetAllocatedBytesForCurrentThread();
        Loop();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void Pusha_popa_round_trip_and_popa_skips_sp()
    {
        var c = Protected32();
        for (int r = 0; r < 8; r++) c.Gpr[r] = 0x1000u * (uint)(r + 1) + (r == 4 ? 0x8000u - 0x5000u : 0);
        c.Gpr[4] = 0x8000;
        Assert.True(Run(c, a => a.pushad()).IsOk);
        Assert.Equal(0x7fe0ul, c.Gpr[4]);
        Assert.Equal(0x8000u, _mem.Read32(0x7fe0 + 12)); // the original ESP
        Assert.Equal(0x1000u, _mem.Read32(0x7ffc));      // EAX first
        for (int r = 0; r < 8; r++) if (r != 4) c.Gpr[r] = 0;
        _mem.Write32(0x7fe0 + 12, 0xdead);
        Assert.True(Run(c, a => a.popad()).IsOk);
        Assert.Equal(0x8000ul, c.Gpr[4]);
        Assert.Equal(new ulong[] { 0x1000, 0x2000, 0x3000, 0x4000 }, c.Gpr[..4]);
        Assert.Equal(new ulong[] { 0x6000, 0x7000, 0x8000 }, c.Gpr[5..8]);
        Assert.True(Run(c, a => a.pause()).IsOk);
        Assert.True(Run(c, a => a.mfence()).IsOk);
        Assert.True(Run(c, a => a.clflush(__byte_ptr[0x3000])).IsOk);
    }

    [Fact]
    public void Bcd_adjustments_follow_the_SDM_examples()
    {
        var c = new CpuState();
        c.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        c.Rip = 0x7c00;
        StepResult Do(ulong ax, ulong flags, params byte[] code) { c.Gpr[0] = ax; c.Rflags = 2 | flags; c.Rip = 0x7c00; return Run(c, code); }
        Assert.True(Do(0xae, 0, 0x27).IsOk); // 79h + 35h = AEh; DAA -> 14h, CF
        Assert.Equal(0x14ul, c.Gpr[0] & 0xff);
        Assert.NotEqual(0ul, c.Rflags & CpuState.FlagCf);
        Assert.True(Do(0xee, CpuState.FlagCf | CpuState.FlagAf, 0x2f).IsOk); // 35h - 47h = EEh; DAS -> 88h, CF
        Assert.Equal(0x88ul, c.Gpr[0] & 0xff);
        Assert.NotEqual(0ul, c.Rflags & CpuState.FlagCf);
        Assert.True(Do(0x000b, 0, 0x37).IsOk); // AAA: 0Bh -> AX 0101h
        Assert.Equal(0x0101ul, c.Gpr[0] & 0xffff);
        Assert.True(Do(0x05ff, CpuState.FlagAf, 0x3f).IsOk); // AAS after 08h - 09h: AX 0409h
        Assert.Equal(0x0409ul, c.Gpr[0] & 0xffff);
        Assert.True(Do(0x003f, 0, 0xd4, 0x0a).IsOk); // AAM: 63 -> AH 6, AL 3
        Assert.Equal(0x0603ul, c.Gpr[0] & 0xffff);
        Assert.True(Do(0x0603, 0, 0xd5, 0x0a).IsOk); // AAD: back to 63
        Assert.Equal(0x003ful, c.Gpr[0] & 0xffff);
        var r = Do(0x0603, 0, 0xd4, 0x00); // AAM 0: #DE
        Assert.Equal(Vector.DE, r.Exception.Vector);
        Assert.True(Do(0, CpuState.FlagCf, 0xd6).IsOk); // SALC
        Assert.Equal(0xfful, c.Gpr[0] & 0xff);
    }

    [Fact]
    public void Bound_arpl_clac_stac_and_fsgsbase()
    {
        var c = Protected32();
        _mem.Write32(0x3000, unchecked((uint)-5)); _mem.Write32(0x3004, 10);
        c.Gpr[0] = 10;
        Assert.True(Run(c, a => a.bound(eax, __qword_ptr[0x3000])).IsOk);
        c.Gpr[0] = unchecked((uint)-6);
        Assert.Equal(5, Run(c, a => a.bound(eax, __qword_ptr[0x3000])).Exception.Vector);
        c.Gpr[0] = 0x10; c.Gpr[3] = 0x23;
        Assert.True(Run(c, a => a.arpl(ax, bx)).IsOk);
        Assert.Equal(0x13ul, c.Gpr[0]);
        Assert.NotEqual(0ul, c.Rflags & CpuState.FlagZf);
        Assert.True(Run(c, a => a.stac()).IsOk);
        Assert.NotEqual(0ul, c.Rflags & CpuState.FlagAc);
        Assert.True(Run(c, a => a.clac()).IsOk);
        Assert.Equal(0ul, c.Rflags & CpuState.FlagAc);
        AssertUd(Run(Protected32(3), a => a.stac()));
        var l = Long64();
        l.Gpr[0] = 0x12345000;
        AssertUd(Run(l, a => a.wrfsbase(rax)));        // CR4.FSGSBASE clear
        l.Cr4 |= 1ul << 16;
        Assert.True(Run(l, a => a.wrfsbase(rax)).IsOk);
        Assert.Equal(0x12345000ul, l.Segs[(int)Seg.Fs].Descriptor.Base);
        Assert.True(Run(l, a => a.rdfsbase(rbx)).IsOk);
        Assert.Equal(0x12345000ul, l.Gpr[3]);
        l.Gpr[0] = 0x0000800000000000;
        AssertGp0(Run(l, a => a.wrgsbase(rax)));
    }

    /// <summary>Probing instructions the model does not report raise #UD as hardware does, instead of stopping the VM.</summary>
    [Theory]
    [InlineData(new byte[] { 0x0f, 0x01, 0xc1 }, "VMCALL")]
    [InlineData(new byte[] { 0x0f, 0x01, 0xd9 }, "VMMCALL")]
    [InlineData(new byte[] { 0x0f, 0x01, 0xc4 }, "VMXOFF")]
    [InlineData(new byte[] { 0x0f, 0x01, 0xd8 }, "VMRUN")]
    [InlineData(new byte[] { 0x0f, 0x01, 0xd0 }, "XGETBV with CR4.OSXSAVE clear")]
    [InlineData(new byte[] { 0x0f, 0x01, 0xd1 }, "XSETBV with CR4.OSXSAVE clear")]
    [InlineData(new byte[] { 0xc6, 0xf8, 0x00 }, "XABORT")]
    [InlineData(new byte[] { 0x0f, 0x01, 0xd6 }, "XTEST")]
    public void UnreportedInstructionsRaiseUd(byte[] code, string what)
    {
        var r = Run(Protected32(), code);
        Assert.True(r.Status == StepStatus.Exception && r.Exception.Vector == Vector.UD, $"{what}: {r.Status} {r.Exception.Vector}");
    }

    /// <summary>0F 18 /4-7, 0F 19-0F 1E and 0F 0D with a register operand are reserved hint NOPs: they execute and advance RIP.</summary>
    [Theory]
    [InlineData(new byte[] { 0x0f, 0x18, 0x20 })]
    [InlineData(new byte[] { 0x0f, 0x19, 0x00 })]
    [InlineData(new byte[] { 0x0f, 0x1c, 0xc0 })]
    [InlineData(new byte[] { 0x0f, 0x1e, 0x00 })]
    [InlineData(new byte[] { 0x0f, 0x0d, 0xc0 })]
    public void HintNopsExecute(byte[] code)
    {
        var cpu = Protected32();
        Assert.True(Run(cpu, code).IsOk);
        Assert.Equal(0x1000ul + (ulong)code.Length, cpu.Rip);
    }

    /// <summary>RDPMC: #GP(0) at CPL 3 without CR4.PCE, and #GP(0) for a counter the model (no PMU in CPUID leaf 0xA) lacks.</summary>
    [Fact]
    public void RdpmcFaultsWithoutCounters()
    {
        AssertGp0(Run(Protected32(cpl: 3), 0x0f, 0x33));
        AssertGp0(Run(Protected32(), 0x0f, 0x33));
    }
}
