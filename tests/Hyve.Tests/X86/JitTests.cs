// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.X86;
using Hyve.X86.Jit;
using Iced.Intel;
using Xunit;
using Xunit.Abstractions;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// The binary translator (issue 15) against the interpreter, which is the reference: random integer code from the
/// translated subset run by both from the same state ends in the same registers, flags (those the SDM defines), memory
/// and faults; a deliberately broken translation is caught; self-modifying code, a page fault in mid-block and a hot
/// loop's budget behave as the interpreter's.
/// </summary>
public sealed unsafe class JitTests(ITestOutputHelper output)
{
    private const ulong CodeAt = 0x8000, Data = 0x10000, StackTop = 0x30000;

    private static byte[] Assemble(int bitness, ulong at, Action<Assembler> code)
    {
        var a = new Assembler(bitness);
        code(a);
        var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), at);
        return ms.ToArray();
    }

    // 64-bit mode over the first 1 MiB (4 KiB pages, so that single pages can be unmapped), the rest not present.
    private static void LongMode(NativeTestRam m, CpuState c)
    {
        MemoryMarshal.Write(m.Ram[0x1000..], 0x2003ul);
        MemoryMarshal.Write(m.Ram[0x2000..], 0x3003ul);
        MemoryMarshal.Write(m.Ram[0x3000..], 0x4003ul); // PD[0] -> PT at 0x4000
        for (ulong p = 0; p < 256; p++) MemoryMarshal.Write(m.Ram[(0x4000 + 8 * (int)p)..], (p << 12) | 3);
        c.SetFlatLongMode(0x1000);
        c.Rip = CodeAt;
    }

    private static (InstructionEngine Engine, Translator Jit) JitEngine(NativeTestRam m)
    {
        var e = new InstructionEngine(m);
        _ = new Tlb(e.Memory.Walker);
        var t = new Translator(1 << 20);
        e.Jit = t;
        return (e, t);
    }

    // Runs to HLT or the first fault through Run (translated blocks and interpreter blocks), and through Step alone.
    private static StepResult RunAll(InstructionEngine e, CpuState c, int max = 10000)
    {
        int total = 0;
        while (total < max)
        {
            var r = e.Run(c, null, max - total, out int ran);
            total += ran;
            if (r.Status != StepStatus.Ok) return r;
        }
        return new StepResult(StepStatus.Ok, default, 0, Code.INVALID);
    }

    private static StepResult StepAll(InstructionEngine e, CpuState c, int max = 10000)
    {
        for (int k = 0; k < max; k++)
        {
            var r = e.Step(c);
            if (r.Status != StepStatus.Ok) return r;
        }
        return new StepResult(StepStatus.Ok, default, 0, Code.INVALID);
    }

    private static readonly AssemblerRegister64[] R64 = [rax, rcx, rdx, rbx, rsi, rdi, r8, r9, r10, r11, r12, r13, r14];
    private static readonly AssemblerRegister32[] R32 = [eax, ecx, edx, ebx, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d, r14d];
    private static readonly AssemblerRegister16[] R16 = [ax, cx, dx, bx, si, di, r8w, r9w, r10w, r11w, r12w, r13w, r14w];
    private static readonly AssemblerRegister8[] R8 = [al, cl, dl, bl, sil, dil, r8b, r9b, r10b, r11b, r12b, r13b, r14b];

    // One random instruction of the translated subset. R15 holds the data area's address and RSP the stack; neither is
    // a destination. Flag readers come only while every flag a condition uses is defined (after IMUL or a shift, the SDM
    // leaves some undefined and the interpreter's choice need not be the host's).
    private static void RandomInstruction(Assembler a, Random rng, ref bool clean)
    {
        int d = rng.Next(R64.Length), s = rng.Next(R64.Length);
        int disp = rng.Next(0, 0xf8);
        var mq = __qword_ptr[r15 + disp]; var md = __dword_ptr[r15 + disp]; var mw = __word_ptr[r15 + disp]; var mb = __byte_ptr[r15 + disp];
        int size = rng.Next(4);
        int imm = rng.Next(3) == 0 ? rng.Next(-128, 128) : rng.Next(int.MinValue, int.MaxValue);
        switch (rng.Next(20))
        {
            case 0: case 1: case 2:
            {
                // add/sub/and/or/xor/cmp/adc/sbb/test in a random form and size
                int op = rng.Next(clean ? 9 : 7);
                int form = rng.Next(5); // r,r  r,imm  r,m  m,r  m,imm
                void Do(Action<Assembler> x) => x(a);
                switch (size)
                {
                    case 3:
                        Do(x => Alu64(x, op, form, R64[d], R64[s], mq, imm));
                        break;
                    case 2:
                        Do(x => Alu32(x, op, form, R32[d], R32[s], md, imm));
                        break;
                    case 1:
                        Do(x => Alu16(x, op, form, R16[d], R16[s], mw, (short)imm));
                        break;
                    default:
                        Do(x => Alu8(x, op, form, R8[d], R8[s], mb, (sbyte)imm));
                        break;
                }
                clean = true;
                break;
            }
            case 3: a.mov(R64[d], (ulong)rng.NextInt64()); break;
            case 4: if (rng.Next(2) == 0) a.mov(R64[d], mq); else a.mov(mq, R64[s]); break;
            case 5: if (rng.Next(2) == 0) a.mov(R32[d], md); else a.mov(md, imm); break;
            case 6: if (rng.Next(2) == 0) a.movzx(R32[d], mb); else a.movsx(R64[d], R16[s]); break;
            case 7: if (rng.Next(2) == 0) a.movsxd(R64[d], md); else a.mov(R8[d], R8[s]); break;
            case 8: a.lea(R64[d], __qword_ptr[R64[s] + R64[rng.Next(R64.Length)] * 4 + imm]); break;
            case 9: if (rng.Next(2) == 0) a.inc(R32[d]); else a.dec(mq); break;
            case 10: if (rng.Next(2) == 0) { a.neg(R64[d]); clean = true; } else a.not(mw); break;
            case 11:
            {
                int c = rng.Next(1, 31);
                switch (rng.Next(4))
                {
                    case 0: a.shl(R32[d], (byte)c); break;
                    case 1: a.shr(R64[d], (byte)c); break;
                    case 2: a.sar(md, (byte)c); break;
                    default:
                        a.mov(cl, (byte)rng.Next(0, 256));
                        if (rng.Next(2) == 0) a.shl(R64[d == 1 ? 0 : d], cl); else a.sar(R32[d == 1 ? 0 : d], cl);
                        break;
                }
                clean = false;
                break;
            }
            case 12:
                if (rng.Next(2) == 0) a.imul(R64[d], R64[s]); else a.imul(R32[d], md, imm);
                clean = false;
                break;
            case 13:
                if (!clean) { a.add(R32[d], R32[s]); clean = true; break; }
                if (rng.Next(2) == 0) a.cmovne(R32[d], R32[s]); else a.cmovl(R64[d], mq);
                break;
            case 14:
                if (!clean) { a.sub(R64[d], R64[s]); clean = true; break; }
                if (rng.Next(2) == 0) a.setb(R8[d]); else a.setg(mb);
                break;
            case 15: a.push(R64[s]); a.pop(R64[d]); break;
            case 16: a.push(imm); a.pop(mq); break;
            case 17: a.nop(); break;
            case 18:
            {
                if (!clean) { a.xor(R32[d], R32[s]); clean = true; break; }
                var skip = a.CreateLabel();
                if (rng.Next(2) == 0) a.jae(skip); else a.jle(skip);
                a.add(R64[d], 1);
                a.Label(ref skip);
                a.nop();
                clean = true;
                break;
            }
            default: a.mov(R16[d], (ushort)imm); break;
        }
    }

    private static void Alu64(Assembler a, int op, int form, AssemblerRegister64 d, AssemblerRegister64 s, AssemblerMemoryOperand m, int imm)
    {
        switch (op * 5 + form)
        {
            default:
                var (rr, ri, rm, mr, mi) = Forms64[op];
                switch (form) { case 0: rr(a, d, s); break; case 1: ri(a, d, imm); break; case 2: rm(a, d, m); break; case 3: mr(a, m, s); break; default: mi(a, m, imm); break; }
                break;
        }
    }

    private static void Alu32(Assembler a, int op, int form, AssemblerRegister32 d, AssemblerRegister32 s, AssemblerMemoryOperand m, int imm)
    {
        var (rr, ri, rm, mr, mi) = Forms32[op];
        switch (form) { case 0: rr(a, d, s); break; case 1: ri(a, d, imm); break; case 2: rm(a, d, m); break; case 3: mr(a, m, s); break; default: mi(a, m, imm); break; }
    }

    private static void Alu16(Assembler a, int op, int form, AssemblerRegister16 d, AssemblerRegister16 s, AssemblerMemoryOperand m, short imm)
    {
        var (rr, ri, rm, mr, mi) = Forms16[op];
        switch (form) { case 0: rr(a, d, s); break; case 1: ri(a, d, imm); break; case 2: rm(a, d, m); break; case 3: mr(a, m, s); break; default: mi(a, m, imm); break; }
    }

    private static void Alu8(Assembler a, int op, int form, AssemblerRegister8 d, AssemblerRegister8 s, AssemblerMemoryOperand m, sbyte imm)
    {
        var (rr, ri, rm, mr, mi) = Forms8[op];
        switch (form) { case 0: rr(a, d, s); break; case 1: ri(a, d, imm); break; case 2: rm(a, d, m); break; case 3: mr(a, m, s); break; default: mi(a, m, imm); break; }
    }

    // add, sub, and, or, xor, cmp, test, adc, sbb (the last two read CF: only while it is defined).
    private static readonly (Action<Assembler, AssemblerRegister64, AssemblerRegister64>, Action<Assembler, AssemblerRegister64, int>, Action<Assembler, AssemblerRegister64, AssemblerMemoryOperand>, Action<Assembler, AssemblerMemoryOperand, AssemblerRegister64>, Action<Assembler, AssemblerMemoryOperand, int>)[] Forms64 =
    [
        ((a, d, s) => a.add(d, s), (a, d, i) => a.add(d, i), (a, d, m) => a.add(d, m), (a, m, s) => a.add(m, s), (a, m, i) => a.add(m, i)),
        ((a, d, s) => a.sub(d, s), (a, d, i) => a.sub(d, i), (a, d, m) => a.sub(d, m), (a, m, s) => a.sub(m, s), (a, m, i) => a.sub(m, i)),
        ((a, d, s) => a.and(d, s), (a, d, i) => a.and(d, i), (a, d, m) => a.and(d, m), (a, m, s) => a.and(m, s), (a, m, i) => a.and(m, i)),
        ((a, d, s) => a.or(d, s), (a, d, i) => a.or(d, i), (a, d, m) => a.or(d, m), (a, m, s) => a.or(m, s), (a, m, i) => a.or(m, i)),
        ((a, d, s) => a.xor(d, s), (a, d, i) => a.xor(d, i), (a, d, m) => a.xor(d, m), (a, m, s) => a.xor(m, s), (a, m, i) => a.xor(m, i)),
        ((a, d, s) => a.cmp(d, s), (a, d, i) => a.cmp(d, i), (a, d, m) => a.cmp(d, m), (a, m, s) => a.cmp(m, s), (a, m, i) => a.cmp(m, i)),
        ((a, d, s) => a.test(d, s), (a, d, i) => a.test(d, i), (a, d, m) => a.test(m, d), (a, m, s) => a.test(m, s), (a, m, i) => a.test(m, i)),
        ((a, d, s) => a.adc(d, s), (a, d, i) => a.adc(d, i), (a, d, m) => a.adc(d, m), (a, m, s) => a.adc(m, s), (a, m, i) => a.adc(m, i)),
        ((a, d, s) => a.sbb(d, s), (a, d, i) => a.sbb(d, i), (a, d, m) => a.sbb(d, m), (a, m, s) => a.sbb(m, s), (a, m, i) => a.sbb(m, i)),
    ];

    private static readonly (Action<Assembler, AssemblerRegister32, AssemblerRegister32>, Action<Assembler, AssemblerRegister32, int>, Action<Assembler, AssemblerRegister32, AssemblerMemoryOperand>, Action<Assembler, AssemblerMemoryOperand, AssemblerRegister32>, Action<Assembler, AssemblerMemoryOperand, int>)[] Forms32 =
    [
        ((a, d, s) => a.add(d, s), (a, d, i) => a.add(d, i), (a, d, m) => a.add(d, m), (a, m, s) => a.add(m, s), (a, m, i) => a.add(m, i)),
        ((a, d, s) => a.sub(d, s), (a, d, i) => a.sub(d, i), (a, d, m) => a.sub(d, m), (a, m, s) => a.sub(m, s), (a, m, i) => a.sub(m, i)),
        ((a, d, s) => a.and(d, s), (a, d, i) => a.and(d, i), (a, d, m) => a.and(d, m), (a, m, s) => a.and(m, s), (a, m, i) => a.and(m, i)),
        ((a, d, s) => a.or(d, s), (a, d, i) => a.or(d, i), (a, d, m) => a.or(d, m), (a, m, s) => a.or(m, s), (a, m, i) => a.or(m, i)),
        ((a, d, s) => a.xor(d, s), (a, d, i) => a.xor(d, i), (a, d, m) => a.xor(d, m), (a, m, s) => a.xor(m, s), (a, m, i) => a.xor(m, i)),
        ((a, d, s) => a.cmp(d, s), (a, d, i) => a.cmp(d, i), (a, d, m) => a.cmp(d, m), (a, m, s) => a.cmp(m, s), (a, m, i) => a.cmp(m, i)),
        ((a, d, s) => a.test(d, s), (a, d, i) => a.test(d, i), (a, d, m) => a.test(m, d), (a, m, s) => a.test(m, s), (a, m, i) => a.test(m, i)),
        ((a, d, s) => a.adc(d, s), (a, d, i) => a.adc(d, i), (a, d, m) => a.adc(d, m), (a, m, s) => a.adc(m, s), (a, m, i) => a.adc(m, i)),
        ((a, d, s) => a.sbb(d, s), (a, d, i) => a.sbb(d, i), (a, d, m) => a.sbb(d, m), (a, m, s) => a.sbb(m, s), (a, m, i) => a.sbb(m, i)),
    ];

    private static readonly (Action<Assembler, AssemblerRegister16, AssemblerRegister16>, Action<Assembler, AssemblerRegister16, short>, Action<Assembler, AssemblerRegister16, AssemblerMemoryOperand>, Action<Assembler, AssemblerMemoryOperand, AssemblerRegister16>, Action<Assembler, AssemblerMemoryOperand, short>)[] Forms16 =
    [
        ((a, d, s) => a.add(d, s), (a, d, i) => a.add(d, i), (a, d, m) => a.add(d, m), (a, m, s) => a.add(m, s), (a, m, i) => a.add(m, i)),
        ((a, d, s) => a.sub(d, s), (a, d, i) => a.sub(d, i), (a, d, m) => a.sub(d, m), (a, m, s) => a.sub(m, s), (a, m, i) => a.sub(m, i)),
        ((a, d, s) => a.and(d, s), (a, d, i) => a.and(d, i), (a, d, m) => a.and(d, m), (a, m, s) => a.and(m, s), (a, m, i) => a.and(m, i)),
        ((a, d, s) => a.or(d, s), (a, d, i) => a.or(d, i), (a, d, m) => a.or(d, m), (a, m, s) => a.or(m, s), (a, m, i) => a.or(m, i)),
        ((a, d, s) => a.xor(d, s), (a, d, i) => a.xor(d, i), (a, d, m) => a.xor(d, m), (a, m, s) => a.xor(m, s), (a, m, i) => a.xor(m, i)),
        ((a, d, s) => a.cmp(d, s), (a, d, i) => a.cmp(d, i), (a, d, m) => a.cmp(d, m), (a, m, s) => a.cmp(m, s), (a, m, i) => a.cmp(m, i)),
        ((a, d, s) => a.test(d, s), (a, d, i) => a.test(d, i), (a, d, m) => a.test(m, d), (a, m, s) => a.test(m, s), (a, m, i) => a.test(m, i)),
        ((a, d, s) => a.adc(d, s), (a, d, i) => a.adc(d, i), (a, d, m) => a.adc(d, m), (a, m, s) => a.adc(m, s), (a, m, i) => a.adc(m, i)),
        ((a, d, s) => a.sbb(d, s), (a, d, i) => a.sbb(d, i), (a, d, m) => a.sbb(d, m), (a, m, s) => a.sbb(m, s), (a, m, i) => a.sbb(m, i)),
    ];

    private static readonly (Action<Assembler, AssemblerRegister8, AssemblerRegister8>, Action<Assembler, AssemblerRegister8, sbyte>, Action<Assembler, AssemblerRegister8, AssemblerMemoryOperand>, Action<Assembler, AssemblerMemoryOperand, AssemblerRegister8>, Action<Assembler, AssemblerMemoryOperand, sbyte>)[] Forms8 =
    [
        ((a, d, s) => a.add(d, s), (a, d, i) => a.add(d, i), (a, d, m) => a.add(d, m), (a, m, s) => a.add(m, s), (a, m, i) => a.add(m, i)),
        ((a, d, s) => a.sub(d, s), (a, d, i) => a.sub(d, i), (a, d, m) => a.sub(d, m), (a, m, s) => a.sub(m, s), (a, m, i) => a.sub(m, i)),
        ((a, d, s) => a.and(d, s), (a, d, i) => a.and(d, i), (a, d, m) => a.and(d, m), (a, m, s) => a.and(m, s), (a, m, i) => a.and(m, i)),
        ((a, d, s) => a.or(d, s), (a, d, i) => a.or(d, i), (a, d, m) => a.or(d, m), (a, m, s) => a.or(m, s), (a, m, i) => a.or(m, i)),
        ((a, d, s) => a.xor(d, s), (a, d, i) => a.xor(d, i), (a, d, m) => a.xor(d, m), (a, m, s) => a.xor(m, s), (a, m, i) => a.xor(m, i)),
        ((a, d, s) => a.cmp(d, s), (a, d, i) => a.cmp(d, i), (a, d, m) => a.cmp(d, m), (a, m, s) => a.cmp(m, s), (a, m, i) => a.cmp(m, i)),
        ((a, d, s) => a.test(d, s), (a, d, i) => a.test(d, i), (a, d, m) => a.test(m, d), (a, m, s) => a.test(m, s), (a, m, i) => a.test(m, i)),
        ((a, d, s) => a.adc(d, s), (a, d, i) => a.adc(d, i), (a, d, m) => a.adc(d, m), (a, m, s) => a.adc(m, s), (a, m, i) => a.adc(m, i)),
        ((a, d, s) => a.sbb(d, s), (a, d, i) => a.sbb(d, i), (a, d, m) => a.sbb(d, m), (a, m, s) => a.sbb(m, s), (a, m, i) => a.sbb(m, i)),
    ];

    // Flags the SDM leaves undefined after the code, as Iced reports them per instruction (later definitions clear them).
    private static ulong UndefinedFlags(byte[] code, ulong stopAt)
    {
        var dec = Decoder.Create(64, code, CodeAt);
        ulong undef = 0;
        while (dec.IP < CodeAt + (ulong)code.Length && dec.IP < stopAt)
        {
            dec.Decode(out var i);
            ulong w = Bits(i.RflagsModified & ~i.RflagsUndefined), u = Bits(i.RflagsUndefined);
            undef = (undef & ~w) | u;
        }
        return undef;

        static ulong Bits(RflagsBits f) =>
            ((f & RflagsBits.CF) != 0 ? CpuState.FlagCf : 0) | ((f & RflagsBits.PF) != 0 ? CpuState.FlagPf : 0)
            | ((f & RflagsBits.AF) != 0 ? CpuState.FlagAf : 0) | ((f & RflagsBits.ZF) != 0 ? CpuState.FlagZf : 0)
            | ((f & RflagsBits.SF) != 0 ? CpuState.FlagSf : 0) | ((f & RflagsBits.OF) != 0 ? CpuState.FlagOf : 0);
    }

    private int Differential(int rounds, int seed, bool breakAdd)
    {
        using var m = new NativeTestRam();
        var (fast, jit) = JitEngine(m);
        jit.BreakAddForTests = breakAdd;
        var slow = new InstructionEngine(m);
        var rng = new Random(seed);
        int mismatches = 0;
        for (int round = 0; round < rounds; round++)
        {
            bool clean = true;
            var code = Assemble(64, CodeAt, a =>
            {
                for (int k = 0; k < 24; k++) RandomInstruction(a, rng, ref clean);
                // Sometimes a store that faults (page 0x50000 is unmapped below) in the middle of the code.
                if (rng.Next(4) == 0) a.mov(__qword_ptr[0x50008], rax);
                for (int k = 0; k < 8; k++) RandomInstruction(a, rng, ref clean);
                a.hlt();
            });
            m.Ram.Clear();
            code.CopyTo(m.Ram[(int)CodeAt..]);
            var c1 = new CpuState();
            LongMode(m, c1);
            MemoryMarshal.Write(m.Ram[(0x4000 + 8 * 0x50)..], 0ul); // 0x50000 not present
            rng.NextBytes(m.Ram.Slice((int)Data, 0x100));
            var dataBefore = m.Ram.Slice((int)Data, 0x100).ToArray();
            for (int k = 0; k < 16; k++) c1.Gpr[k] = (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 33);
            c1.Gpr[15] = Data;
            c1.Gpr[4] = StackTop;
            c1.Rflags = 2 | ((ulong)rng.Next() & CpuState.StatusFlags);
            var c2 = new CpuState();
            c1.CopyTo(c2);

            var r1 = RunAll(fast, c1);
            var data1 = m.Ram.Slice((int)Data, 0x100).ToArray();
            var stack1 = m.Ram.Slice((int)StackTop - 0x100, 0x100).ToArray();
            dataBefore.CopyTo(m.Ram.Slice((int)Data, 0x100));
            m.Ram.Slice((int)StackTop - 0x100, 0x100).Clear();
            var r2 = StepAll(slow, c2);
            var data2 = m.Ram.Slice((int)Data, 0x100).ToArray();
            var stack2 = m.Ram.Slice((int)StackTop - 0x100, 0x100).ToArray();

            ulong mask = ~UndefinedFlags(code, c2.Rip);
            string? diff = null;
            if (r1.Status != r2.Status || r1.Exception != r2.Exception) diff = $"status {r1.Status}/{r1.Exception} vs {r2.Status}/{r2.Exception}";
            else if (c1.Rip != c2.Rip) diff = $"rip {c1.Rip:x} vs {c2.Rip:x}";
            else if ((c1.Rflags & mask) != (c2.Rflags & mask)) diff = $"rflags {c1.Rflags:x} vs {c2.Rflags:x} (mask {mask & 0xfff:x})";
            else if (!data1.AsSpan().SequenceEqual(data2) || !stack1.AsSpan().SequenceEqual(stack2)) diff = "memory";
            else
                for (int k = 0; k < 16; k++)
                    if (c1.Gpr[k] != c2.Gpr[k]) { diff = $"gpr {k}: {c1.Gpr[k]:x} vs {c2.Gpr[k]:x}"; break; }
            if (diff is not null)
            {
                mismatches++;
                if (!breakAdd && mismatches <= 3)
                {
                    output.WriteLine($"round {round}: {diff}");
                    var dec = Decoder.Create(64, code, CodeAt);
                    var f = new NasmFormatter();
                    var sb = new StringOutput();
                    while (dec.IP < CodeAt + (ulong)code.Length) { dec.Decode(out var ins); f.Format(ins, sb); output.WriteLine($"  {ins.IP:x}: {sb.ToStringAndReset()}"); }
                }
            }
        }
        output.WriteLine($"translated {jit.BlocksTranslated} blocks, {jit.InstructionsRun} instructions run translated; {mismatches} mismatches");
        if (!breakAdd) Assert.True(jit.InstructionsRun > rounds * 10L, $"only {jit.InstructionsRun} instructions ran translated");
        jit.Dispose();
        return mismatches;
    }

    [Fact]
    public void RandomIntegerCodeMatchesTheInterpreter() => Assert.Equal(0, Differential(400, 15, false));

    [Fact]
    public void ABrokenTranslationIsCaught() => Assert.True(Differential(100, 16, true) > 10);

    // The benchmark's loop in real mode (operand-size prefixed): translated, it loops in host code for the budget and
    // returns to the caller (where interrupts are looked at) with the instruction count and registers exact.
    [Fact]
    public void ARealModeLoopRunsTranslatedWithinItsBudget()
    {
        using var m = new NativeTestRam();
        var (e, jit) = JitEngine(m);
        var code = Assemble(16, 0x7c00, a =>
        {
            a.mov(ecx, 100000u);
            a.xor(eax, eax);
            a.xor(ebx, ebx);
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.add(eax, ecx);
            a.xor(ebx, eax);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        });
        code.CopyTo(m.Ram[0x7c00..]);
        var c = new CpuState();
        c.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        c.Rip = 0x7c00;
        var r = e.Run(c, null, 4096, out int ran);
        Assert.Equal(StepStatus.Ok, r.Status);
        Assert.InRange(ran, 4000, 4096 + 32); // the budget bounds a hot loop (give or take a block): an interrupt is seen within it
        long total = ran;
        while (true)
        {
            r = e.Run(c, null, 4096, out ran);
            total += ran;
            if (r.Status != StepStatus.Ok) break;
        }
        Assert.Equal(StepStatus.Halt, r.Status);
        Assert.Equal(3 + 4 * 100000L + 1, total);
        uint ax = 0, bx = 0;
        for (uint k = 100000; k > 0; k--) { ax += k; bx ^= ax; }
        Assert.Equal(ax, (uint)c.Gpr[0]);
        Assert.Equal(bx, (uint)c.Gpr[3]);
        Assert.Equal(0ul, c.Gpr[1]);
        Assert.Equal(CpuState.FlagZf | CpuState.FlagPf, c.Rflags & (CpuState.FlagZf | CpuState.FlagPf));
        Assert.True(jit.InstructionsRun > 390000, $"only {jit.InstructionsRun} instructions ran translated");
        jit.Dispose();
    }

    // A page fault in the middle of a translated block: RIP on the faulting store, the instructions before it done,
    // those after it not, memory untouched; the same as the interpreter.
    [Fact]
    public void APageFaultInMidBlockIsPrecise()
    {
        using var m = new NativeTestRam();
        var (e, jit) = JitEngine(m);
        ulong storeAt = 0;
        var code = Assemble(64, CodeAt, a =>
        {
            a.mov(rax, 5);
            a.add(rbx, rax);
            a.mov(__qword_ptr[r15 + 8], rbx);
            a.sub(rbx, 1); // flags from here must not show
            a.mov(__qword_ptr[0x50000], rbx);
            a.add(rcx, 1);
            a.hlt();
        });
        code.CopyTo(m.Ram[(int)CodeAt..]);
        var d = Decoder.Create(64, code, CodeAt);
        for (int k = 0; k < 5; k++) { d.Decode(out var ins); storeAt = ins.IP; }
        var c = new CpuState();
        LongMode(m, c);
        MemoryMarshal.Write(m.Ram[(0x4000 + 8 * 0x50)..], 0ul);
        c.Gpr[15] = Data;
        c.Gpr[3] = 0;
        c.Rflags = 2;
        var r = RunAll(e, c);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.PF, r.Exception.Vector);
        Assert.Equal(0x2ul, r.Exception.ErrorCode); // write, not present, supervisor
        Assert.Equal(storeAt, c.Rip);
        Assert.Equal(4ul, c.Gpr[3]);
        Assert.Equal(0ul, c.Gpr[1]);
        Assert.Equal(5ul, MemoryMarshal.Read<ulong>(m.Ram[(int)(Data + 8)..]));
        Assert.Equal(0ul, c.Rflags & (CpuState.FlagZf | CpuState.FlagCf | CpuState.FlagSf)); // SUB 5-1: all clear
        Assert.True(jit.BlocksTranslated > 0);
        jit.Dispose();
    }

    // A loop that rewrites its own immediate: each pass must run the new bytes (the store leaves the block; the next
    // entry compares the bytes and translates again).
    [Fact]
    public void SelfModifyingCodeRunsTheNewBytes()
    {
        using var m = new NativeTestRam();
        var (e, jit) = JitEngine(m);
        // loop: add eax, imm32 (the imm is at loop+1) ; inc dword [loop+1] ; dec ecx ; jnz loop ; hlt
        var code = Assemble(64, CodeAt, a =>
        {
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.add(eax, 0x100);
            a.inc(__dword_ptr[CodeAt + 1]);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        });
        code.CopyTo(m.Ram[(int)CodeAt..]);
        var c = new CpuState();
        LongMode(m, c);
        c.Gpr[1] = 50;
        var r = RunAll(e, c);
        Assert.Equal(StepStatus.Halt, r.Status);
        uint expect = 0;
        for (uint k = 0; k < 50; k++) expect += 0x100 + k;
        Assert.Equal(expect, (uint)c.Gpr[0]);
        jit.Dispose();
    }

    // Two blocks in one page that jump to each other: once linked, control passes between them in host code (the
    // dispatcher is not asked), within the budget, and a block entered that way still checks its guest bytes, so code
    // changed behind the translator's back (DMA, another vCPU, the loader: here a direct write to RAM) runs as written.
    [Fact]
    public void ChainedBlocksRunWithinTheBudgetAndSeeCodeChangedBehindThem()
    {
        ChainedBlocks(breakGuard: false);
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => ChainedBlocks(breakGuard: true)); // without the guard: the old code
    }

    private static void ChainedBlocks(bool breakGuard)
    {
        using var m = new NativeTestRam();
        var (e, jit) = JitEngine(m);
        jit.BreakGuardForTests = breakGuard;
        ulong immAt = 0;
        var code = Assemble(64, CodeAt, a =>
        {
            var l1 = a.CreateLabel();
            var l2 = a.CreateLabel();
            a.Label(ref l1);
            a.add(eax, 0x30000); // 05 imm32: the immediate is at byte 1
            a.jmp(l2);
            a.nop(); a.nop();   // keep the blocks apart
            a.Label(ref l2);
            a.add(ebx, eax);
            a.dec(ecx);
            a.jnz(l1);
            a.hlt();
        });
        immAt = CodeAt + 1;
        code.CopyTo(m.Ram[(int)CodeAt..]);
        Assert.Equal(0x30000u, MemoryMarshal.Read<uint>(m.Ram[(int)immAt..]));
        var d = Decoder.Create(64, code, CodeAt);
        ulong second = 0;
        for (int k = 0; k < 5; k++) { d.Decode(out var ins); second = ins.IP; } // add, jmp, nop, nop, then the second block
        var c = new CpuState();
        LongMode(m, c);
        c.Gpr[1] = 1_000_000;
        var r = e.Run(c, null, 4096, out int ran);
        Assert.Equal(StepStatus.Ok, r.Status);
        Assert.InRange(ran, 1, 4096 * 3); // budget / block size chained steps of at most a few instructions each
        Assert.True(jit.Links >= 2, $"only {jit.Links} links");
        c.Gpr[1] = 1000;
        c.Gpr[0] = c.Gpr[3] = 0;
        c.Rip = CodeAt;
        Assert.Equal(StepStatus.Halt, RunAll(e, c, 100000).Status);
        Assert.Equal(0x30000ul * 1000, c.Gpr[0]);
        Assert.Equal(unchecked((uint)(0x30000ul * 1000 * 1001 / 2)), (uint)c.Gpr[3]);

        MemoryMarshal.Write(m.Ram[(int)immAt..], 0x50000u); // not through the CPU: nothing tells the translator
        c.Gpr[1] = 1000;
        c.Gpr[0] = c.Gpr[3] = 0;
        c.Rip = second; // enter at the second block, so the first is reached only through its link
        Assert.Equal(StepStatus.Halt, RunAll(e, c, 100000).Status);
        Assert.Equal(0x50000ul * 999, c.Gpr[0]);
        jit.Dispose();
    }

    // CALL/RET and PUSH/POP through the stack with translation, as the interpreter does them.
    [Fact]
    public void CallAndReturnMatchTheInterpreter()
    {
        using var m = new NativeTestRam();
        var (e, jit) = JitEngine(m);
        var slow = new InstructionEngine(m);
        var code = Assemble(64, CodeAt, a =>
        {
            var f = a.CreateLabel();
            var loop = a.CreateLabel();
            a.mov(ecx, 1000);
            a.Label(ref loop);
            a.push(rcx);
            a.call(f);
            a.pop(rcx);
            a.dec(rcx);
            a.jnz(loop);
            a.hlt();
            a.Label(ref f);
            a.lea(rax, __qword_ptr[rax + rcx * 2 + 1]);
            a.imul(rdx, rax, 3);
            a.ret();
        });
        code.CopyTo(m.Ram[(int)CodeAt..]);
        var c1 = new CpuState();
        LongMode(m, c1);
        c1.Gpr[4] = StackTop;
        var c2 = new CpuState();
        c1.CopyTo(c2);
        Assert.Equal(StepStatus.Halt, RunAll(e, c1, 100000).Status);
        Assert.Equal(StepStatus.Halt, StepAll(slow, c2, 100000).Status);
        Assert.Equal(c2.Gpr.ToArray(), c1.Gpr.ToArray());
        Assert.Equal(c2.Rip, c1.Rip);
        Assert.True(jit.InstructionsRun > 4000, $"only {jit.InstructionsRun} instructions ran translated");
        jit.Dispose();
    }

    // W^X: the code cache is one memfd mapped twice, never writable and executable at once.
    [Fact]
    public void TheCodeCacheIsNeverWritableAndExecutable()
    {
        using var cache = new CodeCache(1 << 20);
        var maps = File.ReadAllLines("/proc/self/maps").Where(l => l.Contains("memfd:hyve-jit", StringComparison.Ordinal)).ToList();
        Assert.Contains(maps, l => l.Split(' ')[1].StartsWith("rw", StringComparison.Ordinal));
        Assert.Contains(maps, l => l.Split(' ')[1].StartsWith("r-x", StringComparison.Ordinal));
        Assert.DoesNotContain(maps, l => l.Split(' ')[1].StartsWith("rwx", StringComparison.Ordinal));
        nint at = cache.Commit([0xc3]);
        Assert.True(cache.Contains(at));
        ((delegate* unmanaged<void>)at)(); // RET runs from the executable view
    }
}
