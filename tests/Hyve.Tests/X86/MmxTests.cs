// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// MMX and the SSE-era instructions on MMX registers: differential against the host CPU (MM0-MM2 loaded from the data
/// page, the instruction, MM0/MM1 stored back, EMMS), the values the SDM's instruction pages name, the x87 aliasing of
/// SDM Vol. 1 9.5 (TOP 0, tags valid, exponent all ones, EMMS empties the tags) and the faults of 9.5.1.
/// </summary>
public sealed unsafe class MmxTests : IDisposable
{
    private readonly NativeRunner _run = new();
    private readonly Random _rng = new(1717);

    public void Dispose() => _run.Dispose();

    private static readonly ushort[] WordEdges = { 0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0x8001, 0xffff, 0xfffe };

    private void Compare(string name, Action<Assembler> op, int runs = 24, bool words = false, Action<ulong[]>? setup = null)
    {
        ulong insn = _run.Load(a =>
        {
            a.movq(mm0, __qword_ptr[rsi]); a.movq(mm1, __qword_ptr[rsi + 8]); a.movq(mm2, __qword_ptr[rsi + 16]);
            op(a);
            a.movq(__qword_ptr[rsi + 48], mm0); a.movq(__qword_ptr[rsi + 56], mm1);
            a.emms();
        });
        var data = _run.DataSpan;
        var init = new byte[data.Length];
        for (int n = 0; n < runs; n++)
        {
            var regs = new ulong[16];
            for (int r = 0; r < 16; r++) regs[r] = (ulong)_rng.NextInt64() ^ ((ulong)_rng.Next() << 40);
            regs[4] = 0;
            regs[6] = (ulong)_run.Data + 0x1000;
            regs[7] = (ulong)_run.Data + 0x1800;
            setup?.Invoke(regs);
            _rng.NextBytes(init);
            var block = init.AsSpan(0x1000, 0x40);
            for (int k = 0; k < block.Length; k += 2)
                if (_rng.Next(3) == 0)
                {
                    if (words) BinaryPrimitives.WriteUInt16LittleEndian(block[k..], WordEdges[_rng.Next(WordEdges.Length)]);
                    else block[k] = (byte)(new[] { 0, 1, 0x7f, 0x80, 0x81, 0xfe, 0xff })[_rng.Next(7)];
                }

            init.CopyTo(data);
            var native = (ulong[])regs.Clone();
            ulong nflags = 2;
            _run.RunNative(native, ref nflags);
            var nativeMem = data.ToArray();

            init.CopyTo(data);
            var cpu = new CpuState();
            regs.CopyTo(cpu.Gpr);
            cpu.Rflags = 2;
            var res = _run.RunEngine(cpu, insn);
            Assert.True(res.IsOk, $"{name} #{n}: engine {res.Status} {res.Exception} code {res.Code}");
            for (int r = 0; r < 16; r++)
                if (r != 4 && native[r] != cpu.Gpr[r])
                    Assert.Fail($"{name} #{n}: GPR {r} native {native[r]:x} engine {cpu.Gpr[r]:x}");
            if (!data.SequenceEqual(nativeMem))
            {
                int at = 0;
                while (data[at] == nativeMem[at]) at++;
                Assert.Fail($"{name} #{n}: memory differs at +0x{at:x}: native {Convert.ToHexString(nativeMem, at & ~7, 8)} engine {Convert.ToHexString(data.ToArray(), at & ~7, 8)} inputs {Convert.ToHexString(init, 0x1000, 24)}");
            }
        }
    }

