// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;
using IcedCode = Iced.Intel.Code;

namespace Hyve.Tests.X86;

/// <summary>Engine behaviour on a test machine: MMIO string moves, faults part-way, port I/O, x87/SSE control, modes.</summary>
public class EngineTests
{
    private const ulong Code = 0x1000, Mmio1 = 0xfee0_0000, Mmio2 = 0xfec0_0000;
    private readonly TestMemory _mem = new(8 << 20);
    private readonly InstructionEngine _engine;

    public EngineTests() => _engine = new InstructionEngine(_mem) { Model = CpuModel.Named("max", CpuVendor.Intel) };

    /// <summary>Flat 64-bit mode with an identity map of the first 1 GiB (2 MiB pages) and the 4 GiB hole (1 GiB page).</summary>
    private CpuState Long64()
    {
        var cpu = new CpuState();
        _mem.Write64(0x80000, 0x81000 | 3);                 // PML4[0]
        _mem.Write64(0x81000, 0x82000 | 3);                 // PDPT[0] -> PD
        _mem.Write64(0x81000 + 8 * 3, 0xc000_0000 | 0x83);  // PDPT[3]: 1 GiB page at 3 GiB (MMIO)
        for (ulong i = 0; i < 512; i++) _mem.Write64(0x82000 + 8 * i, (i << 21) | 0x83);
        cpu.SetFlatLongMode(0x80000);
        cpu.Rip = Code;
        return cpu;
    }

    private void Load(ulong at, Action<Assembler> emit, int bitness = 64)
    {
        var a = new Assembler(bitness);
        emit(a);
        var w = new Writer();
        a.Assemble(w, at);
        _mem.Write(at, w.Bytes.ToArray());
    }

    private sealed class Writer : CodeWriter
    {
        public readonly List<byte> Bytes = new();
        public override void WriteByte(byte value) => Bytes.Add(value);
    }

    [Fact]
    public void Rep_movsd_from_one_MMIO_region_to_another_updates_rsi_rdi_rcx()
    {
        var src = _mem.AddMmio(Mmio1, 0x100);
        var dst = _mem.AddMmio(Mmio2, 0x100);
        for (int i = 0; i < 0x100; i++) src.Data[i] = (byte)(i * 3);
        var cpu = Long64();
        Load(Code, a => a.rep.movsd());
        cpu.Gpr[6] = Mmio1 + 0x10; cpu.Gpr[7] = Mmio2 + 0x20; cpu.Gpr[1] = 5;
        var r = _engine.Step(cpu);
        Assert.Equal(StepStatus.Ok, r.Status);
        Assert.Equal(Mmio1 + 0x24, cpu.Gpr[6]);
        Assert.Equal(Mmio2 + 0x34, cpu.Gpr[7]);
        Assert.Equal(0ul, cpu.Gpr[1]);
        Assert.Equal(Code + 2, cpu.Rip);
        Assert.Equal(src.Data.AsSpan(0x10, 20).ToArray(), dst.Data.AsSpan(0x20, 20).ToArray());
        Assert.Equal(5, dst.Log.Count);
        Assert.All(dst.Log, e => Assert.Equal(4, e.Size));
    }

    [Fact]
    public void Cmpxchg16b_swaps_when_rdx_rax_match_and_loads_them_when_not()
    {
        var cpu = Long64();
        Load(Code, a => a.@lock.cmpxchg16b(AssemblerRegisters.__[AssemblerRegisters.rdi]));
        _mem.Write64(0x3000, 0x1111); _mem.Write64(0x3008, 0x2222);
        cpu.Gpr[7] = 0x3000; cpu.Gpr[0] = 0x1111; cpu.Gpr[2] = 0x2222; cpu.Gpr[3] = 0xaaaa; cpu.Gpr[1] = 0xbbbb;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagZf);
        Assert.Equal(0xaaaaul, _mem.Read64(0x3000));
        Assert.Equal(0xbbbbul, _mem.Read64(0x3008));

