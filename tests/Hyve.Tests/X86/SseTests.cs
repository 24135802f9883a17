// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// SSE/SSE2 on XMM registers, differential against the host CPU: XMM0-XMM2 are loaded from the data page, the
/// instruction runs, XMM0 and XMM1 are stored back, and memory, general registers and the status flags must match.
/// Inputs mix random bytes with the edge values of each element type (saturation limits, signed/unsigned extremes,
/// signed zeros, infinities, quiet and signalling NaNs, denormals). Plus the SDM's fault rules: #GP(0) for a misaligned
/// 16-byte operand, #UD without CR4.OSFXSR, #NM with CR0.TS.
/// </summary>
public sealed unsafe class SseTests : IDisposable
{
    private const ulong Status = 0x8d5; // CF PF AF ZF SF OF
    private readonly NativeRunner _run = new();
    private readonly Random _rng = new(4242);

    public void Dispose() => _run.Dispose();

    private static readonly uint[] FloatEdges =
    {
        0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000,
        0x7f800001, 0x7fa00000, 0x00000001, 0x807fffff, 0x7f7fffff, 0x4f000000, 0xcf000000, 0x5f000000,
        0x3f000000, 0x3fc00000, 0x40200000, 0xc0200000, 0x4effffff, 0x4b800001,
    };

    private static readonly ulong[] DoubleEdges =
    {
        0, 0x8000000000000000, 0x3ff0000000000000, 0xbff0000000000000, 0x7ff0000000000000, 0xfff0000000000000,
        0x7ff8000000000000, 0xfff8000000000000, 0x7ff0000000000001, 0x7ff4000000000000, 1, 0x800fffffffffffff,
        0x7fefffffffffffff, 0x41e0000000000000, 0xc1e0000000000000, 0x43e0000000000000, 0xc3e0000000000000,
        0x3fe0000000000000, 0x3ff8000000000000, 0x4004000000000000, 0xc004000000000000, 0x41dfffffffc00000, 0x4330000000000001,
    };

    private enum Fill { Bytes, Words, Singles, Doubles }

    private void FillInputs(Span<byte> block, Fill fill, int run)
    {
        _rng.NextBytes(block);
        int n = block.Length;
        switch (fill)
        {
            case Fill.Bytes:
                for (int k = 0; k < n; k++) if (_rng.Next(3) == 0) block[k] = (byte)(new[] { 0, 1, 0x7f, 0x80, 0x81, 0xfe, 0xff })[_rng.Next(7)];
                break;
            case Fill.Words:
                for (int k = 0; k + 2 <= n; k += 2)
                    if (_rng.Next(3) == 0) BinaryPrimitives.WriteUInt16LittleEndian(block[k..], (ushort)(new[] { 0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0x8001, 0xffff })[_rng.Next(9)]);
                break;
            case Fill.Singles:
                for (int k = 0; k + 4 <= n; k += 4)
                {
                    int pick = _rng.Next(4);
                    uint v = pick == 0 ? FloatEdges[(run + k) % FloatEdges.Length]
                        : pick == 1 ? BitConverter.SingleToUInt32Bits((float)(_rng.NextDouble() * 200 - 100))
                        : BinaryPrimitives.ReadUInt32LittleEndian(block[k..]);
                    BinaryPrimitives.WriteUInt32LittleEndian(block[k..], v);
                }
                break;
            case Fill.Doubles:
                for (int k = 0; k + 8 <= n; k += 8)
                {
                    int pick = _rng.Next(4);
                    ulong v = pick == 0 ? DoubleEdges[(run + k) % DoubleEdges.Length]
                        : pick == 1 ? BitConverter.DoubleToUInt64Bits(_rng.NextDouble() * 2e10 - 1e10)
                        : BinaryPrimitives.ReadUInt64LittleEndian(block[k..]);
                    BinaryPrimitives.WriteUInt64LittleEndian(block[k..], v);
                }
                break;
        }
    }