    [Fact]
    public void Arithmetic_compare_logic_unpack_and_pack_match_the_host()
    {
        var ops = new (string, Action<Assembler>, bool)[]
        {
            ("paddb", a => a.paddb(mm0, mm2), false), ("paddw", a => a.paddw(mm0, mm2), true),
            ("paddd", a => a.paddd(mm0, __qword_ptr[rsi + 19]), true), ("paddq", a => a.paddq(mm0, mm2), false),
            ("psubb", a => a.psubb(mm0, mm2), false), ("psubw", a => a.psubw(mm0, __qword_ptr[rsi + 16]), true),
            ("psubd", a => a.psubd(mm0, mm2), true), ("psubq", a => a.psubq(mm0, mm2), false),
            ("paddsb", a => a.paddsb(mm0, mm2), false), ("paddsw", a => a.paddsw(mm0, mm2), true),
            ("paddusb", a => a.paddusb(mm0, mm2), false), ("paddusw", a => a.paddusw(mm0, mm2), true),
            ("psubsb", a => a.psubsb(mm0, mm2), false), ("psubsw", a => a.psubsw(mm0, mm2), true),
            ("psubusb", a => a.psubusb(mm0, mm2), false), ("psubusw", a => a.psubusw(mm0, mm2), true),
            ("pmullw", a => a.pmullw(mm0, mm2), true), ("pmulhw", a => a.pmulhw(mm0, mm2), true),
            ("pmulhuw", a => a.pmulhuw(mm0, mm2), true), ("pmuludq", a => a.pmuludq(mm0, mm2), false),
            ("pmaddwd", a => a.pmaddwd(mm0, mm2), true), ("pavgb", a => a.pavgb(mm0, mm2), false),
            ("pavgw", a => a.pavgw(mm0, mm2), true), ("psadbw", a => a.psadbw(mm0, mm2), false),
            ("pminub", a => a.pminub(mm0, mm2), false), ("pmaxub", a => a.pmaxub(mm0, __qword_ptr[rsi + 16]), false),
            ("pminsw", a => a.pminsw(mm0, mm2), true), ("pmaxsw", a => a.pmaxsw(mm0, mm2), true),
            ("pcmpeqb", a => a.pcmpeqb(mm0, mm0), false), ("pcmpeqb2", a => a.pcmpeqb(mm0, mm2), false),
            ("pcmpeqw", a => a.pcmpeqw(mm0, mm2), true), ("pcmpeqd", a => a.pcmpeqd(mm0, mm2), true),
            ("pcmpgtb", a => a.pcmpgtb(mm0, mm2), false), ("pcmpgtw", a => a.pcmpgtw(mm0, mm2), true),
            ("pcmpgtd", a => a.pcmpgtd(mm0, mm2), true),
            ("pand", a => a.pand(mm0, mm2), false), ("pandn", a => a.pandn(mm0, mm2), false),
            ("por", a => a.por(mm0, __qword_ptr[rsi + 16]), false), ("pxor", a => a.pxor(mm1, mm1), false),
            ("punpcklbw", a => a.punpcklbw(mm0, mm2), false), ("punpcklbw m32", a => a.punpcklbw(mm0, __dword_ptr[rsi + 17]), false),
            ("punpckhbw", a => a.punpckhbw(mm0, mm2), false),
            ("punpcklwd", a => a.punpcklwd(mm0, mm2), false), ("punpckhwd", a => a.punpckhwd(mm0, mm2), false),
            ("punpckldq", a => a.punpckldq(mm0, mm2), false), ("punpckhdq", a => a.punpckhdq(mm1, mm2), false),
            ("packsswb", a => a.packsswb(mm0, mm2), true), ("packuswb", a => a.packuswb(mm0, mm2), true),
            ("packssdw", a => a.packssdw(mm0, mm2), true), ("packsswb self", a => a.packsswb(mm1, mm1), true),
        };
        foreach (var (name, op, words) in ops) Compare(name, op, words: words);
    }