        cpu.Rip = Code;
        Assert.True(_engine.Step(cpu).IsOk); // RDX:RAX (0x2222:0x1111) no longer matches
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagZf);
        Assert.Equal(0xaaaaul, cpu.Gpr[0]);
        Assert.Equal(0xbbbbul, cpu.Gpr[2]);

        cpu.Rip = Code;
        cpu.Gpr[7] = 0x3008; // not 16-byte aligned: #GP(0)
        var r = _engine.Step(cpu);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.GP, r.Exception.Vector);
    }

    [Fact]
    public void Cmpxchg8b_compares_edx_eax_and_stores_ecx_ebx()
    {
        var cpu = Long64();
        Load(Code, a => a.cmpxchg8b(AssemblerRegisters.__qword_ptr[AssemblerRegisters.rdi]));
        _mem.Write64(0x3000, 0x0000_0002_0000_0001);
        cpu.Gpr[7] = 0x3000; cpu.Gpr[0] = 1; cpu.Gpr[2] = 2; cpu.Gpr[3] = 3; cpu.Gpr[1] = 4;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagZf);
        Assert.Equal(0x0000_0004_0000_0003ul, _mem.Read64(0x3000));
        cpu.Rip = Code;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagZf);
        Assert.Equal(3ul, cpu.Gpr[0]);
        Assert.Equal(4ul, cpu.Gpr[2]);
    }

    [Fact]
    public void Rep_stosq_into_MMIO_backwards_with_DF()
    {
        var dev = _mem.AddMmio(Mmio1, 0x100);
        var cpu = Long64();
        Load(Code, a => a.rep.stosq());
        cpu.Rflags |= CpuState.FlagDf;
        cpu.Gpr[0] = 0x1122334455667788; cpu.Gpr[7] = Mmio1 + 0x80; cpu.Gpr[1] = 3;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(Mmio1 + 0x68, cpu.Gpr[7]);
        Assert.Equal(0ul, cpu.Gpr[1]);
        Assert.Equal(new ulong[] { 0x80, 0x78, 0x70 }, dev.Log.Select(e => e.Offset).ToArray());
        Assert.All(dev.Log, e => Assert.Equal(0x1122334455667788ul, e.Value));
    }

    [Fact]
    public void Mmio_mov_reads_and_writes_through_callbacks()
    {
        var dev = _mem.AddMmio(Mmio1, 0x100);
        var cpu = Long64();
        Load(Code, a => { a.mov(__dword_ptr[rbx + 0x30], eax); a.mov(cx, __word_ptr[rbx + 0x30]); });
        cpu.Gpr[3] = Mmio1; cpu.Gpr[0] = 0xdeadbeef; cpu.Gpr[1] = ulong.MaxValue;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0xffffffffffffbeeful, cpu.Gpr[1]);
        Assert.Equal((true, 0x30ul, 4, 0xdeadbeeful), dev.Log[0]);
        Assert.Equal((false, 0x30ul, 2, 0xbeeful), dev.Log[1]);
    }

    [Fact]
    public void Unbacked_physical_address_is_reported_not_thrown()
    {
        var cpu = Long64();
        Load(Code, a => a.mov(__dword_ptr[rbx], eax));
        cpu.Gpr[3] = 0xc000_1000;
        var r = _engine.Step(cpu);
        Assert.Equal(StepStatus.Unbacked, r.Status);
        Assert.Equal(0xc000_1000ul, r.Address);
        Assert.Equal(Code, cpu.Rip);
    }

    [Fact]
    public void Rep_movsb_faulting_part_way_keeps_completed_iterations_and_rip()
    {
        var cpu = Long64();
        _mem.Write64(0x82000 + 8 * 3, 0); // unmap 6..8 MiB
        Load(Code, a => a.rep.movsb());
        cpu.Gpr[6] = 0x10000; cpu.Gpr[7] = 0x600000 - 3; cpu.Gpr[1] = 10;
        var r = _engine.Step(cpu);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.PF, r.Exception.Vector);
        Assert.Equal(0x600000ul, r.Exception.Cr2);
        Assert.Equal(2u, r.Exception.ErrorCode);
        Assert.Equal(7ul, cpu.Gpr[1]);
        Assert.Equal(0x10003ul, cpu.Gpr[6]);
        Assert.Equal(0x600000ul, cpu.Gpr[7]);
        Assert.Equal(Code, cpu.Rip);
    }

    [Fact]
    public void Rep_insb_validates_destination_before_reading_the_port()
    {
        var cpu = Long64();
        _mem.Write64(0x82000 + 8 * 3, 0);
        var ports = new TestPorts();
        Load(Code, a => a.rep.insb());
        cpu.Gpr[2] = 0x3f8; cpu.Gpr[7] = 0x600000 - 2; cpu.Gpr[1] = 4;
        var r = _engine.Step(cpu, ports);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(2, ports.Log.Count); // two bytes landed, the third port read never happened
        Assert.Equal(2ul, cpu.Gpr[1]);
    }

    [Fact]
    public void In_out_and_outs_reach_the_port_space()
    {
        var cpu = Long64();
        var ports = new TestPorts { NextIn = 0xabcd1234 };
        Load(Code, a => { a.@out(dx, al); a.@in(eax, dx); a.@in(al, 0x71); a.rep.outsw(); });
        cpu.Gpr[2] = 0x70; cpu.Gpr[0] = 0xffffffff_ffff0042;
        _mem.Write(0x5000, new byte[] { 1, 2, 3, 4 });
        Assert.True(_engine.Step(cpu, ports).IsOk);
        Assert.True(_engine.Step(cpu, ports).IsOk);
        Assert.Equal(0xabcd1234ul, cpu.Gpr[0]); // 32-bit IN zero-extends RAX
        Assert.True(_engine.Step(cpu, ports).IsOk);
        Assert.Equal(0xabcd1235u & 0xff, (uint)cpu.Gpr[0] & 0xff);
        cpu.Gpr[6] = 0x5000; cpu.Gpr[1] = 2;
        Assert.True(_engine.Step(cpu, ports).IsOk);
        Assert.Equal((true, (ushort)0x70, 1, 0x42u), ports.Log[0]);
        Assert.Equal((true, (ushort)0x70, 2, 0x0201u), ports.Log[3]);
        Assert.Equal((true, (ushort)0x70, 2, 0x0403u), ports.Log[4]);
    }

    [Fact]
    public void Out_at_CPL3_above_IOPL_consults_the_TSS_bitmap()
    {
        var cpu = Long64();
        cpu.Segs[(int)Seg.Ss].Descriptor = cpu.Segs[(int)Seg.Ss].Descriptor with { Access = 0xc0f3 };
        cpu.Segs[(int)Seg.Cs].Descriptor = cpu.Segs[(int)Seg.Cs].Descriptor with { Access = 0xa0fb };
        _mem.Write64(0x82000, 0x87); // user-accessible first 2 MiB
        _mem.Write64(0x80000, 0x81000 | 7); _mem.Write64(0x81000, 0x82000 | 7);
        cpu.Tr = new SegmentRegister(0x28, new SegmentDescriptor(0x7000, 0x67 + 0x2000, 0x8b));
        _mem.Ram[0x7066] = 0x68; _mem.Ram[0x7067] = 0;    // bitmap at TSS+0x68
        _mem.Ram[0x7068 + 0x80 / 8] = 0x01;              // port 0x80 denied, 0x81 allowed
        var ports = new TestPorts();
        Load(Code, a => { a.@out(0x81, al); a.@out(0x80, al); });
        Assert.True(_engine.Step(cpu, ports).IsOk);
        var r = _engine.Step(cpu, ports);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.GP, r.Exception.Vector);
        Assert.Single(ports.Log);
    }

    [Fact]
    public void X87_control_ops()
    {
        var cpu = Long64();
        cpu.Fcw = 0x1234; cpu.Fsw = 0x80ff;
        Load(Code, a =>
        {
            a.fninit(); a.fnstcw(__word_ptr[0x3000]); a.fnstsw(ax);
            a.fldcw(__word_ptr[0x3002]); a.fnstsw(__word_ptr[0x3004]); a.fnclex(); a.wait();
        });
        _mem.Write(0x3002, new byte[] { 0x7e, 0x03 }); // unmask IE
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x037f, cpu.Fcw);
        Assert.Equal(0, cpu.Fsw);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x037fu, _mem.Read32(0x3000) & 0xffff);
        cpu.Gpr[0] = ulong.MaxValue;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0xffffffffffff0000ul, cpu.Gpr[0]);
        cpu.Fsw = 0x0001; // IE flagged while masked
        Assert.True(_engine.Step(cpu).IsOk); // FLDCW unmasks it: ES and B become set
        Assert.Equal(0x037e, cpu.Fcw);
        Assert.Equal(0x8081, cpu.Fsw);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x8081u, _mem.Read32(0x3004) & 0xffff);
        Assert.True(_engine.Step(cpu).IsOk); // FNCLEX
        Assert.Equal(0, cpu.Fsw);
        Assert.True(_engine.Step(cpu).IsOk); // FWAIT with nothing pending
    }

    [Fact]
    public void Fwait_delivers_pending_x87_exception_and_TS_gives_NM()
    {
        var cpu = Long64();
        Load(Code, a => { a.wait(); });
        cpu.Fsw = 0x8081;
        var r = _engine.Step(cpu);
        Assert.Equal(Vector.MF, r.Exception.Vector);
        Assert.Equal(Code, cpu.Rip);
        Load(Code, a => a.fninit());
        cpu.Cr0 |= CpuState.Cr0Ts;
        Assert.Equal(Vector.NM, _engine.Step(cpu).Exception.Vector);
    }

    [Fact]
    public void Fxsave_fxrstor_ldmxcsr_stmxcsr()
    {
        var cpu = Long64();
        cpu.Mxcsr = 0x1f80;
        cpu.Xmm(9).Fill(0x99);
        Load(Code, a =>
        {
            a.ldmxcsr(__dword_ptr[0x3000]); a.stmxcsr(__dword_ptr[0x3004]); a.fxsave64(__[0x4000]);
            a.fxrstor64(__[0x5000]); a.fxsave(__[0x4008]);
        });
        _mem.Write32(0x3000, 0x9fc0);
        _mem.Write32(0x3008, 0x10000);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x9fc0u, cpu.Mxcsr);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x9fc0u, _mem.Read32(0x3004));
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x037fu, _mem.Read32(0x4000) & 0xffff);
        Assert.Equal(0x9fc0u, _mem.Read32(0x4000 + 24));
        Assert.Equal(0xffffu, _mem.Read32(0x4000 + 28));
        Assert.Equal(0x99, _mem.Ram[0x4000 + 160 + 16 * 9]);
        // FXRSTOR from an image with MXCSR 0x1f80, FCW 0x27f and XMM9 = 0x42s.
        _mem.Ram.AsSpan(0x5000, 512).Clear();
        _mem.Write32(0x5000, 0x027f); _mem.Write32(0x5000 + 24, 0x1f80);
        _mem.Ram.AsSpan(0x5000 + 160 + 16 * 9, 16).Fill(0x42);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x027f, cpu.Fcw);
        Assert.Equal(0x1f80u, cpu.Mxcsr);
        Assert.Equal(0x42, cpu.Xmm(9)[0]);
        var r = _engine.Step(cpu); // misaligned FXSAVE
        Assert.True(r.Status == StepStatus.Exception, r.ToString());
        Assert.Equal(Vector.GP, r.Exception.Vector);
        Load(Code, a => a.ldmxcsr(__dword_ptr[0x3008]));
        cpu.Rip = Code;
        r = _engine.Step(cpu); // LDMXCSR with a reserved bit
        Assert.Equal(Vector.GP, r.Exception.Vector);
    }

    [Fact]
    public void Push_and_pop_with_memory_operands()
    {
        var cpu = Long64();
        cpu.Gpr[4] = 0x9000;
        _mem.Write64(0x3000, 0x1122334455667788);
        Load(Code, a => { a.push(__qword_ptr[0x3000]); a.pop(__qword_ptr[rsp + 8]); a.push(__word_ptr[0x3000]); });
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x8ff8ul, cpu.Gpr[4]);
        Assert.Equal(0x1122334455667788ul, _mem.Read64(0x8ff8));
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x9000ul, cpu.Gpr[4]);
        Assert.Equal(0x1122334455667788ul, _mem.Read64(0x9008)); // address computed with the incremented RSP
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x8ffeul, cpu.Gpr[4]);
    }

    [Fact]
    public void Real_mode_segmentation_and_16_bit_wrap()
    {
        var cpu = new CpuState(); // reset: real mode, CS base FFFF0000
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        cpu.Segs[(int)Seg.Ds] = new SegmentRegister(0x100, new SegmentDescriptor(0x1000, 0xffff, 0x93));
        cpu.Rip = 0x500;
        Load(0x500, a => { a.mov(__word_ptr[bx + si + 2], ax); a.mov(__dword_ptr[0xfffe], eax); }, 16);
        cpu.Gpr[3] = 0xfff0; cpu.Gpr[6] = 0x20; cpu.Gpr[0] = 0xbeef;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0xbeefu, _mem.Read32(0x1000 + 0x12) & 0xffff); // (BX+SI+2) wraps at 64 KiB
        var r = _engine.Step(cpu);
        Assert.Equal(Vector.GP, r.Exception.Vector); // crosses the 64 KiB limit
    }

    [Fact]
    public void Protected_mode_segment_checks_give_GP_and_SS()
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Rip = 0x500;
        cpu.Segs[(int)Seg.Ds].Descriptor = new SegmentDescriptor(0, 0xfff, 0x4091); // read-only data
        cpu.Segs[(int)Seg.Ss].Descriptor = new SegmentDescriptor(0, 0x7fff, 0x4097); // expand-down, valid 0x8000..0xffffffff
        Load(0x500, a => { a.mov(__dword_ptr[ebx], eax); a.mov(eax, __dword_ptr[ebp]); a.mov(eax, __dword_ptr[ebp]); }, 32);
        cpu.Gpr[3] = 0x100;
        Assert.Equal(Vector.GP, _engine.Step(cpu).Exception.Vector);
        cpu.Rip = 0x502;
        cpu.Gpr[5] = 0x7ffe;
        var r = _engine.Step(cpu);
        Assert.Equal(Vector.SS, r.Exception.Vector);
        cpu.Gpr[5] = 0x8000;
        Assert.True(_engine.Step(cpu).IsOk);
    }

    [Fact]
    public void Non_canonical_access_in_64_bit_mode_is_GP_or_SS()
    {
        var cpu = Long64();
        Load(Code, a => { a.mov(__dword_ptr[rbx], eax); a.mov(__dword_ptr[rsp], eax); });
        cpu.Gpr[3] = 0x0000_8000_0000_0000;
        Assert.Equal(Vector.GP, _engine.Step(cpu).Exception.Vector);
        cpu.Rip += 2;
        cpu.Gpr[4] = 0x0000_8000_0000_0000;
        Assert.Equal(Vector.SS, _engine.Step(cpu).Exception.Vector);
    }

    [Fact]
    public void Fetch_from_unmapped_page_is_PF_with_ID_and_undecodable_is_UD_while_unsupported_is_reported()
    {
        var cpu = Long64();
        cpu.Rip = 0x0020_0000_0000; // not mapped
        var r = _engine.Step(cpu);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.PF, r.Exception.Vector);
        Assert.Equal(0x10u, r.Exception.ErrorCode);
        cpu.Rip = Code;
        _mem.Write(Code, new byte[] { 0x0f, 0x01, 0xc1 }); // VMCALL without VMX in the model: a real #UD
        Assert.Equal(StepStatus.Exception, _engine.Step(cpu).Status);
        cpu.Cr4 |= 1ul << 18; // XGETBV: the model does not report XSAVE, so #UD whatever CR4 says (no "not implemented" stop)
        _mem.Write(Code, new byte[] { 0x0f, 0x01, 0xd0 });
        r = _engine.Step(cpu);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(IcedCode.Xgetbv, r.Code);
        Assert.Equal(Vector.UD, r.Exception.Vector);
        _mem.Write(Code, new byte[] { 0x0f, 0x0b }); // UD2 is a real #UD
        Assert.Equal(StepStatus.Exception, _engine.Step(cpu).Status);
        var longInsn = new byte[16];
        Array.Fill(longInsn, (byte)0x66);
        longInsn[15] = 0x90;
        _mem.Write(Code, longInsn); // 16-byte instruction: #GP(0)
        r = _engine.Step(cpu);
        Assert.Equal(Vector.GP, r.Exception.Vector);
        _mem.Write(Code, new byte[] { 0x06 }); // PUSH ES is invalid in 64-bit mode
        r = _engine.Step(cpu);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.UD, r.Exception.Vector);
        // An instruction straddling into an unmapped page faults on the second page.
        _mem.Write64(0x82000 + 8 * 3, 0);
        _mem.Write(0x600000 - 2, new byte[] { 0x48, 0xb8 }); // mov rax, imm64 (rest on next page)
        cpu.Rip = 0x600000 - 2;
        r = _engine.Step(cpu);
        Assert.Equal(Vector.PF, r.Exception.Vector);
        Assert.Equal(0x600000ul, r.Exception.Cr2);
    }

    [Fact]
    public void Guest_copy_crosses_pages_and_reports_faults()
    {
        var cpu = Long64();
        var lm = _engine.Memory;
        var buf = new byte[0x1800];
        new Random(1).NextBytes(buf);
        Assert.True(lm.CopyToGuest(cpu, 0x7f00, buf).IsOk);
        var back = new byte[buf.Length];
        Assert.True(lm.CopyFromGuest(cpu, 0x7f00, back).IsOk);
        Assert.Equal(buf, back);
        _mem.Write64(0x82000 + 8 * 3, 0);
        var before = _mem.Ram.AsSpan(0x5ff000, 0x1000).ToArray();
        var r = lm.CopyToGuest(cpu, 0x5ffff0, new byte[0x20]);
        Assert.Equal(AccessStatus.GuestFault, r.Status);
        Assert.Equal(0x600000ul, r.Exception.Cr2);
        Assert.Equal(before, _mem.Ram.AsSpan(0x5ff000, 0x1000).ToArray()); // nothing written before the fault
    }

    [Fact]
    public void Cpu_mode_and_paging_mode_helpers()
    {
        var cpu = new CpuState();
        Assert.Equal(CpuMode.Real, cpu.Mode);
        Assert.Equal(PagingMode.None, cpu.Paging);
        cpu.SetFlatProtectedMode(true, 0x1000, 0);
        Assert.Equal(CpuMode.Protected32, cpu.Mode);
        Assert.Equal(PagingMode.Bits32, cpu.Paging);
        cpu.Cr4 |= CpuState.Cr4Pae;
        Assert.Equal(PagingMode.Pae, cpu.Paging);
        cpu.SetFlatLongMode(0x1000);
        Assert.Equal(CpuMode.Long64, cpu.Mode);
        Assert.Equal(PagingMode.Level4, cpu.Paging);
        cpu.Cr4 |= CpuState.Cr4La57;
        Assert.Equal(PagingMode.Level5, cpu.Paging);
        cpu.Segs[(int)Seg.Cs].Descriptor = new SegmentDescriptor(0, 0xffffffff, 0xc09b);
        Assert.Equal(CpuMode.Compatibility32, cpu.Mode);
        cpu.Set(Reg.R12, 42); cpu.Set(Reg.Cr2, 7); cpu.Set(Reg.Gs, 0x2b);
        Assert.Equal(42ul, cpu.Get(Reg.R12));
        Assert.Equal(7ul, cpu.Get(Reg.Cr2));
        Assert.Equal(0x2bul, cpu.Get(Reg.Gs));
    }

    [Fact]
    public void Mov_moffs_forms_use_the_address_size()
    {
        var cpu = Long64();
        _mem.Write64(0x3000, 0x8877665544332211);
        // 48 A1 moffs64: mov rax,[0x3000]; A2 moffs64: mov [0x3010],al; 67 A1 moffs32: mov eax,[0x3004]; 67 A3: mov [0x3020],eax
        _mem.Write(Code, new byte[] { 0x48, 0xa1, 0, 0x30, 0, 0, 0, 0, 0, 0,
                                      0xa2, 0x10, 0x30, 0, 0, 0, 0, 0, 0,
                                      0x67, 0xa1, 0x04, 0x30, 0, 0,
                                      0x67, 0xa3, 0x20, 0x30, 0, 0 });
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x8877665544332211ul, cpu.Gpr[0]);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x11, _mem.Ram[0x3010]);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x88776655ul, cpu.Gpr[0]);
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x88776655u, _mem.Read32(0x3020));
        Assert.Equal(Code + 31, cpu.Rip);
    }

    [Fact]
    public void Step_with_caller_supplied_bytes_fetches_the_rest()
    {
        var cpu = Long64();
        Load(Code, a => a.mov(rax, 0x1122334455667788));
        var r = _engine.Step(cpu, null, _mem.Ram.AsSpan((int)Code, 3));
        Assert.True(r.IsOk);
        Assert.Equal(0x1122334455667788ul, cpu.Gpr[0]);
        Assert.Equal(Code + 10, cpu.Rip);
    }

    [Fact]
    public void Protection_keys_deny_user_page_data_access()
    {
        var cpu = Long64();
        cpu.Cr4 |= CpuState.Cr4Pke;
        _mem.Write64(0x80000, 0x81000 | 7); _mem.Write64(0x81000, 0x82000 | 7);
        _mem.Write64(0x82000 + 8 * 2, (2ul << 21) | 0x87 | (5ul << 59)); // 4-6 MiB: user page, key 5
        cpu.Pkru = 2u << (2 * 5); // WD for key 5
        var w = _engine.Memory.Walker;
        Assert.True(w.Translate(cpu, 0x400000, PageAccess.Read, out _).IsOk);
        var r = w.Translate(cpu, 0x400000, PageAccess.Write, out _);
        Assert.Equal(0x23u, r.Exception.ErrorCode); // P | W | PK
        cpu.Pkru = 1u << (2 * 5); // AD
        Assert.Equal(0x21u, w.Translate(cpu, 0x400000, PageAccess.Read, out _).Exception.ErrorCode);
        Assert.True(w.Translate(cpu, 0x400000, PageAccess.Execute, out _).IsOk); // keys do not apply to fetches
    }

    [Fact]
    public void Steady_state_steps_do_not_allocate()
    {
        var cpu = Long64();
        var dev = _mem.AddMmio(Mmio1, 0x100);
        var ports = new TestPorts();
        Load(Code, a =>
        {
            a.add(__qword_ptr[rbx + 8], rax); a.@lock.cmpxchg(__dword_ptr[rbx], ecx); a.rep.movsb(); a.@out(dx, al);
            a.bts(__dword_ptr[rbx], eax); a.fnstcw(__word_ptr[rbx + 16]); a.push(__qword_ptr[rbx]); a.pop(rcx);
        });
        void Run()
        {
            for (int k = 0; k < 200; k++)
            {
                cpu.Rip = Code; cpu.Gpr[3] = 0x3000; cpu.Gpr[4] = 0x9000; cpu.Gpr[6] = Mmio1; cpu.Gpr[7] = 0x5000; cpu.Gpr[1] = 4;
                for (int s = 0; s < 8; s++) _engine.Step(cpu, ports);
            }
        }
        Run();
        dev.Log.Clear(); ports.Log.Clear();
        dev.Log.Capacity = 10000; ports.Log.Capacity = 10000;
        long before = GC.GetAllocatedBytesForCurrentThread();
        Run();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
    }

    [Fact]
    public void Real_mode_rep_movsb_wraps_si_at_64K_and_keeps_upper_bits()
    {
        var cpu = new CpuState();
        for (int s = 0; s < 6; s++) cpu.Segs[s] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, s == 1 ? 0x9bu : 0x93u));
        cpu.Segs[(int)Seg.Ds] = new SegmentRegister(0x1000, new SegmentDescriptor(0x10000, 0xffff, 0x93));
        cpu.Rip = 0x500;
        _mem.Write(0x500, new byte[] { 0xf3, 0xa4 }); // rep movsb
        _mem.Ram[0x1ffff] = 0xaa; _mem.Ram[0x10000] = 0xbb;
        cpu.Gpr[6] = 0x1234_0000_ffff; cpu.Gpr[7] = 0x100; cpu.Gpr[1] = 0xabcd_0002;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x1234_0000_0001ul, cpu.Gpr[6]);
        Assert.Equal(0x102ul, cpu.Gpr[7]);
        Assert.Equal(0xabcd_0000ul, cpu.Gpr[1]);
        Assert.Equal(new byte[] { 0xaa, 0xbb }, _mem.Ram.AsSpan(0x100, 2).ToArray());
        Assert.Equal(0x502ul, cpu.Rip);
    }

    [Fact]
    public void Address_size_override_in_64_bit_mode_uses_and_zero_extends_edi_ecx()
    {
        var cpu = Long64();
        _mem.Write(Code, new byte[] { 0x67, 0xf3, 0xaa }); // rep stosb with 32-bit addressing
        cpu.Gpr[0] = 0x5a; cpu.Gpr[7] = 0xffff_ffff_0000_5000; cpu.Gpr[1] = 0x1_0000_0003;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(0x5003ul, cpu.Gpr[7]);
        Assert.Equal(0ul, cpu.Gpr[1]);
        Assert.Equal(new byte[] { 0x5a, 0x5a, 0x5a }, _mem.Ram.AsSpan(0x5000, 3).ToArray());
    }

    [Fact]
    public void Repe_cmpsb_stops_at_first_difference_with_flags_of_that_compare()
    {
        var cpu = Long64();
        Load(Code, a => a.repe.cmpsb());
        _mem.Write(0x5000, new byte[] { 1, 2, 3, 4 });
        _mem.Write(0x6000, new byte[] { 1, 2, 9, 4 });
        cpu.Gpr[6] = 0x5000; cpu.Gpr[7] = 0x6000; cpu.Gpr[1] = 4;
        Assert.True(_engine.Step(cpu).IsOk);
        Assert.Equal(1ul, cpu.Gpr[1]);
        Assert.Equal(0x5003ul, cpu.Gpr[6]);
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagZf);
        Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagCf); // 3 - 9 borrows
    }

    [Fact]
    public void Fuzz_random_bytes_never_throw()
    {
        var rng = new Random(99);
        var cpu = Long64();
        var snapshot = new CpuState();
        cpu.CopyTo(snapshot);
        _mem.AddMmio(Mmio1, 0x1000);
        var ports = new TestPorts();
        var bytes = new byte[15];
        _engine.MaxRepIterations = 64;
        for (int n = 0; n < 300_000; n++)
        {
            snapshot.CopyTo(cpu);
            rng.NextBytes(bytes);
            for (int r = 0; r < 16; r++) cpu.Gpr[r] = rng.Next(3) switch { 0 => (ulong)rng.Next(0x100000), 1 => Mmio1 + (ulong)rng.Next(0x1000), _ => (ulong)rng.NextInt64() };
            cpu.Gpr[1] &= 0xff;
            cpu.Rflags = 2 | ((ulong)rng.Next() & 0xcd5);
            switch (n % 6)
            {
                case 1: cpu.Segs[(int)Seg.Cs].Descriptor = new SegmentDescriptor(0, 0xffffffff, 0xc09b); break; // compatibility
                case 2: cpu.Cr4 |= CpuState.Cr4La57; break;
                case 3: // real mode
                    cpu.Cr0 = 0x10; cpu.Efer = 0;
                    for (int s = 0; s < 6; s++) cpu.Segs[s] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, s == 1 ? 0x9bu : 0x93u));
                    break;
                case 4: cpu.SetFlatProtectedMode(); cpu.Rip = Code; break;
                case 5: // CPL 3 with CR0.TS and IOPL 0
                    cpu.Segs[(int)Seg.Ss].Descriptor = cpu.Segs[(int)Seg.Ss].Descriptor with { Access = 0xc0f3 };
                    cpu.Cr0 |= CpuState.Cr0Ts | CpuState.Cr0Am;
                    cpu.Rflags |= CpuState.FlagAc;
                    break;
            }
            if ((n & 1) == 0) _engine.Step(cpu, ports, bytes);
            else { _mem.Write(Code, bytes); _engine.Step(cpu, ports); }
        }
    }
}
