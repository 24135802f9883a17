// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// The engine's cached-block path (<see cref="InstructionEngine.Run"/>) against its one-instruction path: the specialised
/// register and memory forms give the same registers, flags, memory and faults as the generic semantics, and a block is not reused once its bytes change.
/// </summary>
public sealed unsafe class BlockCacheTests
{
    private const ulong CodeAt = 0x8000;

    private static void Assemble(NativeTestRam m, int bitness, Action<Assembler> code)
    {
        var a = new Assembler(bitness);
        code(a);
        var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), CodeAt);
        ms.ToArray().CopyTo(m.Ram[(int)CodeAt..]);
    }

    private static void SetMode(NativeTestRam m, CpuState c, int bitness)
    {
        if (bitness == 64)
        {
            // Identity-map the first 2 MiB with one large page: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000.
            MemoryMarshal.Write(m.Ram[0x1000..], 0x2003ul);
            MemoryMarshal.Write(m.Ram[0x2000..], 0x3003ul);
            MemoryMarshal.Write(m.Ram[0x3000..], 0x83ul);
            c.SetFlatLongMode(0x1000);
        }
        else
        {
            c.SetFlatProtectedMode();
        }
        c.Rip = CodeAt;
    }

    private static readonly ulong[] Edges = [0, 1, 0x7f, 0x80, 0xff, 0x7fffffff, 0x80000000, 0xffffffff, 0x7fffffffffffffff, 0x8000000000000000, ulong.MaxValue];

    [Theory]
    [InlineData(32)]
    [InlineData(64)]
    public void SpecialisedRegisterFormsMatchTheGenericSemantics(int bitness)
    {
        using var m = new NativeTestRam();
        var fast = new InstructionEngine(m);
        _ = new Tlb(fast.Memory.Walker);
        var slow = new InstructionEngine(m);
        var rng = new Random(bitness);
        var names = new[] { "add", "sub", "cmp", "and", "or", "xor", "test", "mov", "inc", "dec" };
        AssemblerRegister32[] r32 = [eax, ecx, edx, ebx, esi, edi, r8d, r15d];
        AssemblerRegister64[] r64 = [rax, rcx, rdx, rbx, rsi, rdi, r8, r15];
        int regs = bitness == 64 ? 8 : 6;
        for (int round = 0; round < 400; round++)
        {
            string op = names[round % names.Length];
            int form = rng.Next(3); // 0: reg,reg  1: reg,imm8  2: reg,imm32
            int d = rng.Next(regs), s = rng.Next(regs);
            int imm = form == 1 ? rng.Next(-128, 128) : (int)Edges[rng.Next(Edges.Length)] ^ rng.Next();
            bool wide = bitness == 64 && rng.Next(2) == 0;
            Assemble(m, bitness, a =>
            {
                if (wide) Emit64(a, op, form, r64[d], r64[s], imm);
                else Emit32(a, op, form, r32[d], r32[s], imm);
                a.hlt();
            });
            var c1 = new CpuState();
            SetMode(m, c1, bitness);
            for (int k = 0; k < 16; k++) c1.Gpr[k] = rng.Next(3) == 0 ? Edges[rng.Next(Edges.Length)] : (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40);
            c1.Rflags = 2 | (rng.Next(2) == 0 ? 0 : CpuState.FlagCf) | (rng.Next(2) == 0 ? 0 : CpuState.FlagZf);
            var c2 = new CpuState();
            c1.CopyTo(c2);
            var r1 = fast.Run(c1, null, 1000, out int ran);
            Assert.Equal(StepStatus.Halt, r1.Status);
            Assert.Equal(2, ran);
            Assert.True(slow.Step(c2).IsOk);
            string what = $"{op} form {form} wide {wide} d {d} s {s} imm {imm:x}";
            for (int k = 0; k < 16; k++) Assert.True(c2.Gpr[k] == c1.Gpr[k], $"{what}: r{k} {c1.Gpr[k]:x} != {c2.Gpr[k]:x}");
            Assert.True(c2.Rflags == c1.Rflags, $"{what}: rflags {c1.Rflags:x} != {c2.Rflags:x}");
        }
        Assert.True(fast.BlocksDecoded >= 400);
    }

    private static void Emit32(Assembler a, string op, int form, AssemblerRegister32 d, AssemblerRegister32 s, int imm)
    {
        switch (op, form)
        {
            case ("inc", _): a.inc(d); break;
            case ("dec", _): a.dec(d); break;
            case ("add", 0): a.add(d, s); break;
            case ("add", _): a.add(d, imm); break;
            case ("sub", 0): a.sub(d, s); break;
            case ("sub", _): a.sub(d, imm); break;
            case ("cmp", 0): a.cmp(d, s); break;
            case ("cmp", _): a.cmp(d, imm); break;
            case ("and", 0): a.and(d, s); break;
            case ("and", _): a.and(d, imm); break;
            case ("or", 0): a.or(d, s); break;
            case ("or", _): a.or(d, imm); break;
            case ("xor", 0): a.xor(d, s); break;
            case ("xor", _): a.xor(d, imm); break;
            case ("test", 0): a.test(d, s); break;
            case ("test", _): a.test(d, imm); break;
            case ("mov", 0): a.mov(d, s); break;
            default: a.mov(d, imm); break;
        }
    }

    private static void Emit64(Assembler a, string op, int form, AssemblerRegister64 d, AssemblerRegister64 s, int imm)
    {
        switch (op, form)
        {
            case ("inc", _): a.inc(d); break;
            case ("dec", _): a.dec(d); break;
            case ("add", 0): a.add(d, s); break;
            case ("add", _): a.add(d, imm); break;
            case ("sub", 0): a.sub(d, s); break;
            case ("sub", _): a.sub(d, imm); break;
            case ("cmp", 0): a.cmp(d, s); break;
            case ("cmp", _): a.cmp(d, imm); break;
            case ("and", 0): a.and(d, s); break;
            case ("and", _): a.and(d, imm); break;
            case ("or", 0): a.or(d, s); break;
            case ("or", _): a.or(d, imm); break;
            case ("xor", 0): a.xor(d, s); break;
            case ("xor", _): a.xor(d, imm); break;
            case ("test", 0): a.test(d, s); break;
            case ("test", _): a.test(d, imm); break;
            case ("mov", 0): a.mov(d, s); break;
            case ("mov", 1): a.mov(d, imm); break;
            default: a.mov(d, ((ulong)(uint)imm << 32) | (uint)~imm); break; // mov r64, imm64
        }
    }

    // op reg, [rbx+disp] and op [rbx+disp], reg/imm against the one-instruction path, on two copies of the same memory:
    // registers, flags, the data bytes and any fault must agree. RBX points inside a page, across a page end, or (64-bit)
    // at a non-canonical or unmapped address.
    [Theory]
    [InlineData(32)]
    [InlineData(64)]
    public void SpecialisedMemoryFormsMatchTheGenericSemantics(int bitness)
    {
        using var m1 = new NativeTestRam();
        using var m2 = new NativeTestRam();
        var fast = new InstructionEngine(m1);
        _ = new Tlb(fast.Memory.Walker);
        var slow = new InstructionEngine(m2);
        var rng = new Random(bitness + 1);
        var names = new[] { "add", "sub", "cmp", "and", "or", "xor", "test", "mov" };
        AssemblerRegister32[] r32 = [eax, ecx, edx, esi, edi];
        AssemblerRegister64[] r64 = [rax, rcx, rdx, rsi, rdi];
        const int Data = 0x10000;
        for (int round = 0; round < 600; round++)
        {
            string op = names[round % names.Length];
            int form = rng.Next(3); // 0: op reg,[mem]  1: op [mem],reg  2: op [mem],imm
            if (op == "test" && form == 0) form = 1;
            int r = rng.Next(r32.Length);
            int disp = rng.Next(-16, 16);
            int imm = rng.Next(2) == 0 ? rng.Next(-128, 128) : rng.Next(int.MinValue, int.MaxValue);
            bool wide = bitness == 64 && rng.Next(2) == 0;
            var mem = wide ? __qword_ptr[rbx + disp] : bitness == 64 ? __dword_ptr[rbx + disp] : __dword_ptr[ebx + disp];
            Action<Assembler> emit = a =>
            {
                if (wide) EmitMemory64(a, op, form, r64[r], mem, imm);
                else EmitMemory32(a, op, form, r32[r], mem, imm);
                a.hlt();
            };
            Assemble(m1, bitness, emit);
            Assemble(m2, bitness, emit);
            var data = new byte[0x3000];
            rng.NextBytes(data);
            data.CopyTo(m1.Ram[Data..]);
            data.CopyTo(m2.Ram[Data..]);
            var c1 = new CpuState();
            SetMode(m1, c1, bitness);
            SetMode(m2, new CpuState(), bitness);
            for (int k = 0; k < 16; k++) c1.Gpr[k] = (ulong)rng.NextInt64() ^ ((ulong)rng.Next() << 40);
            int where = rng.Next(8);
            c1.Gpr[3] = where switch
            {
                0 => Data + 0x1000 - 4 - (ulong)rng.Next(4),                       // across a page end
                1 when bitness == 64 => 0x0000_8000_0000_0000ul,                    // non-canonical: #GP
                2 when bitness == 64 => 0x0000_0000_4000_0000ul,                    // not mapped: #PF
                _ => Data + 0x20 + (ulong)rng.Next(0x1f00),
            };
            if (bitness == 32) c1.Gpr[3] &= 0xffffffff;
            c1.Rflags = 2 | (rng.Next(2) == 0 ? 0 : CpuState.FlagCf);
            var c2 = new CpuState();
            c1.CopyTo(c2);
            var r1 = fast.Run(c1, null, 1000, out _);
            var r2 = slow.Step(c2);
            string what = $"{op} form {form} wide {wide} reg {r} rbx {c1.Gpr[3]:x} disp {disp} imm {imm:x}";
            if (r2.IsOk)
            {
                Assert.True(r1.Status == StepStatus.Halt, $"{what}: {r1.Status}");
            }
            else
            {
                Assert.True(r1.Status == r2.Status && r1.Exception.Vector == r2.Exception.Vector, $"{what}: {r1.Status} {r1.Exception.Vector} != {r2.Status} {r2.Exception.Vector}");
                Assert.Equal(c2.Rip, c1.Rip);
            }
            for (int k = 0; k < 16; k++) Assert.True(c2.Gpr[k] == c1.Gpr[k], $"{what}: r{k} {c1.Gpr[k]:x} != {c2.Gpr[k]:x}");
            Assert.True(c2.Rflags == c1.Rflags, $"{what}: rflags {c1.Rflags:x} != {c2.Rflags:x}");
            Assert.True(m1.Ram[Data..(Data + 0x3000)].SequenceEqual(m2.Ram[Data..(Data + 0x3000)]), $"{what}: memory differs");
        }
    }

    private static void EmitMemory32(Assembler a, string op, int form, AssemblerRegister32 r, AssemblerMemoryOperand m, int imm)
    {
        switch (op, form)
        {
            case ("mov", 0): a.mov(r, m); break;
            case ("mov", 1): a.mov(m, r); break;
            case ("mov", _): a.mov(m, imm); break;
            case ("add", 0): a.add(r, m); break;
            case ("add", 1): a.add(m, r); break;
            case ("add", _): a.add(m, imm); break;
            case ("sub", 0): a.sub(r, m); break;
            case ("sub", 1): a.sub(m, r); break;
            case ("sub", _): a.sub(m, imm); break;
            case ("cmp", 0): a.cmp(r, m); break;
            case ("cmp", 1): a.cmp(m, r); break;
            case ("cmp", _): a.cmp(m, imm); break;
            case ("and", 0): a.and(r, m); break;
            case ("and", 1): a.and(m, r); break;
            case ("and", _): a.and(m, imm); break;
            case ("or", 0): a.or(r, m); break;
            case ("or", 1): a.or(m, r); break;
            case ("or", _): a.or(m, imm); break;
            case ("xor", 0): a.xor(r, m); break;
            case ("xor", 1): a.xor(m, r); break;
            case ("xor", _): a.xor(m, imm); break;
            case ("test", 1): a.test(m, r); break;
            default: a.test(m, imm); break;
        }
    }

    private static void EmitMemory64(Assembler a, string op, int form, AssemblerRegister64 r, AssemblerMemoryOperand m, int imm)
    {
        switch (op, form)
        {
            case ("mov", 0): a.mov(r, m); break;
            case ("mov", 1): a.mov(m, r); break;
            case ("mov", _): a.mov(m, imm); break;
            case ("add", 0): a.add(r, m); break;
            case ("add", 1): a.add(m, r); break;
            case ("add", _): a.add(m, imm); break;
            case ("sub", 0): a.sub(r, m); break;
            case ("sub", 1): a.sub(m, r); break;
            case ("sub", _): a.sub(m, imm); break;
            case ("cmp", 0): a.cmp(r, m); break;
            case ("cmp", 1): a.cmp(m, r); break;
            case ("cmp", _): a.cmp(m, imm); break;
            case ("and", 0): a.and(r, m); break;
            case ("and", 1): a.and(m, r); break;
            case ("and", _): a.and(m, imm); break;
            case ("or", 0): a.or(r, m); break;
            case ("or", 1): a.or(m, r); break;
            case ("or", _): a.or(m, imm); break;
            case ("xor", 0): a.xor(r, m); break;
            case ("xor", 1): a.xor(m, r); break;
            case ("xor", _): a.xor(m, imm); break;
            case ("test", 1): a.test(m, r); break;
            default: a.test(m, imm); break;
        }
    }

    [Fact]
    public void ABlockIsDecodedAgainWhenItsBytesChangeBehindTheEngine()
    {
        using var m = new NativeTestRam();
        var e = new InstructionEngine(m);
        _ = new Tlb(e.Memory.Walker);
        var c = new CpuState();
        Assemble(m, 32, a => { a.mov(eax, 1); a.hlt(); });
        SetMode(m, c, 32);
        Assert.Equal(StepStatus.Halt, e.Run(c, null, 100, out _).Status);
        Assert.Equal(1ul, c.Gpr[0]);
        long decoded = e.BlocksDecoded;
        c.Rip = CodeAt;
        Assert.Equal(StepStatus.Halt, e.Run(c, null, 100, out _).Status); // same bytes: the cached block
        Assert.Equal(decoded, e.BlocksDecoded);
        m.Ram[(int)CodeAt + 1] = 7; // another writer (a device, another vCPU) patches the immediate
        c.Rip = CodeAt;
        Assert.Equal(StepStatus.Halt, e.Run(c, null, 100, out _).Status);
        Assert.Equal(7ul, c.Gpr[0]);
        Assert.Equal(decoded + 1, e.BlocksDecoded);
    }
}