    [Fact]
    public void Shifts_shuffles_moves_and_conversions_match_the_host()
    {
        foreach (byte n in new byte[] { 0, 1, 7, 15, 16, 31, 32, 63, 64, 200 })
        {
            Compare($"psllw {n}", a => a.psllw(mm0, n), runs: 3); Compare($"psrlw {n}", a => a.psrlw(mm0, n), runs: 3);
            Compare($"psraw {n}", a => a.psraw(mm0, n), runs: 3); Compare($"pslld {n}", a => a.pslld(mm0, n), runs: 3);
            Compare($"psrld {n}", a => a.psrld(mm0, n), runs: 3); Compare($"psrad {n}", a => a.psrad(mm0, n), runs: 3);
            Compare($"psllq {n}", a => a.psllq(mm0, n), runs: 3); Compare($"psrlq {n}", a => a.psrlq(mm0, n), runs: 3);
        }
        foreach (ulong count in new ulong[] { 0, 3, 16, 33, 64, 0x100000001, ulong.MaxValue })
        {
            void Count(Assembler a) { a.mov(rax, count); a.movq(mm1, rax); }
            Compare($"psraw mm {count}", a => { Count(a); a.psraw(mm0, mm1); }, runs: 2);
            Compare($"psrld mm {count}", a => { Count(a); a.psrld(mm0, mm1); }, runs: 2);
            Compare($"psllq mm {count}", a => { Count(a); a.psllq(mm0, mm1); }, runs: 2);
            Compare($"psllw m64 {count}", a => { Count(a); a.mov(__qword_ptr[rsi + 40], rax); a.psllw(mm0, __qword_ptr[rsi + 40]); }, runs: 2);
        }
        foreach (byte imm in new byte[] { 0x00, 0x1b, 0x4e, 0xe4, 0xff })
            Compare($"pshufw {imm:x}", a => a.pshufw(mm0, mm2, imm), runs: 3);
        Compare("pshufw m", a => a.pshufw(mm1, __qword_ptr[rsi + 21], 0x93));
        Compare("movd mm,r32", a => a.movd(mm0, ebx));
        Compare("movd r32,mm", a => a.movd(ecx, mm2));
        Compare("movd mm,m32", a => a.movd(mm1, __dword_ptr[rsi + 17]));
        Compare("movd m32,mm", a => a.movd(__dword_ptr[rsi + 3], mm2));
        Compare("movq mm,r64", a => a.movq(mm0, rdx));
        Compare("movq r64,mm", a => a.movq(r10, mm2));
        Compare("movq mm,mm", a => a.movq(mm1, mm2));
        Compare("movq m64,mm", a => a.movq(__qword_ptr[rsi + 29], mm2));
        Compare("movntq", a => a.movntq(__qword_ptr[rsi + 32], mm2));
        Compare("pinsrw", a => a.pinsrw(mm0, ebx, 2));
        Compare("pinsrw m16", a => a.pinsrw(mm0, __word_ptr[rsi + 19], 7));
        Compare("pextrw", a => a.pextrw(eax, mm2, 3));
        Compare("pextrw 6", a => a.pextrw(r8d, mm2, 6));
        Compare("pmovmskb", a => a.pmovmskb(edx, mm2));
        Compare("maskmovq", a => a.maskmovq(mm2, mm1));
        Compare("movq2dq/movdq2q", a => { a.movq2dq(xmm3, mm2); a.paddd(xmm3, xmm3); a.movdq2q(mm0, xmm3); });
        Compare("cvtpi2ps", a => { a.xorps(xmm3, xmm3); a.cvtpi2ps(xmm3, mm2); a.movdqu(__[rsi + 32], xmm3); });
        Compare("cvtpi2pd m", a => { a.cvtpi2pd(xmm3, __qword_ptr[rsi + 8]); a.movdqu(__[rsi + 32], xmm3); });
        Compare("cvtps2pi", a => { a.mov(eax, 0x4f000000); a.movd(xmm3, eax); a.cvtps2pi(mm0, xmm3); a.cvttps2pi(mm1, __qword_ptr[rsi + 16]); });
        Compare("cvtpd2pi", a => { a.cvtpi2pd(xmm3, mm2); a.cvtpd2pi(mm0, xmm3); a.cvttpd2pi(mm1, xmm3); });
    }