    /// <summary>
    /// Runs <paramref name="op"/> between loads of XMM0-2 from [rsi], [rsi+16], [rsi+32] and stores of XMM0 and XMM1
    /// to [rsi+48] and [rsi+64], natively and under the engine, and compares.
    /// </summary>
    private void Compare(string name, Action<Assembler> op, Fill fill = Fill.Bytes, int runs = 48, bool flags = false,
        Action<ulong[]>? setup = null)
    {
        ulong insn = _run.Load(a =>
        {
            a.movdqu(xmm0, __[rsi]); a.movdqu(xmm1, __[rsi + 16]); a.movdqu(xmm2, __[rsi + 32]);
            op(a);
            a.movdqu(__[rsi + 48], xmm0); a.movdqu(__[rsi + 64], xmm1);
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
            FillInputs(init.AsSpan(0x1000, 0x60), fill, n);
            ulong flagsIn = 2 | ((ulong)_rng.Next() & Status);

            init.CopyTo(data);
            var native = (ulong[])regs.Clone();
            ulong nflags = flagsIn;
            _run.RunNative(native, ref nflags);
            var nativeMem = data.ToArray();

            init.CopyTo(data);
            var cpu = new CpuState();
            regs.CopyTo(cpu.Gpr);
            cpu.Rflags = flagsIn;
            var res = _run.RunEngine(cpu, insn);
            Assert.True(res.IsOk, $"{name} #{n}: engine {res.Status} {res.Exception} code {res.Code}");
            for (int r = 0; r < 16; r++)
                if (r != 4 && native[r] != cpu.Gpr[r])
                    Assert.Fail($"{name} #{n}: {(Reg)r} native {native[r]:x} engine {cpu.Gpr[r]:x}");
            if (flags && (nflags & Status) != (cpu.Rflags & Status))
                Assert.Fail($"{name} #{n}: flags native {nflags & Status:x} engine {cpu.Rflags & Status:x}");
            if (!data.SequenceEqual(nativeMem))
            {
                int at = 0;
                while (data[at] == nativeMem[at]) at++;
                Assert.Fail($"{name} #{n}: memory differs at +0x{at:x}: native {Hex(nativeMem, at)} engine {Hex(data.ToArray(), at)} inputs {Convert.ToHexString(init, 0x1000, 48)}");
            }
        }
    }

    private static string Hex(byte[] b, int at)
    {
        int start = at & ~15;
        return Convert.ToHexString(b, start, Math.Min(16, b.Length - start));
    }

    [Fact]
    public void Moves_match_the_host()
    {
        Compare("movdqa r,r", a => a.movdqa(xmm0, xmm2));
        Compare("movdqa r,m", a => a.movdqa(xmm0, __[rsi + 32]));
        Compare("movdqa m,r", a => a.movdqa(__[rsi + 16], xmm2));
        Compare("movdqu r,m+3", a => a.movdqu(xmm0, __[rsi + 3]));
        Compare("movdqu m+5,r", a => a.movdqu(__[rsi + 5], xmm2));
        Compare("movaps", a => a.movaps(xmm1, __[rsi + 32]));
        Compare("movapd m,r", a => a.movapd(__[rsi], xmm1));
        Compare("movups m+1", a => a.movups(xmm0, __[rsi + 1]));
        Compare("movupd m+9,r", a => a.movupd(__[rsi + 9], xmm2));
        Compare("movntdq", a => a.movntdq(__[rsi + 16], xmm2));
        Compare("movntps", a => a.movntps(__[rsi], xmm2));
        Compare("movd xmm,r32", a => a.movd(xmm0, eax));
        Compare("movd xmm,m32", a => a.movd(xmm1, __dword_ptr[rsi + 36]));
        Compare("movd r32,xmm", a => a.movd(ecx, xmm2));
        Compare("movd m32,xmm", a => a.movd(__dword_ptr[rsi + 6], xmm2));
        Compare("movq xmm,r64", a => a.movq(xmm0, rbx));
        Compare("movq r64,xmm", a => a.movq(rdx, xmm1));
        Compare("movq xmm,xmm", a => a.movq(xmm0, xmm2));
        Compare("movq xmm,m64", a => a.movq(xmm0, __qword_ptr[rsi + 40]));
        Compare("movq m64,xmm", a => a.movq(__qword_ptr[rsi + 3], xmm1));
        Compare("movss r,r", a => a.movss(xmm0, xmm2));
        Compare("movss r,m", a => a.movss(xmm0, __dword_ptr[rsi + 36]));
        Compare("movss m,r", a => a.movss(__dword_ptr[rsi + 2], xmm1));
        Compare("movsd r,r", a => a.movsd(xmm1, xmm2));
        Compare("movsd r,m", a => a.movsd(xmm1, __qword_ptr[rsi + 36]));
        Compare("movsd m,r", a => a.movsd(__qword_ptr[rsi + 7], xmm0));
        Compare("movlps r,m", a => a.movlps(xmm0, __qword_ptr[rsi + 40]));
        Compare("movhps r,m", a => a.movhps(xmm0, __qword_ptr[rsi + 40]));
        Compare("movlpd m,r", a => a.movlpd(__qword_ptr[rsi + 1], xmm1));
        Compare("movhpd m,r", a => a.movhpd(__qword_ptr[rsi + 1], xmm1));
        Compare("movhlps", a => a.movhlps(xmm0, xmm2));
        Compare("movlhps", a => a.movlhps(xmm0, xmm2));
        Compare("movmskps", a => a.movmskps(eax, xmm2), Fill.Singles);
        Compare("movmskpd", a => a.movmskpd(rcx, xmm2), Fill.Doubles);
        Compare("pmovmskb", a => a.pmovmskb(edx, xmm2));
        Compare("pextrw", a => a.pextrw(eax, xmm2, 5));
        Compare("pextrw hi", a => a.pextrw(r9d, xmm2, 15));
        Compare("pinsrw r32", a => a.pinsrw(xmm0, ebx, 3));
        Compare("pinsrw m16", a => a.pinsrw(xmm0, __word_ptr[rsi + 33], 7));
        Compare("maskmovdqu", a => a.maskmovdqu(xmm2, xmm1));
    }

    [Fact]
    public void Integer_arithmetic_compare_and_logic_match_the_host()
    {
        var ops = new (string, Action<Assembler>, Fill)[]
        {
            ("paddb", a => a.paddb(xmm0, xmm2), Fill.Bytes), ("paddw", a => a.paddw(xmm0, xmm2), Fill.Words),
            ("paddd", a => a.paddd(xmm0, __[rsi + 32]), Fill.Words), ("paddq", a => a.paddq(xmm0, xmm2), Fill.Bytes),
            ("psubb", a => a.psubb(xmm0, xmm2), Fill.Bytes), ("psubw", a => a.psubw(xmm0, __[rsi + 32]), Fill.Words),
            ("psubd", a => a.psubd(xmm0, xmm2), Fill.Words), ("psubq", a => a.psubq(xmm0, xmm2), Fill.Bytes),
            ("paddsb", a => a.paddsb(xmm0, xmm2), Fill.Bytes), ("paddsw", a => a.paddsw(xmm0, xmm2), Fill.Words),
            ("paddusb", a => a.paddusb(xmm0, xmm2), Fill.Bytes), ("paddusw", a => a.paddusw(xmm0, xmm2), Fill.Words),
            ("psubsb", a => a.psubsb(xmm0, xmm2), Fill.Bytes), ("psubsw", a => a.psubsw(xmm0, xmm2), Fill.Words),
            ("psubusb", a => a.psubusb(xmm0, xmm2), Fill.Bytes), ("psubusw", a => a.psubusw(xmm0, xmm2), Fill.Words),
            ("pmullw", a => a.pmullw(xmm0, xmm2), Fill.Words), ("pmulhw", a => a.pmulhw(xmm0, xmm2), Fill.Words),
            ("pmulhuw", a => a.pmulhuw(xmm0, xmm2), Fill.Words), ("pmuludq", a => a.pmuludq(xmm0, xmm2), Fill.Bytes),
            ("pmaddwd", a => a.pmaddwd(xmm0, xmm2), Fill.Words), ("pavgb", a => a.pavgb(xmm0, xmm2), Fill.Bytes),
            ("pavgw", a => a.pavgw(xmm0, xmm2), Fill.Words), ("psadbw", a => a.psadbw(xmm0, xmm2), Fill.Bytes),
            ("pminub", a => a.pminub(xmm0, xmm2), Fill.Bytes), ("pmaxub", a => a.pmaxub(xmm0, __[rsi + 32]), Fill.Bytes),
            ("pminsw", a => a.pminsw(xmm0, xmm2), Fill.Words), ("pmaxsw", a => a.pmaxsw(xmm0, xmm2), Fill.Words),
            ("pcmpeqb", a => a.pcmpeqb(xmm0, xmm0), Fill.Bytes), ("pcmpeqb2", a => a.pcmpeqb(xmm0, xmm2), Fill.Bytes),
            ("pcmpeqw", a => a.pcmpeqw(xmm0, xmm2), Fill.Words), ("pcmpeqd", a => a.pcmpeqd(xmm0, xmm2), Fill.Words),
            ("pcmpgtb", a => a.pcmpgtb(xmm0, xmm2), Fill.Bytes), ("pcmpgtw", a => a.pcmpgtw(xmm0, xmm2), Fill.Words),
            ("pcmpgtd", a => a.pcmpgtd(xmm0, xmm2), Fill.Words),
            ("pand", a => a.pand(xmm0, xmm2), Fill.Bytes), ("pandn", a => a.pandn(xmm0, xmm2), Fill.Bytes),
            ("por", a => a.por(xmm0, __[rsi + 32]), Fill.Bytes), ("pxor", a => a.pxor(xmm0, xmm0), Fill.Bytes),
            ("pxor2", a => a.pxor(xmm1, xmm2), Fill.Bytes), ("andps", a => a.andps(xmm0, xmm2), Fill.Bytes),
            ("andnpd", a => a.andnpd(xmm0, xmm2), Fill.Bytes), ("orps", a => a.orps(xmm0, xmm2), Fill.Bytes),
            ("xorpd", a => a.xorpd(xmm0, xmm2), Fill.Bytes),
            ("punpcklbw", a => a.punpcklbw(xmm0, xmm2), Fill.Bytes), ("punpckhbw", a => a.punpckhbw(xmm0, xmm2), Fill.Bytes),
            ("punpcklwd", a => a.punpcklwd(xmm0, xmm2), Fill.Bytes), ("punpckhwd", a => a.punpckhwd(xmm0, xmm2), Fill.Bytes),
            ("punpckldq", a => a.punpckldq(xmm0, xmm2), Fill.Bytes), ("punpckhdq", a => a.punpckhdq(xmm0, xmm2), Fill.Bytes),
            ("punpcklqdq", a => a.punpcklqdq(xmm0, xmm2), Fill.Bytes), ("punpckhqdq", a => a.punpckhqdq(xmm0, __[rsi + 32]), Fill.Bytes),
            ("unpcklps", a => a.unpcklps(xmm0, xmm2), Fill.Bytes), ("unpckhps", a => a.unpckhps(xmm0, xmm2), Fill.Bytes),
            ("unpcklpd", a => a.unpcklpd(xmm0, xmm2), Fill.Bytes), ("unpckhpd", a => a.unpckhpd(xmm0, xmm2), Fill.Bytes),
            ("packsswb", a => a.packsswb(xmm0, xmm2), Fill.Words), ("packuswb", a => a.packuswb(xmm0, xmm2), Fill.Words),
            ("packssdw", a => a.packssdw(xmm0, xmm2), Fill.Words),
        };
        foreach (var (name, op, fill) in ops) Compare(name, op, fill, runs: 24);
    }

    [Fact]
    public void Shifts_and_shuffles_match_the_host()
    {
        foreach (byte n in new byte[] { 0, 1, 3, 7, 8, 15, 16, 31, 32, 33, 63, 64, 200 })
        {
            Compare($"psllw {n}", a => a.psllw(xmm0, n), runs: 4); Compare($"psrlw {n}", a => a.psrlw(xmm0, n), runs: 4);
            Compare($"psraw {n}", a => a.psraw(xmm0, n), runs: 4); Compare($"pslld {n}", a => a.pslld(xmm0, n), runs: 4);
            Compare($"psrld {n}", a => a.psrld(xmm0, n), runs: 4); Compare($"psrad {n}", a => a.psrad(xmm0, n), runs: 4);
            Compare($"psllq {n}", a => a.psllq(xmm0, n), runs: 4); Compare($"psrlq {n}", a => a.psrlq(xmm0, n), runs: 4);
            Compare($"pslldq {n}", a => a.pslldq(xmm0, n), runs: 4); Compare($"psrldq {n}", a => a.psrldq(xmm0, n), runs: 4);
        }
        // By register: the count is the whole low quadword of XMM1, small or huge.
        foreach (ulong count in new ulong[] { 0, 1, 5, 15, 16, 17, 31, 32, 63, 64, 65, 0x100000001, ulong.MaxValue })
        {
            void Count(Assembler a) { a.mov(rax, count); a.movq(xmm1, rax); }
            Compare($"psllw x{count}", a => { Count(a); a.psllw(xmm0, xmm1); }, runs: 3);
            Compare($"psrlw x{count}", a => { Count(a); a.psrlw(xmm0, xmm1); }, runs: 3);
            Compare($"psraw x{count}", a => { Count(a); a.psraw(xmm0, xmm1); }, runs: 3);
            Compare($"pslld x{count}", a => { Count(a); a.pslld(xmm0, xmm1); }, runs: 3);
            Compare($"psrld x{count}", a => { Count(a); a.psrld(xmm0, xmm1); }, runs: 3);
            Compare($"psrad x{count}", a => { Count(a); a.psrad(xmm0, xmm1); }, runs: 3);
            Compare($"psllq x{count}", a => { Count(a); a.psllq(xmm0, xmm1); }, runs: 3);
            Compare($"psrlq x{count}", a => { Count(a); a.psrlq(xmm0, xmm1); }, runs: 3);
        }
        foreach (byte imm in new byte[] { 0x00, 0x1b, 0x4e, 0xb1, 0xe4, 0xff, 0x93 })
        {
            Compare($"pshufd {imm:x}", a => a.pshufd(xmm0, xmm2, imm), runs: 4);
            Compare($"pshufd m {imm:x}", a => a.pshufd(xmm1, __[rsi + 32], imm), runs: 4);
            Compare($"pshuflw {imm:x}", a => a.pshuflw(xmm0, xmm2, imm), runs: 4);
            Compare($"pshufhw {imm:x}", a => a.pshufhw(xmm0, xmm2, imm), runs: 4);
            Compare($"shufps {imm:x}", a => a.shufps(xmm0, xmm2, imm), runs: 4);
            Compare($"shufps self {imm:x}", a => a.shufps(xmm0, xmm0, imm), runs: 4);
            Compare($"shufpd {imm:x}", a => a.shufpd(xmm0, xmm2, imm), runs: 4);
        }
    }

    [Fact]
    public void Floating_point_arithmetic_compares_and_conversions_match_the_host()
    {
        var single = new (string, Action<Assembler>)[]
        {
            ("addps", a => a.addps(xmm0, xmm2)), ("addss", a => a.addss(xmm0, xmm2)), ("subps", a => a.subps(xmm0, __[rsi + 32])),
            ("subss", a => a.subss(xmm0, __dword_ptr[rsi + 33])), ("mulps", a => a.mulps(xmm0, xmm2)), ("mulss", a => a.mulss(xmm0, xmm2)),
            ("divps", a => a.divps(xmm0, xmm2)), ("divss", a => a.divss(xmm0, xmm2)), ("minps", a => a.minps(xmm0, xmm2)),
            ("minss", a => a.minss(xmm0, xmm2)), ("maxps", a => a.maxps(xmm0, xmm2)), ("maxss", a => a.maxss(xmm0, xmm2)),
            ("sqrtps", a => a.sqrtps(xmm0, xmm2)), ("sqrtss", a => a.sqrtss(xmm0, xmm2)),
            ("cvtss2sd", a => a.cvtss2sd(xmm0, xmm2)), ("cvtps2pd", a => a.cvtps2pd(xmm0, xmm2)),
            ("cvtps2dq", a => a.cvtps2dq(xmm0, xmm2)), ("cvttps2dq", a => a.cvttps2dq(xmm0, xmm2)),
            ("cvttss2si r32", a => a.cvttss2si(eax, xmm2)), ("cvttss2si r64", a => a.cvttss2si(rax, xmm2)),
            ("cvtss2si r32", a => a.cvtss2si(ecx, xmm2)), ("cvtss2si r64 m", a => a.cvtss2si(rcx, __dword_ptr[rsi + 36])),
            ("cvtdq2ps", a => a.cvtdq2ps(xmm0, xmm2)), ("cvtsi2ss r32", a => a.cvtsi2ss(xmm0, ebx)), ("cvtsi2ss r64", a => a.cvtsi2ss(xmm0, rbx)),
        };
        var dbl = new (string, Action<Assembler>)[]
        {
            ("addpd", a => a.addpd(xmm0, xmm2)), ("addsd", a => a.addsd(xmm0, __qword_ptr[rsi + 35])), ("subpd", a => a.subpd(xmm0, xmm2)),
            ("subsd", a => a.subsd(xmm0, xmm2)), ("mulpd", a => a.mulpd(xmm0, xmm2)), ("mulsd", a => a.mulsd(xmm0, xmm2)),
            ("divpd", a => a.divpd(xmm0, __[rsi + 32])), ("divsd", a => a.divsd(xmm0, xmm2)), ("minpd", a => a.minpd(xmm0, xmm2)),
            ("minsd", a => a.minsd(xmm0, xmm2)), ("maxpd", a => a.maxpd(xmm0, xmm2)), ("maxsd", a => a.maxsd(xmm0, xmm2)),
            ("sqrtpd", a => a.sqrtpd(xmm0, xmm2)), ("sqrtsd", a => a.sqrtsd(xmm0, xmm2)),
            ("cvtsd2ss", a => a.cvtsd2ss(xmm0, xmm2)), ("cvtpd2ps", a => a.cvtpd2ps(xmm0, xmm2)),
            ("cvtpd2dq", a => a.cvtpd2dq(xmm0, xmm2)), ("cvttpd2dq", a => a.cvttpd2dq(xmm0, xmm2)),
            ("cvttsd2si r32", a => a.cvttsd2si(eax, xmm2)), ("cvttsd2si r64", a => a.cvttsd2si(rax, xmm2)),
            ("cvtsd2si r32", a => a.cvtsd2si(edx, xmm2)), ("cvtsd2si r64", a => a.cvtsd2si(rdx, xmm2)),
            ("cvtdq2pd", a => a.cvtdq2pd(xmm0, xmm2)), ("cvtsi2sd r32", a => a.cvtsi2sd(xmm0, ebx)), ("cvtsi2sd r64", a => a.cvtsi2sd(xmm1, rbx)),
        };
        foreach (var (name, op) in single) Compare(name, op, Fill.Singles, runs: 40);
        foreach (var (name, op) in dbl) Compare(name, op, Fill.Doubles, runs: 40);
        for (byte p = 0; p < 8; p++)
        {
            Compare($"cmpps {p}", a => a.cmpps(xmm0, xmm2, p), Fill.Singles, runs: 24);
            Compare($"cmpss {p}", a => a.cmpss(xmm0, xmm2, p), Fill.Singles, runs: 24);
            Compare($"cmppd {p}", a => a.cmppd(xmm0, xmm2, p), Fill.Doubles, runs: 24);
            Compare($"cmpsd {p}", a => a.cmpsd(xmm0, xmm2, p), Fill.Doubles, runs: 24);
        }
        Compare("comiss", a => a.comiss(xmm0, xmm2), Fill.Singles, flags: true);
        Compare("ucomiss m", a => a.ucomiss(xmm0, __dword_ptr[rsi + 32]), Fill.Singles, flags: true);
        Compare("comisd", a => a.comisd(xmm0, xmm2), Fill.Doubles, flags: true);
        Compare("ucomisd", a => a.ucomisd(xmm1, xmm2), Fill.Doubles, flags: true);
    }

    [Fact]
    public void Conversions_follow_mxcsr_rounding_control()
    {
        foreach (uint rc in new uint[] { 0, 1, 2, 3 })
        {
            uint mxcsr = 0x1f80 | rc << 13;
            void Mode(Assembler a) { a.mov(__dword_ptr[rsi + 80], mxcsr); a.ldmxcsr(__dword_ptr[rsi + 80]); }
            void Back(Assembler a) { a.mov(__dword_ptr[rsi + 80], 0x1f80); a.ldmxcsr(__dword_ptr[rsi + 80]); }
            Compare($"cvtsd2si rc{rc}", a => { Mode(a); a.cvtsd2si(rax, xmm2); Back(a); }, Fill.Doubles, runs: 24);
            Compare($"cvtps2dq rc{rc}", a => { Mode(a); a.cvtps2dq(xmm0, xmm2); Back(a); }, Fill.Singles, runs: 24);
            Compare($"cvtsi2ss r64 rc{rc}", a => { Mode(a); a.cvtsi2ss(xmm0, rbx); Back(a); }, Fill.Bytes, runs: 24);
            Compare($"cvtsi2sd r64 rc{rc}", a => { Mode(a); a.cvtsi2sd(xmm0, rbx); Back(a); }, Fill.Bytes, runs: 24);
        }
    }

    // ---- the SDM's fault rules, on a small test machine --------------------------------------------------------

    private static (InstructionEngine, TestMemory, CpuState) Machine(Action<Assembler> emit)
    {
        var mem = new TestMemory(4 << 20);
        mem.Write64(0x10000, 0x11000 | 3);
        mem.Write64(0x11000, 0x12000 | 3);
        mem.Write64(0x12000, 0x83); // 2 MiB identity page
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        cpu.Rip = 0x1000;
        cpu.Gpr[4] = 0x8000;
        var a = new Assembler(64);
        emit(a);
        var w = new Writer();
        a.Assemble(w, 0x1000);
        mem.Write(0x1000, w.Bytes.ToArray());
        return (new InstructionEngine(mem), mem, cpu);
    }

    private sealed class Writer : CodeWriter
    {
        public readonly List<byte> Bytes = new();
        public override void WriteByte(byte value) => Bytes.Add(value);
    }

    [Fact]
    public void A_misaligned_16_byte_operand_is_gp0_except_for_the_unaligned_moves()
    {
        foreach (var emit in new Action<Assembler>[]
        {
            a => a.movdqa(xmm0, __[rdi + 8]), a => a.movaps(__[rdi + 4], xmm0), a => a.paddb(xmm0, __[rdi + 1]),
            a => a.pshufd(xmm0, __[rdi + 8], 0), a => a.addps(xmm0, __[rdi + 8]), a => a.psllw(xmm0, __[rdi + 8]),
        })
        {
            var (engine, _, cpu) = Machine(emit);
            cpu.Gpr[7] = 0x3000;
            var r = engine.Step(cpu);
            Assert.Equal(StepStatus.Exception, r.Status);
            Assert.Equal(Vector.GP, r.Exception.Vector);
            Assert.Equal(0u, r.Exception.ErrorCode);
            Assert.Equal(0x1000ul, cpu.Rip);
        }
        foreach (var emit in new Action<Assembler>[]
        {
            a => a.movdqu(xmm0, __[rdi + 8]), a => a.movups(__[rdi + 4], xmm0), a => a.addss(xmm0, __dword_ptr[rdi + 1]),
            a => a.movq(xmm0, __qword_ptr[rdi + 3]), a => a.movsd(xmm0, __qword_ptr[rdi + 5]),
        })
        {
            var (engine, _, cpu) = Machine(emit);
            cpu.Gpr[7] = 0x3000;
            Assert.True(engine.Step(cpu).IsOk);
        }
    }

    [Fact]
    public void Sse_is_ud_without_cr4_osfxsr_or_with_cr0_em_and_nm_with_cr0_ts()
    {
        var (engine, _, cpu) = Machine(a => a.pxor(xmm0, xmm1));
        cpu.Cr4 &= ~CpuState.Cr4Osfxsr;
        Assert.Equal(Vector.UD, engine.Step(cpu).Exception.Vector);
        cpu.Cr4 |= CpuState.Cr4Osfxsr;
        cpu.Cr0 |= CpuState.Cr0Em;
        Assert.Equal(Vector.UD, engine.Step(cpu).Exception.Vector);
        cpu.Cr0 &= ~CpuState.Cr0Em;
        cpu.Cr0 |= CpuState.Cr0Ts;
        Assert.Equal(Vector.NM, engine.Step(cpu).Exception.Vector);
        cpu.Cr0 &= ~CpuState.Cr0Ts;
        Assert.True(engine.Step(cpu).IsOk);
    }

    [Fact]
    public void A_128_bit_store_that_crosses_into_an_unmapped_page_faults_before_writing_anything()
    {
        var (engine, mem, cpu) = Machine(a => a.movdqu(__[rdi], xmm0));
        // 4 KiB pages instead of the 2 MiB one: 0x0000-0x3fff present, 0x4000 not.
        mem.Write64(0x11000, 0x13000 | 3);
        for (ulong p = 0; p < 4; p++) mem.Write64(0x13000 + 8 * p, (p << 12) | 3);
        cpu.Gpr[7] = 0x3ff8;
        cpu.Xmm(0).Fill(0xab);
        var r = engine.Step(cpu);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.PF, r.Exception.Vector);
        Assert.Equal(0ul, mem.Read64(0x3ff8));
    }
}

