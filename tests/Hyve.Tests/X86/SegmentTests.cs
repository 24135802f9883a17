// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.X86;

/// <summary>Segment-register loads and far transfers (SDM Vol. 3 5.5-5.8; Vol. 2 MOV, POP, LDS, JMP, CALL, RET).</summary>
public class SegmentTests
{
    private const ulong Gdt = 0x500, Ldt = 0x600;
    // Selectors into the test GDT.
    private const ushort Code32 = 0x08, Data32 = 0x10, Code64 = 0x18, Code16 = 0x20, DataRo = 0x28, CodeXo = 0x30,
        DataNp = 0x38, DataDpl3 = 0x40, CodeDpl3 = 0x48, ConformingDpl3 = 0x50, CodeNp = 0x58, Ldt0Data = 0x04;

    private readonly TestMemory _mem = new(4 << 20);
    private readonly InstructionEngine _engine;

    public SegmentTests()
    {
        _engine = new InstructionEngine(_mem);
        // Descriptors with the accessed bit clear so the tests can see it being set.
        _mem.Write64(Gdt + 0x08, 0x00cf9a000000ffff); // flat 32-bit code, readable
        _mem.Write64(Gdt + 0x10, 0x00cf92000000ffff); // flat 32-bit data, writable
        _mem.Write64(Gdt + 0x18, 0x00af9a000000ffff); // 64-bit code (L=1)
        _mem.Write64(Gdt + 0x20, 0x00009a012345ffff); // 16-bit code, base 0x12345, limit 0xffff
        _mem.Write64(Gdt + 0x28, 0x00cf90000000ffff); // read-only data
        _mem.Write64(Gdt + 0x30, 0x00cf98000000ffff); // execute-only code
        _mem.Write64(Gdt + 0x38, 0x00cf12000000ffff); // data, not present
        _mem.Write64(Gdt + 0x40, 0x00cff2000000ffff); // data DPL 3
        _mem.Write64(Gdt + 0x48, 0x00cffa000000ffff); // code DPL 3
        _mem.Write64(Gdt + 0x50, 0x00cf9e000000ffff); // conforming code DPL 0
        _mem.Write64(Gdt + 0x58, 0x00cf1a000000ffff); // code, not present
        _mem.Write64(Ldt + 0x00, 0x00cf92100000ffff); // LDT data, base 0x100000
    }

    private static uint Access(ulong raw) => (uint)(raw >> 40) & 0xff;

