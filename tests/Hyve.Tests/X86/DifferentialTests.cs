// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// Differential tests: each instruction runs natively on the host CPU and under the engine on the same
/// inputs, and every general register (RSP excepted), the arithmetic flags, RIP and the memory buffer
/// must agree. Flags the SDM leaves undefined for an instruction are masked out of the comparison
/// (the host here may be AMD or Intel, which differ in them); the mask is stated per instruction.
/// </summary>
public sealed unsafe class DifferentialTests : IDisposable
{
    private const ulong CF = 1, PF = 4, AF = 0x10, ZF = 0x40, SF = 0x80, OF = 0x800, DF = 0x400;
    private const ulong Status = CF | PF | AF | ZF | SF | OF;

    private readonly NativeRunner _run = new();
    private readonly Random _rng = new(12345);

    private static readonly ulong[] Edges =
    {
        0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff,
        0x7fffffffffffffff, 0x8000000000000000, ulong.MaxValue, 0x100, 0x10000, 0x100000000,
    };

    public void Dispose() => _run.Dispose();

    private ulong Value(int n) => n < Edges.Length ? Edges[n] : _rng.Next(4) switch
    {
        0 => (ulong)_rng.NextInt64(),
        1 => (ulong)_rng.Next(256),
        2 => ulong.MaxValue - (ulong)_rng.Next(256),
        _ => ((ulong)_rng.NextInt64() << 1) ^ (ulong)_rng.NextInt64(),
    };

    /// <summary>Runs <paramref name="emit"/> over many inputs; <paramref name="setup"/> may fix registers (RSI/RDI/RCX for string ops).</summary>
    private void Compare(string name, Action<Assembler> emit, ulong undefinedFlags = 0, int runs = 40,
        Action<ulong[]>? setup = null, Func<ulong[], ulong>? undefinedFor = null)
    {
        ulong insn = _run.Load(emit);
        var data = _run.DataSpan;
        var init = new byte[data.Length];
        for (int n = 0; n < runs; n++)
        {
            var regs = new ulong[16];
            for (int r = 0; r < 16; r++) regs[r] = Value(_rng.Next(2) == 0 ? n % Edges.Length : Edges.Length + n);
            regs[0] = Value(n); regs[3] = Value((n * 7 + 3) % (Edges.Length + 10));
            regs[4] = 0;
            regs[6] = (ulong)_run.Data + 0x1000; // [rsi+...] operands land in the middle page
            regs[7] = (ulong)_run.Data + 0x1800;
            setup?.Invoke(regs);
            ulong flagsIn = 2 | ((ulong)_rng.Next() & Status);
            _rng.NextBytes(init);
            for (int k = 0; k < 8; k++) System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(init.AsSpan(0x1000 + 8 * k), Value(n + k));

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
            Assert.Equal(insn + (ulong)_run.InsnLength, cpu.Rip);
            for (int r = 0; r < 16; r++)
                if (r != 4 && native[r] != cpu.Gpr[r])
                    Assert.Fail($"{name} #{n}: {(Reg)r} native {native[r]:x} engine {cpu.Gpr[r]:x} (inputs rax={regs[0]:x} rbx={regs[3]:x} rcx={regs[1]:x} rdx={regs[2]:x} fl={flagsIn:x})");
            ulong mask = Status | DF;
            mask &= ~undefinedFlags;
            if (undefinedFor != null) mask &= ~undefinedFor(regs);
            if ((nflags & mask) != (cpu.Rflags & mask))
                Assert.Fail($"{name} #{n}: flags native {nflags & mask:x} engine {cpu.Rflags & mask:x} (inputs rax={regs[0]:x} rbx={regs[3]:x} rcx={regs[1]:x} fl={flagsIn:x})");
            if (!data.SequenceEqual(nativeMem))
            {
                int at = 0;
                while (data[at] == nativeMem[at]) at++;
                Assert.Fail($"{name} #{n}: memory differs at +0x{at:x}: native {nativeMem[at]:x2} engine {data[at]:x2}");
            }
        }
    }