/// <summary>x87 arithmetic on values a double holds exactly, differential against the host's x87 (which rounds to 64 bits).</summary>
public sealed unsafe class X87Tests : IDisposable
{
    private readonly NativeRunner _run = new();

    public void Dispose() => _run.Dispose();

    private void Compare(string name, Action<Assembler> body, params double[] inputs)
    {
        ulong insn = _run.Load(body);
        var data = _run.DataSpan;
        data.Clear();
        for (int k = 0; k < inputs.Length; k++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(data[(0x1000 + 8 * k)..], BitConverter.DoubleToInt64Bits(inputs[k]));
            BinaryPrimitives.WriteInt32LittleEndian(data[(0x1100 + 4 * k)..], (int)inputs[k]);
        }
        var init = data.ToArray();
        var regs = new ulong[16];
        regs[6] = (ulong)_run.Data + 0x1000;
        ulong fl = 2;
        _run.RunNative(regs, ref fl);
        var native = data.ToArray();
        var nflags = fl;
        init.CopyTo(data);
        var cpu = new CpuState();
        cpu.Gpr[6] = (ulong)_run.Data + 0x1000;
        cpu.Rflags = 2;
        var r = _run.RunEngine(cpu, insn);
        Assert.True(r.IsOk, $"{name}: {r.Status} {r.Code}");
        Assert.True(native.AsSpan().SequenceEqual(data), $"{name}: memory differs: native {Convert.ToHexString(native, 0x1200, 32)} engine {Convert.ToHexString(data.ToArray(), 0x1200, 32)}");
        Assert.Equal(nflags & 0x45, cpu.Rflags & 0x45); // ZF PF CF after FCOMI
        Assert.Equal(0, (cpu.Fsw >> 11) & 7);           // the body leaves the stack as it found it
    }