    private CpuState Protected32(int cpl = 0)
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x5f, 0);
        cpu.Ldtr = new SegmentRegister(0x60, new SegmentDescriptor(Ldt, 0x7, 0x82));
        if (cpl == 3)
        {
            cpu.Segs[(int)Seg.Cs] = new SegmentRegister(CodeDpl3 | 3, new SegmentDescriptor(0, 0xffffffff, 0xc0fb));
            cpu.Segs[(int)Seg.Ss] = new SegmentRegister(DataDpl3 | 3, new SegmentDescriptor(0, 0xffffffff, 0xc0f3));
        }
        cpu.Rip = 0x1000;
        cpu.Gpr[4] = 0x8000;
        return cpu;
    }

    private StepResult Run(CpuState cpu, params byte[] code)
    {
        ulong at = cpu.Segs[(int)Seg.Cs].Descriptor.Base + cpu.Rip;
        _mem.Write(at, code);
        return _engine.Step(cpu);
    }

    private static void AssertFault(StepResult r, byte vector, uint error)
    {
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(vector, r.Exception.Vector);
        Assert.True(r.Exception.HasErrorCode);
        Assert.Equal(error, r.Exception.ErrorCode);
    }

    [Fact]
    public void Far_jmp_after_setting_CR0_PE_enters_32_bit_protected_mode()
    {
        var cpu = new CpuState();
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0xf000, new SegmentDescriptor(0xf0000, 0xffff, 0x9b));
        cpu.Rip = 0x100;
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x5f, 0);
        cpu.Cr0 |= CpuState.Cr0Pe; // as the ROM's MOV CR0 left it: CS still holds the real-mode cache
        Assert.Equal(16, cpu.CodeBitness);
        // jmp dword far 0x08:0xffff1000 (66 EA), the instruction KVM could not emulate.
        var r = Run(cpu, 0x66, 0xea, 0x00, 0x10, 0xff, 0xff, 0x08, 0x00);
        Assert.Equal(StepStatus.Ok, r.Status);
        var cs = cpu.Segs[(int)Seg.Cs];
        Assert.Equal(Code32, cs.Selector);
        Assert.Equal(0ul, cs.Descriptor.Base);
        Assert.Equal(0xffffffffu, cs.Descriptor.Limit);
        Assert.Equal(0xc09bu, cs.Descriptor.Access);
        Assert.Equal(0xffff1000ul, cpu.Rip);
        Assert.Equal(32, cpu.CodeBitness);
        Assert.Equal(0x9bu, Access(_mem.Read64(Gdt + 8))); // accessed bit set in the GDT
    }

    [Fact]
    public void Far_jmp_beyond_the_new_CS_limit_is_GP0_and_changes_nothing()
    {
        var cpu = Protected32();
        var r = Run(cpu, 0xea, 0x00, 0x00, 0x01, 0x00, (byte)Code16, 0x00); // jmp 0x20:0x10000 (limit 0xffff)
        AssertFault(r, Vector.GP, 0);
        Assert.Equal(Code32, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x1000ul, cpu.Rip);
        Assert.Equal(0x9au, Access(_mem.Read64(Gdt + Code16)));
    }

    [Fact]
    public void Far_jmp_to_a_16_bit_segment_uses_its_base()
    {
        var cpu = Protected32();
        var r = Run(cpu, 0xea, 0x34, 0x12, 0x00, 0x00, (byte)Code16, 0x00);
        Assert.True(r.IsOk);
        Assert.Equal(0x12345ul, cpu.Segs[(int)Seg.Cs].Descriptor.Base);
        Assert.Equal(0x1234ul, cpu.Rip);
        Assert.Equal(CpuMode.Protected16, cpu.Mode);
    }

    [Fact]
    public void Far_jmp_to_a_64_bit_code_segment_from_compatibility_mode_switches_to_64_bit_decode()
    {
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        // Identity-map the first 2 MiB with PML4 -> PDPT -> PD (2 MiB page).
        _mem.Write64(0x10000, 0x11000 | 3);
        _mem.Write64(0x11000, 0x12000 | 3);
        _mem.Write64(0x12000, 0x83);
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x5f, 0);
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(Code32, new SegmentDescriptor(0, 0xffffffff, 0xc09b));
        cpu.Rip = 0x1000;
        Assert.Equal(CpuMode.Compatibility32, cpu.Mode);
        var r = Run(cpu, 0xea, 0x00, 0x20, 0x00, 0x00, (byte)Code64, 0x00); // jmp 0x18:0x2000
        Assert.True(r.IsOk);
        Assert.Equal(CpuMode.Long64, cpu.Mode);
        Assert.Equal(64, cpu.CodeBitness);
        Assert.Equal(0x2000ul, cpu.Rip);
        // The next instruction decodes as 64-bit: 48 B8 imm64 is MOV RAX, imm64.
        _mem.Write(0x2000, new byte[] { 0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8 });
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x0807060504030201ul, cpu.Gpr[0]);
    }

    [Fact]
    public void Far_jmp_checks_null_type_privilege_presence_and_table_limit()
    {
        AssertFault(Run(Protected32(), 0xea, 0, 0, 0, 0, 0x03, 0), Vector.GP, 0);                    // null selector
        AssertFault(Run(Protected32(), 0xea, 0, 0, 0, 0, 0x60, 0), Vector.GP, 0x60);                 // beyond GDT limit
        AssertFault(Run(Protected32(), 0xea, 0, 0, 0, 0, (byte)Data32, 0), Vector.GP, Data32);      // data segment
        AssertFault(Run(Protected32(), 0xea, 0, 0, 0, 0, (byte)CodeDpl3, 0), Vector.GP, CodeDpl3);  // DPL != CPL
        AssertFault(Run(Protected32(), 0xea, 0, 0, 0, 0, (byte)(Code32 | 3), 0), Vector.GP, Code32); // RPL > CPL
        AssertFault(Run(Protected32(), 0xea, 0, 0, 0, 0, (byte)CodeNp, 0), Vector.NP, CodeNp);      // not present
        AssertFault(Run(Protected32(3), 0xea, 0, 0, 0, 0, (byte)(Code32 | 3), 0), Vector.GP, Code32); // CPL 3 to DPL 0
        // A conforming segment accepts any CPL ≥ DPL and keeps the CPL in CS.RPL.
        var cpu = Protected32(3);
        Assert.True(Run(cpu, 0xea, 0, 0x20, 0, 0, (byte)(ConformingDpl3 | 3), 0).IsOk);
        Assert.Equal(ConformingDpl3 | 3, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(3, cpu.Cpl);
    }

    [Fact]
    public void Far_jmp_through_memory_pointer_m16_32()
    {
        var cpu = Protected32();
        _mem.Write32(0x3000, 0x4000);
        _mem.Write(0x3004, new byte[] { (byte)Code32, 0 });
        Assert.True(Run(cpu, 0xff, 0x2d, 0x00, 0x30, 0x00, 0x00).IsOk); // jmp far [0x3000]
        Assert.Equal(0x4000ul, cpu.Rip);
        Assert.Equal(Code32, cpu.Segs[(int)Seg.Cs].Selector);
    }

    [Fact]
    public void Mov_ds_loads_the_descriptor_and_sets_accessed()
    {
        var cpu = Protected32();
        cpu.Gpr[0] = Data32;
        Assert.True(Run(cpu, 0x8e, 0xd8).IsOk); // mov ds, eax
        Assert.Equal(Data32, cpu.Segs[(int)Seg.Ds].Selector);
        Assert.Equal(new SegmentDescriptor(0, 0xffffffff, 0xc093), cpu.Segs[(int)Seg.Ds].Descriptor);
        Assert.Equal(0x93u, Access(_mem.Read64(Gdt + Data32)));
        cpu.Gpr[0] = Ldt0Data; // TI=1: from the LDT
        Assert.True(Run(cpu, 0x8e, 0xc0).IsOk); // mov es, eax
        Assert.Equal(0x100000ul, cpu.Segs[(int)Seg.Es].Descriptor.Base);
    }

    [Fact]
    public void Mov_sreg_faults_with_the_SDM_error_codes()
    {
        StepResult MovDs(ushort sel, int cpl = 0) { var c = Protected32(cpl); c.Gpr[0] = sel; return Run(c, 0x8e, 0xd8); }
        StepResult MovSs(ushort sel, int cpl = 0) { var c = Protected32(cpl); c.Gpr[0] = sel; return Run(c, 0x8e, 0xd0); }
        AssertFault(MovSs(0), Vector.GP, 0);                         // null SS outside 64-bit mode
        AssertFault(MovDs(0x60), Vector.GP, 0x60);                   // beyond the GDT limit
        AssertFault(MovDs(0x0c), Vector.GP, 0x0c);                   // beyond the LDT limit
        AssertFault(MovDs(DataNp), Vector.NP, DataNp);               // not present
        AssertFault(MovSs(DataNp), Vector.SS, DataNp);               // SS not present: #SS, not #NP
        AssertFault(MovDs(CodeXo), Vector.GP, CodeXo);               // execute-only code
        AssertFault(MovSs(DataRo), Vector.GP, DataRo);               // SS must be writable
        AssertFault(MovSs(Code32), Vector.GP, Code32);               // SS must not be code
        AssertFault(MovSs(DataDpl3), Vector.GP, DataDpl3);           // SS: DPL != CPL
        AssertFault(MovSs(Data32 | 3), Vector.GP, Data32);           // SS: RPL != CPL
        AssertFault(MovDs(Data32 | 3, 3), Vector.GP, Data32);        // DS: CPL/RPL 3 > DPL 0
        AssertFault(MovDs(Data32 | 3), Vector.GP, Data32);           // DS: RPL 3 > DPL 0
        Assert.True(MovDs(ConformingDpl3 | 3, 3).IsOk);              // readable conforming code: no privilege check
        Assert.True(MovDs(DataDpl3 | 3, 3).IsOk);
    }

    [Fact]
    public void Null_selector_makes_a_data_segment_unusable_and_keeps_the_selector()
    {
        var cpu = Protected32();
        cpu.Gpr[0] = 3;
        Assert.True(Run(cpu, 0x8e, 0xe8).IsOk); // mov gs, eax
        Assert.Equal(3, cpu.Segs[(int)Seg.Gs].Selector);
        Assert.NotEqual(0u, cpu.Segs[(int)Seg.Gs].Descriptor.Access & SegmentDescriptor.Unusable);
        // Any access through the unusable segment is #GP(0).
        AssertFault(Run(cpu, 0x65, 0x8b, 0x00), Vector.GP, 0); // mov eax, gs:[eax]
    }

    [Fact]
    public void Mov_to_cs_is_UD_and_mov_ss_sets_the_interrupt_shadow()
    {
        var cpu = Protected32();
        var r = Run(cpu, 0x8e, 0xc8); // mov cs, eax
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.UD, r.Exception.Vector);
        cpu.Gpr[0] = Data32;
        Assert.True(Run(cpu, 0x8e, 0xd0).IsOk); // mov ss, eax
        Assert.Equal(CpuState.ShadowMovSs, cpu.InterruptShadow);
        Assert.True(Run(cpu, 0x90).IsOk);
        Assert.Equal(0, cpu.InterruptShadow);
    }

    [Fact]
    public void Real_mode_segment_load_sets_base_and_keeps_limit()
    {
        var cpu = new CpuState();
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        cpu.Segs[(int)Seg.Ds] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffffffff, 0x93)); // "unreal" DS
        cpu.Rip = 0x7c00;
        cpu.Gpr[0] = 0x1234;
        Assert.True(Run(cpu, 0x8e, 0xd8).IsOk); // mov ds, ax
        Assert.Equal(new SegmentRegister(0x1234, new SegmentDescriptor(0x12340, 0xffffffff, 0x93)), cpu.Segs[(int)Seg.Ds]);
        Assert.True(Run(cpu, 0x8c, 0xdb).IsOk); // mov bx, ds
        Assert.Equal(0x1234ul, cpu.Gpr[3]);
    }

    [Fact]
    public void Real_mode_far_call_and_retf_round_trip()
    {
        var cpu = new CpuState();
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        cpu.Rip = 0x7c00;
        cpu.Gpr[4] = 0x7000;
        Assert.True(Run(cpu, 0x9a, 0x10, 0x00, 0x00, 0x10).IsOk); // call 0x1000:0x0010
        Assert.Equal(0x1000, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x10000ul, cpu.Segs[(int)Seg.Cs].Descriptor.Base);
        Assert.Equal(0x10ul, cpu.Rip);
        Assert.Equal(0x6ffcul, cpu.Gpr[4]);
        Assert.Equal(0x7c05u, _mem.Read32(0x6ffc) & 0xffff); // return IP
        Assert.Equal(0u, _mem.Read32(0x6ffe) & 0xffff);      // return CS
        Assert.True(Run(cpu, 0xca, 0x04, 0x00).IsOk);        // retf 4
        Assert.Equal(0, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0ul, cpu.Segs[(int)Seg.Cs].Descriptor.Base);
        Assert.Equal(0x7c05ul, cpu.Rip);
        Assert.Equal(0x7004ul, cpu.Gpr[4]);
    }

    [Fact]
    public void Protected_mode_far_call_and_retf_round_trip()
    {
        var cpu = Protected32();
        Assert.True(Run(cpu, 0x9a, 0x00, 0x20, 0x00, 0x00, (byte)Code16, 0x00).IsOk); // call 0x20:0x2000
        Assert.Equal(Code16, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x2000ul, cpu.Rip);
        Assert.Equal(0x7ff8ul, cpu.Gpr[4]);
        Assert.Equal(0x1007u, _mem.Read32(0x7ff8));
        Assert.Equal((uint)Code32, _mem.Read32(0x7ffc));
        // In the 16-bit segment, a 32-bit RETF needs the 66 prefix.
        Assert.True(Run(cpu, 0x66, 0xcb).IsOk);
        Assert.Equal(Code32, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x1007ul, cpu.Rip);
        Assert.Equal(0x8000ul, cpu.Gpr[4]);
        Assert.Equal(CpuMode.Protected32, cpu.Mode);
    }

    [Fact]
    public void Retf_to_a_lower_RPL_is_GP_and_to_an_outer_level_switches_stacks()
    {
        var cpu = Protected32(3);
        _mem.Write32(0x8000, 0x1000);
        _mem.Write32(0x8004, Code32);
        AssertFault(Run(cpu, 0xcb), Vector.GP, Code32);
        // CPL 0 -> 3 with RETF 8: EIP, CS, 8 bytes of parameters, ESP, SS.
        cpu = Protected32();
        _mem.Write32(0x8000, 0x2000);
        _mem.Write32(0x8004, CodeDpl3 | 3);
        _mem.Write32(0x8010, 0x6000);
        _mem.Write32(0x8014, DataDpl3 | 3);
        Assert.True(Run(cpu, 0xca, 0x08, 0x00).IsOk);
        Assert.Equal(3, cpu.Cpl);
        Assert.Equal(0x2000ul, cpu.Rip);
        Assert.Equal(DataDpl3 | 3, cpu.Segs[(int)Seg.Ss].Selector);
        Assert.Equal(0x6008ul, cpu.Gpr[4]);
        Assert.Equal(0, cpu.Segs[(int)Seg.Ds].Selector); // DPL-0 data is not usable at CPL 3
        // An SS whose RPL differs from the new CPL is #GP(SS selector).
        cpu = Protected32();
        _mem.Write32(0x8014, DataDpl3);
        AssertFault(Run(cpu, 0xca, 0x08, 0x00), Vector.GP, DataDpl3);
    }

    [Fact]
    public void Retfq_in_64_bit_mode_pops_eight_byte_slots()
    {
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        _mem.Write64(0x10000, 0x11000 | 3);
        _mem.Write64(0x11000, 0x12000 | 3);
        _mem.Write64(0x12000, 0x83);
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x5f, 0);
        cpu.Rip = 0x1000;
        cpu.Gpr[4] = 0x8000;
        _mem.Write64(0x8000, 0x3000);
        _mem.Write64(0x8008, Code32);
        Assert.True(Run(cpu, 0x48, 0xcb).IsOk);
        Assert.Equal(CpuMode.Compatibility32, cpu.Mode);
        Assert.Equal(0x3000ul, cpu.Rip);
        Assert.Equal(0x8010ul, cpu.Gpr[4]);
    }

    [Fact]
    public void Pop_and_push_segment_registers_and_lds()
    {
        var cpu = Protected32();
        _mem.Write32(0x7ffc, Data32);
        cpu.Gpr[4] = 0x7ffc;
        Assert.True(Run(cpu, 0x1f).IsOk); // pop ds
        Assert.Equal(Data32, cpu.Segs[(int)Seg.Ds].Selector);
        Assert.Equal(0x8000ul, cpu.Gpr[4]);
        // A faulting POP leaves RSP alone.
        _mem.Write32(0x7ffc, DataNp);
        cpu.Gpr[4] = 0x7ffc;
        AssertFault(Run(cpu, 0x07), Vector.NP, DataNp); // pop es
        Assert.Equal(0x7ffcul, cpu.Gpr[4]);
        Assert.True(Run(cpu, 0x0e).IsOk); // push cs
        Assert.Equal((uint)Code32, _mem.Read32(0x7ff8));
        // lds esi, [0x3000]
        _mem.Write32(0x3000, 0xcafe);
        _mem.Write(0x3004, new byte[] { (byte)Ldt0Data, 0 });
        Assert.True(Run(cpu, 0xc5, 0x35, 0x00, 0x30, 0x00, 0x00).IsOk);
        Assert.Equal(0xcafeul, cpu.Gpr[6]);
        Assert.Equal(Ldt0Data, cpu.Segs[(int)Seg.Ds].Selector);
        Assert.Equal(0x100000ul, cpu.Segs[(int)Seg.Ds].Descriptor.Base);
        // lss esp, [0x3010]: loads SS:ESP together, without the MOV SS interrupt shadow (DS now has base 0x100000).
        _mem.Write32(0x103010, 0x7000);
        _mem.Write(0x103014, new byte[] { (byte)Data32, 0 });
        Assert.True(Run(cpu, 0x0f, 0xb2, 0x25, 0x10, 0x30, 0x00, 0x00).IsOk);
        Assert.Equal(0x7000ul, cpu.Gpr[4]);
        Assert.Equal(Data32, cpu.Segs[(int)Seg.Ss].Selector);
        Assert.Equal(0, cpu.InterruptShadow);
    }

    [Fact]
    public void Lar_lsl_verr_verw_report_through_ZF_without_faulting()
    {
        var cpu = Protected32();
        bool Zf() => (cpu.Rflags & CpuState.FlagZf) != 0;
        cpu.Gpr[3] = Code32;
        Assert.True(Run(cpu, 0x0f, 0x02, 0xc3).IsOk); // lar eax, ebx
        Assert.True(Zf());
        Assert.Equal(0x00c09a00ul, cpu.Gpr[0] & 0xfff0ffff); // bits 19:16 (limit) are undefined
        cpu.Gpr[3] = Code16;
        Assert.True(Run(cpu, 0x0f, 0x03, 0xc3).IsOk); // lsl eax, ebx
        Assert.True(Zf());
        Assert.Equal(0xfffful, cpu.Gpr[0]);
        cpu.Gpr[3] = 0x60; // beyond the GDT limit: ZF=0, destination unchanged
        Assert.True(Run(cpu, 0x0f, 0x03, 0xc3).IsOk);
        Assert.False(Zf());
        Assert.Equal(0xfffful, cpu.Gpr[0]);
        cpu.Gpr[3] = CodeXo;
        Assert.True(Run(cpu, 0x0f, 0x00, 0xe3).IsOk); // verr bx: execute-only
        Assert.False(Zf());
        cpu.Gpr[3] = DataRo;
        Assert.True(Run(cpu, 0x0f, 0x00, 0xeb).IsOk); // verw bx: read-only
        Assert.False(Zf());
        cpu.Gpr[3] = Data32;
        Assert.True(Run(cpu, 0x0f, 0x00, 0xeb).IsOk);
        Assert.True(Zf());
        var user = Protected32(3);
        user.Gpr[3] = Data32 | 3; // DPL 0 data is invisible at CPL 3
        Assert.True(Run(user, 0x0f, 0x02, 0xc3).IsOk);
        Assert.Equal(0ul, user.Rflags & CpuState.FlagZf);
        user.Gpr[3] = ConformingDpl3 | 3; // conforming code: no privilege check
        Assert.True(Run(user, 0x0f, 0x00, 0xe3).IsOk);
        Assert.NotEqual(0ul, user.Rflags & CpuState.FlagZf);
    }

    [Fact]
    public void Fuzz_segment_and_system_instructions_over_random_descriptor_tables_never_throw()
    {
        var rng = new Random(7);
        // Opcode heads of the segment, far-transfer, system and interrupt instructions, followed by random bytes.
        byte[][] heads =
        {
            new byte[] { 0x8e }, new byte[] { 0x8c }, new byte[] { 0x1f }, new byte[] { 0x07 }, new byte[] { 0x17 }, new byte[] { 0x0f, 0xa1 },
            new byte[] { 0xc5 }, new byte[] { 0xc4 }, new byte[] { 0x0f, 0xb2 }, new byte[] { 0xea }, new byte[] { 0x66, 0xea },
            new byte[] { 0x9a }, new byte[] { 0xff }, new byte[] { 0xcb }, new byte[] { 0xca }, new byte[] { 0x48, 0xcb }, new byte[] { 0xcf },
            new byte[] { 0x48, 0xcf }, new byte[] { 0xcd }, new byte[] { 0xcc }, new byte[] { 0x0f, 0x00 }, new byte[] { 0x0f, 0x01 },
            new byte[] { 0x0f, 0x20 }, new byte[] { 0x0f, 0x22 }, new byte[] { 0x0f, 0x21 }, new byte[] { 0x0f, 0x23 }, new byte[] { 0x0f, 0x02 },
            new byte[] { 0x0f, 0x03 }, new byte[] { 0x9d }, new byte[] { 0xfa }, new byte[] { 0xfb }, new byte[] { 0x0f, 0x30 }, new byte[] { 0x0f, 0x32 },
            new byte[] { 0x0f, 0x05 }, new byte[] { 0x0f, 0x07 }, new byte[] { 0x0f, 0x34 }, new byte[] { 0x0f, 0x35 }, new byte[] { 0xc8 }, new byte[] { 0x61 },
        };
        var bytes = new byte[15];
        var cpu = new CpuState();
        var before = new CpuState();
        _mem.Write64(0x10000, 0x11000 | 7);
        _mem.Write64(0x11000, 0x12000 | 7);
        _mem.Write64(0x12000, 0x87);
        int iterations = int.TryParse(Environment.GetEnvironmentVariable("HYVE_FUZZ_ITERATIONS"), out int it) ? it : 40_000;
        for (int n = 0; n < iterations; n++)
        {
            if (n % 64 == 0)
            {
                for (ulong k = 0; k < 0x100; k += 8)
                {
                    ulong d = (ulong)rng.NextInt64();
                    if (rng.Next(2) == 0) d = (d & 0xff0f_ffff_ffff_ffff) | 0x0080_0000_0000_0000 | (ulong)(0x90 | rng.Next(16) | rng.Next(4) << 5) << 40;
                    _mem.Write64(Gdt + k, d);
                    _mem.Write64(0x2000 + 2 * k, (ulong)rng.NextInt64() & 0xffff_ef00_00ff_ffff | 0x0000_8e00_0000_0000 * (ulong)rng.Next(2));
                    _mem.Write64(0x2000 + 2 * k + 8, rng.Next(2) == 0 ? 0 : (ulong)rng.NextInt64());
                }
            }
            switch (n % 5)
            {
                case 0: cpu = Protected32(); break;
                case 1: cpu = Protected32(3); break;
                case 2: cpu = new CpuState(); cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b)); cpu.Rip = 0x1000; break;
                case 3: cpu = new CpuState(); cpu.SetFlatLongMode(0x10000); cpu.Rip = 0x1000; cpu.Gpr[4] = 0x8000; break;
                default: cpu = Protected32(); cpu.Cr4 |= CpuState.Cr4Pvi | CpuState.Cr4Vme; cpu.Rflags |= CpuState.FlagNt; break;
            }
            cpu.Gdtr = new SegmentDescriptor(Gdt, (uint)rng.Next(0x120), 0);
            cpu.Idtr = new SegmentDescriptor(0x2000, (uint)rng.Next(0x300), 0);
            cpu.Tr = new SegmentRegister(0x28, new SegmentDescriptor(0x3000, (uint)rng.Next(0x70), 0x8b));
            for (int r = 0; r < 16; r++) if (r != 4) cpu.Gpr[r] = rng.Next(2) == 0 ? (ulong)rng.Next(0x80) : (ulong)rng.NextInt64();
            rng.NextBytes(bytes);
            var head = heads[rng.Next(heads.Length)];
            head.CopyTo(bytes, 0);
            cpu.CopyTo(before);
            var r0 = _engine.Step(cpu, null, bytes);
            if (r0.Status == StepStatus.Exception && r0.Exception.Vector != Vector.DB)
            {
                // A faulting instruction leaves the registers as they were (SDM Vol. 3 6.5: faults are restartable).
                Assert.Equal(before.Rip, cpu.Rip);
                Assert.Equal(before.Gpr.ToArray(), cpu.Gpr.ToArray());
                Assert.Equal(before.Segs, cpu.Segs);
                Assert.Equal(before.Rflags, cpu.Rflags);
                Assert.Equal((before.Cr0, before.Cr3, before.Cr4, before.Efer, before.Gdtr, before.Idtr, before.Ldtr, before.Tr),
                    (cpu.Cr0, cpu.Cr3, cpu.Cr4, cpu.Efer, cpu.Gdtr, cpu.Idtr, cpu.Ldtr, cpu.Tr));
            }
            if (rng.Next(4) == 0) _engine.Deliver(cpu, new PendingException((byte)rng.Next(256), rng.Next(2) == 0, 0, 0), rng.Next(2) == 0);
        }
    }
}