    // ---- SDM values and the x87 aliasing -----------------------------------------------------------------------

    private static (InstructionEngine, TestMemory, CpuState) Machine(Action<Assembler> emit)
    {
        var mem = new TestMemory(4 << 20);
        mem.Write64(0x10000, 0x11000 | 3);
        mem.Write64(0x11000, 0x12000 | 3);
        mem.Write64(0x12000, 0x83);
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        cpu.Rip = 0x1000;
        cpu.Gpr[4] = 0x8000;
        mem.Write(0x1000, NativeRunner.Assemble(emit, 0x1000));
        return (new InstructionEngine(mem), mem, cpu);
    }

    private static ulong Mm(CpuState cpu, int n) => BinaryPrimitives.ReadUInt64LittleEndian(cpu.St(n));

    private static ulong Run(Action<Assembler> emit, ulong d, ulong s)
    {
        var (engine, _, cpu) = Machine(emit);
        cpu.Gpr[0] = d; cpu.Gpr[1] = s;
        for (int k = 0; k < 3; k++) Assert.True(engine.Step(cpu).IsOk);
        return Mm(cpu, 0);
    }

    private static void Binary(Action<Assembler> op, ulong d, ulong s, ulong expected)
        => Assert.Equal(expected.ToString("x16"), Run(a => { a.movq(mm0, rax); a.movq(mm1, rcx); op(a); }, d, s).ToString("x16"));

    [Fact]
    public void Results_are_the_values_the_SDM_names()
    {
        // PADDUSB: unsigned saturation at 0xFF; PSUBUSB at 0.
        Binary(a => a.paddusb(mm0, mm1), 0x00ff_80_7f_01_fe_10_20, 0x0001_80_81_ff_01_f0_e0, 0x00ff_ff_ff_ff_ff_ff_ff);
        Binary(a => a.psubusb(mm0, mm1), 0x0010_80_7f_01_fe_10_20, 0x0001_81_80_00_01_10_21, 0x000f_00_00_01_fd_00_00);
        // PADDSW: signed saturation at 0x7FFF / 0x8000.
        Binary(a => a.paddsw(mm0, mm1), 0x7fff_8000_0001_ffff, 0x0001_ffff_0002_8000, 0x7fff_8000_0003_8000);
        // PACKSSWB: destination words to the low four bytes, source words to the high four, signed saturation.
        Binary(a => a.packsswb(mm0, mm1), 0x0100_ff80_007f_8000, 0x0001_ffff_7fff_fffe, 0x01_ff_7f_fe_7f_80_7f_80);
        // PACKUSWB: unsigned saturation of signed words.
        Binary(a => a.packuswb(mm0, mm1), 0x0100_ff80_007f_8000, 0x0001_ffff_7fff_00fe, 0x01_00_ff_fe_ff_00_7f_00);
        // PACKSSDW.
        Binary(a => a.packssdw(mm0, mm1), 0x0001_0000_ffff_0000, 0x0000_7fff_8000_0000, 0x7fff_8000_7fff_8000);
        // PMADDWD: (-32768 * -32768) * 2 wraps to 0x80000000; 3*4 + 5*6 = 42.
        Binary(a => a.pmaddwd(mm0, mm1), 0x8000_8000_0005_0003, 0x8000_8000_0006_0004, 0x8000_0000_0000_002a);
        // PUNPCKHBW interleaves the high four bytes; PUNPCKLWD the low two words.
        Binary(a => a.punpckhbw(mm0, mm1), 0x8877_6655_4433_2211, 0xffee_ddcc_bbaa_9988, 0xff88_ee77_dd66_cc55);
        Binary(a => a.punpcklwd(mm0, mm1), 0x8877_6655_4433_2211, 0xffee_ddcc_bbaa_9988, 0xbbaa_4433_9988_2211);
        // PSADBW: the sum in the low word, the rest zero.
        Binary(a => a.psadbw(mm0, mm1), 0xff00_0000_0000_0000, 0x00ff_0000_0000_0001, 0x0000_0000_0000_01ff);
        // PSRAW by more than 15 fills with the sign.
        Binary(a => a.psraw(mm0, mm1), 0x8000_7fff_ffff_0001, 40, 0xffff_0000_ffff_0000);
    }