    [Fact]
    public void Loads_arithmetic_stores_and_compares_match_the_host()
    {
        double[] v = { 6, -2.5, 0.75, 1024, -3, 0 };
        Compare("fild fimul fistp", a => { a.fild(__dword_ptr[rsi + 0x100]); a.fimul(__dword_ptr[rsi + 0x104]); a.fistp(__dword_ptr[rsi + 0x200]); }, v);
        Compare("fld fadd fstp", a => { a.fld(__qword_ptr[rsi]); a.fadd(__qword_ptr[rsi + 8]); a.fstp(__qword_ptr[rsi + 0x200]); }, v);
        Compare("fsub fsubr", a => { a.fld(__qword_ptr[rsi]); a.fld(__qword_ptr[rsi + 16]); a.fsubp(st1, st0); a.fld(__qword_ptr[rsi + 8]); a.fsubrp(st1, st0); a.fstp(__qword_ptr[rsi + 0x200]); }, v);
        Compare("fdiv fdivr", a => { a.fld(__qword_ptr[rsi + 24]); a.fdiv(__qword_ptr[rsi + 16]); a.fld(__qword_ptr[rsi + 8]); a.fdivrp(st1, st0); a.fstp(__qword_ptr[rsi + 0x200]); }, v);
        Compare("fdiv by zero", a => { a.fld1(); a.fdiv(__qword_ptr[rsi + 40]); a.fstp(__qword_ptr[rsi + 0x200]); }, v);
        Compare("fchs fabs fxch m32 m80", a => { a.fld(__qword_ptr[rsi + 8]); a.fchs(); a.fld(__qword_ptr[rsi]); a.fxch(st0, st1); a.fstp(__dword_ptr[rsi + 0x200]); a.fabs(); a.fstp(__tword_ptr[rsi + 0x210]); }, v);
        Compare("fistp rounding", a => { a.fld(__qword_ptr[rsi + 8]); a.fistp(__qword_ptr[rsi + 0x200]); a.fld(__qword_ptr[rsi + 16]); a.fistp(__word_ptr[rsi + 0x208]); }, v);
        Compare("fcomip", a => { a.fld(__qword_ptr[rsi]); a.fld(__qword_ptr[rsi + 8]); a.fcomip(st0, st1); a.fstp(st0); }, v);
        Compare("fcomp fnstsw", a => { a.fld(__qword_ptr[rsi + 8]); a.fcomp(__qword_ptr[rsi]); a.fnstsw(ax); a.and(ax, 0x4500); a.mov(__word_ptr[rsi + 0x200], ax); }, v);
        Compare("fldz fld1 ftst fxam", a => { a.fldz(); a.ftst(); a.fnstsw(ax); a.and(ax, 0x7f00); a.mov(__word_ptr[rsi + 0x200], ax); a.fld1(); a.fxam(); a.fnstsw(ax); a.and(ax, 0x7f00); a.mov(__word_ptr[rsi + 0x202], ax); a.fstp(st0); a.fstp(st0); }, v);
        Compare("fcomi fcmov", a => { a.fld(__qword_ptr[rsi]); a.fld(__qword_ptr[rsi + 8]); a.fcomi(st0, st1); a.fcmovnbe(st0, st1); a.fstp(__qword_ptr[rsi + 0x200]); a.fld(__qword_ptr[rsi + 16]); a.fcomi(st0, st1); a.fcmovb(st0, st1); a.fstp(__qword_ptr[rsi + 0x208]); a.fstp(st0); }, v);
        Compare("fsqrt frndint", a => { a.fld(__qword_ptr[rsi + 24]); a.fsqrt(); a.fstp(__qword_ptr[rsi + 0x200]); a.fld(__qword_ptr[rsi + 8]); a.frndint(); a.fstp(__qword_ptr[rsi + 0x208]); }, v);
    }
}