    private static readonly string[] AluOps = { "add", "or", "adc", "sbb", "and", "sub", "xor", "cmp", "test" };

    private static void EmitAlu(Assembler a, string op, AssemblerRegister8 d, AssemblerRegister8 s)
    {
        switch (op) { case "add": a.add(d, s); break; case "or": a.or(d, s); break; case "adc": a.adc(d, s); break; case "sbb": a.sbb(d, s); break; case "and": a.and(d, s); break; case "sub": a.sub(d, s); break; case "xor": a.xor(d, s); break; case "cmp": a.cmp(d, s); break; default: a.test(d, s); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerRegister16 d, AssemblerRegister16 s)
    {
        switch (op) { case "add": a.add(d, s); break; case "or": a.or(d, s); break; case "adc": a.adc(d, s); break; case "sbb": a.sbb(d, s); break; case "and": a.and(d, s); break; case "sub": a.sub(d, s); break; case "xor": a.xor(d, s); break; case "cmp": a.cmp(d, s); break; default: a.test(d, s); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerRegister32 d, AssemblerRegister32 s)
    {
        switch (op) { case "add": a.add(d, s); break; case "or": a.or(d, s); break; case "adc": a.adc(d, s); break; case "sbb": a.sbb(d, s); break; case "and": a.and(d, s); break; case "sub": a.sub(d, s); break; case "xor": a.xor(d, s); break; case "cmp": a.cmp(d, s); break; default: a.test(d, s); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerRegister64 d, AssemblerRegister64 s)
    {
        switch (op) { case "add": a.add(d, s); break; case "or": a.or(d, s); break; case "adc": a.adc(d, s); break; case "sbb": a.sbb(d, s); break; case "and": a.and(d, s); break; case "sub": a.sub(d, s); break; case "xor": a.xor(d, s); break; case "cmp": a.cmp(d, s); break; default: a.test(d, s); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerMemoryOperand d, AssemblerRegister64 s)
    {
        switch (op) { case "add": a.add(d, s); break; case "or": a.or(d, s); break; case "adc": a.adc(d, s); break; case "sbb": a.sbb(d, s); break; case "and": a.and(d, s); break; case "sub": a.sub(d, s); break; case "xor": a.xor(d, s); break; case "cmp": a.cmp(d, s); break; default: a.test(d, s); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerMemoryOperand d, AssemblerRegister8 s)
    {
        switch (op) { case "add": a.add(d, s); break; case "or": a.or(d, s); break; case "adc": a.adc(d, s); break; case "sbb": a.sbb(d, s); break; case "and": a.and(d, s); break; case "sub": a.sub(d, s); break; case "xor": a.xor(d, s); break; case "cmp": a.cmp(d, s); break; default: a.test(d, s); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerRegister32 d, AssemblerMemoryOperand s)
    {
        switch (op) { case "add": a.add(d, s); break; case "or": a.or(d, s); break; case "adc": a.adc(d, s); break; case "sbb": a.sbb(d, s); break; case "and": a.and(d, s); break; case "sub": a.sub(d, s); break; case "xor": a.xor(d, s); break; case "cmp": a.cmp(d, s); break; default: a.test(s, d); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerRegister16 d, short imm)
    {
        switch (op) { case "add": a.add(d, imm); break; case "or": a.or(d, imm); break; case "adc": a.adc(d, imm); break; case "sbb": a.sbb(d, imm); break; case "and": a.and(d, imm); break; case "sub": a.sub(d, imm); break; case "xor": a.xor(d, imm); break; case "cmp": a.cmp(d, imm); break; default: a.test(d, imm); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerRegister64 d, int imm)
    {
        switch (op) { case "add": a.add(d, imm); break; case "or": a.or(d, imm); break; case "adc": a.adc(d, imm); break; case "sbb": a.sbb(d, imm); break; case "and": a.and(d, imm); break; case "sub": a.sub(d, imm); break; case "xor": a.xor(d, imm); break; case "cmp": a.cmp(d, imm); break; default: a.test(d, imm); break; }
    }
    private static void EmitAlu(Assembler a, string op, AssemblerMemoryOperand d, int imm)
    {
        switch (op) { case "add": a.add(d, imm); break; case "or": a.or(d, imm); break; case "adc": a.adc(d, imm); break; case "sbb": a.sbb(d, imm); break; case "and": a.and(d, imm); break; case "sub": a.sub(d, imm); break; case "xor": a.xor(d, imm); break; case "cmp": a.cmp(d, imm); break; default: a.test(d, imm); break; }
    }

    // Logical ops leave AF undefined (SDM AND/OR/XOR/TEST).
    private static ulong AluUndefined(string op) => op is "and" or "or" or "xor" or "test" ? AF : 0;

    [Fact]
    public void Alu_ops_in_all_sizes_and_forms_match_the_host()
    {
        foreach (var op in AluOps)
        {
            ulong u = AluUndefined(op);
            Compare(op + " r8", a => EmitAlu(a, op, al, bl), u);
            Compare(op + " r8h", a => EmitAlu(a, op, ah, ch), u);
            Compare(op + " r16", a => EmitAlu(a, op, ax, bx), u);
            Compare(op + " r32", a => EmitAlu(a, op, eax, ebx), u);
            Compare(op + " r64", a => EmitAlu(a, op, rax, rbx), u);
            Compare(op + " r64 high", a => EmitAlu(a, op, r9, r14), u);
            Compare(op + " r16,imm", a => EmitAlu(a, op, bx, -3), u, 20);
            Compare(op + " r64,imm", a => EmitAlu(a, op, rax, 0x7fff1234), u, 20);
            Compare(op + " m64,r64", a => EmitAlu(a, op, __qword_ptr[rsi + 8], rbx), u, 20);
            Compare(op + " m8,r8", a => EmitAlu(a, op, __byte_ptr[rsi + 3], dl), u, 20);
            Compare(op + " r32,m32", a => EmitAlu(a, op, ecx, __dword_ptr[rsi + 16]), u, 20);
            Compare(op + " m32,imm", a => EmitAlu(a, op, __dword_ptr[rsi + 20], -128), u, 20);
            Compare(op + " m16,imm", a => EmitAlu(a, op, __word_ptr[rsi + rcx * 1 - 0], 0x1234), u, 10, r => r[1] = 6);
            if (op is not ("test" or "cmp")) Compare("lock " + op + " m64,r64", a => EmitAlu(a.@lock, op, __qword_ptr[rsi + 8], rbx), u, 10);
        }
    }

    [Fact]
    public void Unary_ops_match_the_host()
    {
        Compare("not r8", a => a.not(bl)); Compare("not m16", a => a.not(__word_ptr[rsi + 2]), 0, 10);
        Compare("not r32", a => a.not(ecx)); Compare("not r64", a => a.not(rdx));
        Compare("neg r8", a => a.neg(al)); Compare("neg r16", a => a.neg(bx));
        Compare("neg r32", a => a.neg(eax)); Compare("neg r64", a => a.neg(rbx)); Compare("neg m64", a => a.neg(__qword_ptr[rsi + 8]), 0, 20);
        Compare("inc r8", a => a.inc(al)); Compare("inc r16", a => a.inc(bx));
        Compare("inc r32", a => a.inc(eax)); Compare("inc r64", a => a.inc(rbx)); Compare("inc m32", a => a.inc(__dword_ptr[rsi]), 0, 20);
        Compare("dec r8", a => a.dec(ah)); Compare("dec r16", a => a.dec(bx));
        Compare("dec r32", a => a.dec(eax)); Compare("dec r64", a => a.dec(rbx)); Compare("lock dec m64", a => a.@lock.dec(__qword_ptr[rsi + 8]), 0, 20);
    }

    [Fact]
    public void Bit_tests_match_the_host()
    {
        // BT*: OF, SF, AF and PF are undefined; ZF is unchanged on Intel and AMD alike.
        const ulong u = OF | SF | AF | PF;
        Compare("bt r16,r16", a => a.bt(ax, bx), u); Compare("bt r32,r32", a => a.bt(eax, ecx), u); Compare("bt r64,r64", a => a.bt(rax, rbx), u);
        Compare("bts r64,imm", a => a.bts(rax, 63), u); Compare("btr r32,imm", a => a.btr(ebx, 5), u); Compare("btc r16,imm", a => a.btc(cx, 17), u);
        Compare("bts r32,r32", a => a.bts(ebx, eax), u); Compare("btr r64,r64", a => a.btr(rcx, rax), u); Compare("btc r64,r64", a => a.btc(rdx, rbx), u);
        // Memory bit strings with signed register offsets reach bytes before and after the operand.
        Action<ulong[]> smallOffset = r => { r[0] = (ulong)(long)(sbyte)(byte)r[0]; r[3] = (ulong)(long)(sbyte)(byte)r[3]; };
        Compare("bt m32,r32", a => a.bt(__dword_ptr[rsi + 0x40], eax), u, 40, smallOffset);
        Compare("bts m64,r64", a => a.bts(__qword_ptr[rsi + 0x40], rbx), u, 40, smallOffset);
        Compare("btr m16,r16", a => a.btr(__word_ptr[rsi + 0x40], ax), u, 40, smallOffset);
        Compare("lock btc m32,r32", a => a.@lock.btc(__dword_ptr[rsi + 0x40], eax), u, 40, smallOffset);
        Compare("bts m8 imm", a => a.bts(__dword_ptr[rsi + 1], 31), u, 10);
    }

    [Fact]
    public void Xchg_and_cmpxchg_match_the_host()
    {
        Compare("xchg r8", a => a.xchg(al, bh)); Compare("xchg r16", a => a.xchg(ax, bx));
        Compare("xchg r32", a => a.xchg(ecx, ebx)); Compare("xchg r64", a => a.xchg(r8, rbx));
        Compare("xchg m64", a => a.xchg(__qword_ptr[rsi + 8], rbx), 0, 20);
        Compare("xchg m16", a => a.xchg(__word_ptr[rsi + 9], dx), 0, 20);
        // Half the runs make the comparison succeed.
        Action<ulong[]> eq = r => { if ((r[5] & 1) == 0) r[0] = r[3]; };
        Compare("cmpxchg r8", a => a.cmpxchg(bl, cl), 0, 40, eq);
        Compare("cmpxchg r16", a => a.cmpxchg(bx, cx), 0, 40, eq);
        Compare("cmpxchg r32", a => a.cmpxchg(ebx, ecx), 0, 40, eq);
        Compare("cmpxchg r64", a => a.cmpxchg(rbx, rcx), 0, 40, eq);
        Action<ulong[]> memEq = r => { if ((r[5] & 1) == 0) r[0] = 0x1122334455667788; };
        Compare("lock cmpxchg m32", a => a.@lock.cmpxchg(__dword_ptr[rsi + 0x200], ecx), 0, 20, memEq);
        Compare("lock cmpxchg m64", a => a.@lock.cmpxchg(__qword_ptr[rsi + 0x200], rcx), 0, 20, memEq);
    }

    [Fact]
    public void Movement_ops_match_the_host()
    {
        Compare("mov r8,r8", a => a.mov(ah, bl)); Compare("mov r16,m16", a => a.mov(cx, __word_ptr[rsi + 5]));
        Compare("mov r32,r32", a => a.mov(eax, ebx)); Compare("mov m64,r64", a => a.mov(__qword_ptr[rsi + 0x18], rdx));
        Compare("mov m8,imm", a => a.mov(__byte_ptr[rsi - 1], 0x5a)); Compare("mov m32,imm", a => a.mov(__dword_ptr[rsi + rcx * 4], -5), 0, 10, r => r[1] = 3);
        Compare("mov r64,imm64", a => a.mov(r10, 0x123456789abcdef0));
        Compare("movzx r32,r8", a => a.movzx(eax, bh)); Compare("movzx r64,m16", a => a.movzx(rcx, __word_ptr[rsi + 1]));
        Compare("movsx r16,r8", a => a.movsx(ax, bl)); Compare("movsx r64,m16", a => a.movsx(rdx, __word_ptr[rsi + 3]));
        Compare("movsxd r64,r32", a => a.movsxd(rax, ebx)); Compare("movsx r32,r16", a => a.movsx(ecx, bx));
        Compare("lea", a => a.lea(rax, __[rbx + rcx * 8 + 0x1234])); Compare("lea r32", a => a.lea(eax, __[rbx + rcx * 2 - 7]));
    }

    [Fact]
    public void Bextr_and_shifts_match_the_host()
    {
        // BEXTR: AF, SF and PF are undefined.
        Compare("bextr r32", a => a.bextr(eax, ebx, ecx), AF | SF | PF, 60);
        Compare("bextr r64", a => a.bextr(rax, rbx, rcx), AF | SF | PF, 60, r => r[1] = (ulong)(r[1] & 0x7f7f));
        Compare("bextr r64,m64", a => a.bextr(rdx, __qword_ptr[rsi + 8], rcx), AF | SF | PF, 30, r => r[1] = (ulong)(r[1] & 0x4f4f));
        // Shifts: AF undefined; OF undefined unless the masked count is 1.
        Func<ulong[], ulong> ofUnlessOne(int size) => r => (r[1] & (size == 8 ? 63u : 31u)) == 1 ? AF : AF | OF;
        Compare("shl r8,cl", a => a.shl(bl, cl), 0, 40, null, ofUnlessOne(1));
        Compare("shr r16,cl", a => a.shr(bx, cl), 0, 40, null, ofUnlessOne(2));
        Compare("sar r32,cl", a => a.sar(ebx, cl), 0, 40, null, ofUnlessOne(4));
        Compare("shl r64,cl", a => a.shl(rbx, cl), 0, 40, null, ofUnlessOne(8));
        Compare("sar r64,1", a => a.sar(rax, 1), AF); Compare("shr m32,5", a => a.shr(__dword_ptr[rsi], 5), AF | OF);
    }

    [Fact]
    public void Double_shifts_loops_and_lahf_sahf_match_the_host()
    {
        // SHLD/SHRD: AF undefined; OF undefined unless the masked count is 1; a count above a 16-bit width is undefined.
        Func<ulong[], ulong> ofUnlessOne(int size) => r => (r[1] & (size == 8 ? 63u : 31u)) == 1 ? AF : AF | OF;
        Compare("shld r32,r32,cl", a => a.shld(ebx, edx, cl), 0, 40, null, ofUnlessOne(4));
        Compare("shrd r64,r64,cl", a => a.shrd(rbx, rdx, cl), 0, 40, null, ofUnlessOne(8));
        Compare("shld r16,r16,cl", a => a.shld(bx, dx, cl), 0, 40, r => r[1] &= 15, ofUnlessOne(2));
        Compare("shrd r16,r16,imm", a => a.shrd(bx, dx, 7), AF | OF);
        Compare("shld r64,r64,1", a => a.shld(rbx, rdx, 1), AF);
        Compare("shrd m32,r32,imm", a => a.shrd(__dword_ptr[rsi], edx, 9), AF | OF);
        Compare("shld m64,r64,cl", a => a.shld(__qword_ptr[rsi + 8], rdx, cl), 0, 40, null, ofUnlessOne(8));
        // LOOP family and JRCXZ: RCX of 0, 1 or 2 exercises wrap-around, exit and taken cases.
        void Branch(string name, Action<Assembler, Label> op) =>
            Compare(name, a => { var l = a.CreateLabel(); op(a, l); a.mov(r15, 0x1234); a.Label(ref l); a.nop(); }, 0, 30, r => r[1] %= 3);
        Branch("loop", (a, l) => a.loop(l));
        Branch("loope", (a, l) => a.loope(l));
        Branch("loopne", (a, l) => a.loopne(l));
        Branch("jrcxz", (a, l) => a.jrcxz(l));
        Compare("sahf", a => a.sahf());
        Compare("lahf", a => a.lahf());
        Compare("xlatb", a => a.xlatb(), 0, 20, r => r[3] = r[6]);
        Compare("movbe r32,m32", a => a.movbe(ecx, __dword_ptr[rsi + 4]));
        Compare("movbe m64,r64", a => a.movbe(__qword_ptr[rsi + 8], rbx));
        Compare("movbe r16,m16", a => a.movbe(cx, __word_ptr[rsi + 2]));
        Compare("movnti m64,r64", a => a.movnti(__qword_ptr[rsi + 16], rbx));
        // CMPXCHG8B: in even runs EDX:EAX equals the qword at [rsi+8] (run n stores Edges[n+1] there) so both outcomes are compared.
        int n8 = 0;
        Compare("lock cmpxchg8b m64", a => a.@lock.cmpxchg8b(__qword_ptr[rsi + 8]), 0, 30, r =>
        {
            int n = n8++;
            if (n % 2 == 0 && n + 1 < Edges.Length) { r[0] = Edges[n + 1] & 0xffffffff; r[2] = Edges[n + 1] >> 32; }
        });
    }

    [Fact]
    public void Branches_cmov_setcc_match_the_host()
    {
        var ccs = new (string, Action<Assembler, Label>)[]
        {
            ("jo", (a, l) => a.jo(l)), ("jno", (a, l) => a.jno(l)), ("jb", (a, l) => a.jb(l)), ("jae", (a, l) => a.jae(l)),
            ("je", (a, l) => a.je(l)), ("jne", (a, l) => a.jne(l)), ("jbe", (a, l) => a.jbe(l)), ("ja", (a, l) => a.ja(l)),
            ("js", (a, l) => a.js(l)), ("jns", (a, l) => a.jns(l)), ("jp", (a, l) => a.jp(l)), ("jnp", (a, l) => a.jnp(l)),
            ("jl", (a, l) => a.jl(l)), ("jge", (a, l) => a.jge(l)), ("jle", (a, l) => a.jle(l)), ("jg", (a, l) => a.jg(l)),
        };
        foreach (var (name, jcc) in ccs)
            Compare(name, a => { var l = a.CreateLabel(); jcc(a, l); a.mov(r15, 0x1234); a.Label(ref l); a.nop(); }, 0, 24);
        Compare("cmovl r64", a => a.cmovl(rax, rbx)); Compare("cmovbe r32 (zero-extends when false)", a => a.cmovbe(eax, ebx));
        Compare("cmovp r16,m16", a => a.cmovp(cx, __word_ptr[rsi + 2])); Compare("cmovg r32,m32", a => a.cmovg(ecx, __dword_ptr[rsi + 4]));
        Compare("setg r8", a => a.setg(al)); Compare("seta m8", a => a.seta(__byte_ptr[rsi + 1])); Compare("setnp r8h", a => a.setnp(ah));
        Compare("jmp rel + call/ret", a =>
        {
            var f = a.CreateLabel(); var end = a.CreateLabel();
            a.call(f); a.jmp(end); a.Label(ref f); a.add(rax, rbx); a.ret(); a.Label(ref end); a.nop();
        });
        Compare("jmp r64", a =>
        {
            var t = a.CreateLabel();
            a.lea(r14, __[t]); a.jmp(r14); a.mov(r15, 1); a.Label(ref t); a.nop();
        });
    }

    [Fact]
    public void Mul_div_and_sign_extension_match_the_host()
    {
        // MUL/IMUL: SF, ZF, AF and PF are undefined. DIV/IDIV: all six are undefined.
        const ulong mulU = SF | ZF | AF | PF;
        Compare("mul r8", a => a.mul(bl), mulU); Compare("mul r16", a => a.mul(bx), mulU);
        Compare("mul r32", a => a.mul(ebx), mulU); Compare("mul m64", a => a.mul(__qword_ptr[rsi + 8]), mulU);
        Compare("imul r8", a => a.imul(bl), mulU); Compare("imul r16", a => a.imul(bx), mulU);
        Compare("imul r32", a => a.imul(ebx), mulU); Compare("imul r64", a => a.imul(rbx), mulU);
        Compare("imul r16,r16", a => a.imul(ax, bx), mulU); Compare("imul r32,m32", a => a.imul(ecx, __dword_ptr[rsi]), mulU);
        Compare("imul r64,r64", a => a.imul(rax, rbx), mulU); Compare("imul r64,r64,imm", a => a.imul(rcx, rbx, -77), mulU);
        Compare("imul r16,r16,imm8", a => a.imul(cx, bx, 5), mulU);
        Action<ulong[]> divOk(int size, bool signed) => r =>
        {
            ulong m = size == 8 ? ulong.MaxValue : (1ul << (8 * size)) - 1;
            if ((r[3] & m) == 0) r[3] |= 7;
            if (signed)
            {
                if ((r[3] & m) == m) r[3] ^= 2; // not -1
                ulong sign = size == 1 ? ((r[0] & 0x80) != 0 ? 0xff00ul : 0) : 0;
                if (size == 1) r[0] = (r[0] & ~0xff00ul) | sign;
                else r[2] = (r[2] & ~m) | (((r[0] >> (8 * size - 1)) & 1) != 0 ? m : 0);
            }
            else if (size == 1) r[0] &= ~0xff00ul;
            else r[2] &= ~m;
        };
        const ulong all = Status;
        Compare("div r8", a => a.div(bl), all, 40, divOk(1, false)); Compare("div r16", a => a.div(bx), all, 40, divOk(2, false));
        Compare("div r32", a => a.div(ebx), all, 40, divOk(4, false)); Compare("div r64", a => a.div(rbx), all, 40, divOk(8, false));
        Compare("idiv r8", a => a.idiv(bl), all, 40, divOk(1, true)); Compare("idiv r16", a => a.idiv(bx), all, 40, divOk(2, true));
        Compare("idiv r32", a => a.idiv(ebx), all, 40, divOk(4, true)); Compare("idiv r64", a => a.idiv(rbx), all, 40, divOk(8, true));
        Compare("cbw", a => a.cbw()); Compare("cwde", a => a.cwde()); Compare("cdqe", a => a.cdqe());
        Compare("cwd", a => a.cwd()); Compare("cdq", a => a.cdq()); Compare("cqo", a => a.cqo());
    }

    [Fact]
    public void Rotates_xadd_bit_scans_match_the_host()
    {
        // Rotates: OF undefined unless the masked count is 1.
        Func<ulong[], ulong> ofUnlessOne(int size) => r => (r[1] & (size == 8 ? 63u : 31u)) == 1 ? 0 : OF;
        Compare("rol r8,cl", a => a.rol(bl, cl), 0, 40, null, ofUnlessOne(1)); Compare("ror r16,cl", a => a.ror(bx, cl), 0, 40, null, ofUnlessOne(2));
        Compare("rcl r32,cl", a => a.rcl(ebx, cl), 0, 40, null, ofUnlessOne(4)); Compare("rcr r64,cl", a => a.rcr(rbx, cl), 0, 40, null, ofUnlessOne(8));
        Compare("rcl r8,cl", a => a.rcl(bl, cl), 0, 40, null, ofUnlessOne(1)); Compare("rcr r16,cl", a => a.rcr(bx, cl), 0, 40, null, ofUnlessOne(2));
        Compare("rol m32,1", a => a.rol(__dword_ptr[rsi], 1)); Compare("ror r64,1", a => a.ror(rax, 1));
        Compare("xadd r32", a => a.xadd(ebx, ecx)); Compare("lock xadd m64", a => a.@lock.xadd(__qword_ptr[rsi + 8], rbx));
        Compare("xadd r8", a => a.xadd(al, ch));
        Compare("bswap r32", a => a.bswap(ebx)); Compare("bswap r64", a => a.bswap(r11));
        // BSF/BSR: only ZF is defined.
        const ulong bsU = CF | OF | SF | AF | PF;
        Compare("bsf r64", a => a.bsf(rax, rbx), bsU); Compare("bsr r32", a => a.bsr(eax, ebx), bsU); Compare("bsr r16,m16", a => a.bsr(ax, __word_ptr[rsi]), bsU);
        // TZCNT/LZCNT: CF and ZF defined; POPCNT: all defined.
        Compare("tzcnt r64", a => a.tzcnt(rax, rbx), OF | SF | AF | PF); Compare("lzcnt r32", a => a.lzcnt(eax, ebx), OF | SF | AF | PF);
        Compare("popcnt r16", a => a.popcnt(ax, bx));
    }

    private static void SetupString(ulong[] r, NativeRunner run, ulong count)
    {
        r[6] = (ulong)run.Data + 0x1000;
        r[7] = (ulong)run.Data + 0x1800;
        r[1] = count;
    }

    [Fact]
    public void String_ops_with_rep_match_the_host()
    {
        var rng = new Random(7);
        foreach (bool down in new[] { false, true })
        {
            Action<ulong[]> s = r => SetupString(r, _run, (ulong)rng.Next(0, 40));
            CompareDf("rep movsb", a => a.rep.movsb(), s, down);
            CompareDf("rep movsw", a => a.rep.movsw(), s, down);
            CompareDf("rep movsd", a => a.rep.movsd(), s, down);
            CompareDf("rep movsq", a => a.rep.movsq(), s, down);
            CompareDf("rep stosb", a => a.rep.stosb(), s, down);
            CompareDf("rep stosq", a => a.rep.stosq(), s, down);
            CompareDf("rep lodsw", a => a.rep.lodsw(), s, down);
            CompareDf("repe cmpsb", a => a.repe.cmpsb(), r => { s(r); }, down, sameData: true);
            CompareDf("repne cmpsd", a => a.repne.cmpsd(), s, down);
            CompareDf("repne scasb", a => a.repne.scasb(), s, down);
            CompareDf("repe scasw", a => a.repe.scasw(), s, down, sameData: true);
            CompareDf("movsd (no rep)", a => a.movsd(), s, down);
            CompareDf("stosd (no rep)", a => a.stosd(), s, down);
        }
    }

    private void CompareDf(string name, Action<Assembler> emit, Action<ulong[]> setup, bool down, bool sameData = false)
    {
        // Like Compare, but with DF pinned and data shaped so REPE/REPNE stop part-way.
        ulong insn = _run.Load(emit);
        var data = _run.DataSpan;
        var init = new byte[data.Length];
        for (int n = 0; n < 25; n++)
        {
            var regs = new ulong[16];
            for (int r = 0; r < 16; r++) regs[r] = Value(Edges.Length + n + r);
            setup(regs);
            if (down) { regs[6] += 0x400; regs[7] += 0x400; }
            _rng.NextBytes(init);
            if (sameData || n % 3 == 0)
            {
                // Make long runs of equal bytes so REPE/REPNE terminate at interesting places.
                for (int k = 0; k < 0x800; k++) init[0x1000 + k] = (byte)(k < 0x400 + n ? 0x41 : k);
                init.AsSpan(0x1000, 0x800).CopyTo(init.AsSpan(0x1800));
                regs[0] = 0x4141414141414141;
                if (down) { init[0x1400 - n] = 0; }
            }
            ulong flagsIn = 2 | ((ulong)_rng.Next() & Status) | (down ? DF : 0);
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
            Assert.True(res.IsOk, $"{name} #{n}: {res.Status} {res.Exception}");
            Assert.Equal(insn + (ulong)_run.InsnLength, cpu.Rip);
            for (int r = 0; r < 16; r++)
                if (r != 4 && native[r] != cpu.Gpr[r])
                    Assert.Fail($"{name} down={down} #{n}: {(Reg)r} native {native[r]:x} engine {cpu.Gpr[r]:x}");
            Assert.Equal(nflags & (Status | DF), cpu.Rflags & (Status | DF));
            Assert.True(data.SequenceEqual(nativeMem), $"{name} down={down} #{n}: memory differs");
        }
    }
}