    [Fact]
    public void An_mmx_instruction_sets_top_to_0_tags_valid_and_the_exponent_to_ones_and_emms_empties_the_tags()
    {
        var (engine, _, cpu) = Machine(a => { a.fld1(); a.movq(mm3, rax); a.emms(); });
        cpu.Gpr[0] = 0x1122334455667788;
        Assert.True(engine.Step(cpu).IsOk); // FLD1: TOP 7, R7 valid
        Assert.Equal(7, (cpu.Fsw >> 11) & 7);
        Assert.Equal(0x80, cpu.FtwAbridged);
        Assert.Equal(0x8000000000000000ul, Mm(cpu, 0)); // ST(0) = R7 = 1.0
        Assert.True(engine.Step(cpu).IsOk); // MOVQ mm3, rax
        Assert.Equal(0, (cpu.Fsw >> 11) & 7);
        Assert.Equal(0xff, cpu.FtwAbridged);
        Assert.Equal(0x1122334455667788ul, Mm(cpu, 3));
        Assert.Equal(0xffff, BinaryPrimitives.ReadUInt16LittleEndian(cpu.St(3)[8..]));
        Assert.Equal(0x8000000000000000ul, Mm(cpu, 7)); // the 1.0 in R7 is now ST(7) = MM7
        Assert.True(engine.Step(cpu).IsOk); // EMMS
        Assert.Equal(0, cpu.FtwAbridged);
        Assert.Equal(0x1122334455667788ul, Mm(cpu, 3));
    }

    [Fact]
    public void Mmx_is_ud_with_cr0_em_nm_with_cr0_ts_and_mf_with_a_pending_x87_exception()
    {
        foreach (var emit in new Action<Assembler>[] { a => a.paddb(mm0, mm1), a => a.emms(), a => a.movd(mm0, eax), a => a.pshufw(mm0, mm1, 1) })
        {
            var (engine, _, cpu) = Machine(emit);
            cpu.Cr0 |= CpuState.Cr0Em;
            Assert.Equal(Vector.UD, engine.Step(cpu).Exception.Vector);
            cpu.Cr0 = cpu.Cr0 & ~CpuState.Cr0Em | CpuState.Cr0Ts;
            Assert.Equal(Vector.NM, engine.Step(cpu).Exception.Vector);
            cpu.Cr0 &= ~CpuState.Cr0Ts;
            cpu.Fsw = 0x80 | 0x8000 | 1; // IE unmasked and pending: ES and B set
            Assert.Equal(Vector.MF, engine.Step(cpu).Exception.Vector);
            Assert.Equal(0x1000ul, cpu.Rip);
            cpu.Fsw = 0;
            Assert.True(engine.Step(cpu).IsOk);
        }
    }

    [Fact]
    public void Cpuid_reports_mmx_and_ssse3_mm_forms_are_ud_without_ssse3()
    {
        var r = MinimalCpuidModel.Shared.Query(new CpuState(), 1, 0);
        Assert.NotEqual(0u, r.Edx & (1u << 23));
        Assert.Equal(0u, r.Ecx & (1u << 9)); // SSSE3 not reported
        var (engine, _, cpu) = Machine(a => a.pshufb(mm0, mm1));
        var res = engine.Step(cpu);
        Assert.Equal(StepStatus.Exception, res.Status);
        Assert.Equal(Vector.UD, res.Exception.Vector);
    }
}
