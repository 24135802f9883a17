// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// The x87 environment and state images (FNSTENV/FLDENV, FNSAVE/FRSTOR), packed BCD, FICOM, the 387's FNOPs and the
/// CR0.EM/TS/MP rules of SDM Vol. 3 table 2-2: host-differential where the host runs them in user mode, and the
/// layouts and values the SDM names.
/// </summary>
public sealed unsafe class X87StateTests : IDisposable
{
    private readonly NativeRunner _run = new();

    public void Dispose() => _run.Dispose();

    // Runs the body natively and under the engine with inputs at [rsi] (qwords) and [rsi+0x100] (BCD/ints), and compares
    // [rsi+0x200..+0x300) (where the body stores its results); <paramref name="ignore"/> masks bytes (the pointers in an
    // environment image, which the host fills with real addresses).
    private void Compare(string name, Action<Assembler> body, byte[] input, Func<int, bool>? ignore = null)
    {
        ulong insn = _run.Load(body);
        var data = _run.DataSpan;
        data.Clear();
        input.CopyTo(data[0x1000..]);
        var regs = new ulong[16];
        regs[6] = (ulong)_run.Data + 0x1000;
        ulong fl = 2;
        _run.RunNative(regs, ref fl);
        var native = data.ToArray();
        data.Clear();
        input.CopyTo(data[0x1000..]);
        var cpu = new CpuState();
        cpu.Gpr[6] = (ulong)_run.Data + 0x1000;
        cpu.Rflags = 2;
        var r = _run.RunEngine(cpu, insn);
        Assert.True(r.IsOk, $"{name}: {r.Status} {r.Exception} {r.Code}");
        var engine = data.ToArray();
        for (int k = 0x1200; k < 0x1300; k++)
            if ((ignore == null || !ignore(k - 0x1200)) && native[k] != engine[k])
                Assert.Fail($"{name}: byte +0x{k - 0x1200:x} native {Convert.ToHexString(native, 0x1200, 48)} engine {Convert.ToHexString(engine, 0x1200, 48)}");
    }

    private static byte[] Input(params long[] ints)
    {
        var b = new byte[0x200];
        for (int k = 0; k < ints.Length; k++) BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(8 * k), ints[k]);
        // Packed BCD at +0x100: 123456789012345678 and -42.
        byte[] bcd1 = { 0x78, 0x56, 0x34, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x00 };
        byte[] bcd2 = { 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0x80 };
        bcd1.CopyTo(b, 0x100);
        bcd2.CopyTo(b, 0x110);
        return b;
    }

    [Fact]
    public void Packed_bcd_ficom_and_the_environment_match_the_host()
    {
        var input = Input(BitConverter.DoubleToInt64Bits(2.5), BitConverter.DoubleToInt64Bits(-3.5), BitConverter.DoubleToInt64Bits(1e20), 7);
        Compare("fbld fbstp", a => { a.fbld(__tword_ptr[rsi + 0x100]); a.fbstp(__tword_ptr[rsi + 0x200]); a.fbld(__tword_ptr[rsi + 0x110]); a.fbstp(__tword_ptr[rsi + 0x210]); }, input);
        Compare("fbld fstp m80", a => { a.fbld(__tword_ptr[rsi + 0x100]); a.fstp(__tword_ptr[rsi + 0x200]); }, input);
        Compare("fbstp rounds to even", a => { a.fld(__qword_ptr[rsi]); a.fbstp(__tword_ptr[rsi + 0x200]); a.fld(__qword_ptr[rsi + 8]); a.fbstp(__tword_ptr[rsi + 0x210]); }, input);
        Compare("fbstp of 1e20 is the indefinite", a => { a.fld(__qword_ptr[rsi + 16]); a.fbstp(__tword_ptr[rsi + 0x200]); a.fnclex(); }, input);
        Compare("ficom ficomp", a =>
        {
            a.fld(__qword_ptr[rsi]); a.ficom(__dword_ptr[rsi + 24]); a.fnstsw(ax); a.and(ax, 0x4700); a.mov(__word_ptr[rsi + 0x200], ax);
            a.ficomp(__word_ptr[rsi + 24]); a.fnstsw(ax); a.and(ax, 0x7f00); a.mov(__word_ptr[rsi + 0x202], ax);
        }, input);
        // FNSTENV (28 bytes in 64-bit mode): FCW, FSW (TOP 6), the full tag word (two valid, six empty); the pointers
        // (bytes 12-27) are left out of the comparison. Then the control word has every exception masked.
        Compare("fnstenv", a =>
        {
            a.fninit(); a.fld1(); a.fldz(); a.fnstenv(__[rsi + 0x200]); a.fnstcw(__word_ptr[rsi + 0x220]); a.fstp(st0); a.fstp(st0);
        }, input, k => k >= 12 && k < 28);
        Compare("fnsave frstor", a =>
        {
            a.fninit(); a.fld(__qword_ptr[rsi]); a.fld1(); a.fnsave(__[rsi + 0x200]); a.fnstsw(__word_ptr[rsi + 0x280]);
            a.frstor(__[rsi + 0x200]); a.fstp(__qword_ptr[rsi + 0x288]); a.fstp(__qword_ptr[rsi + 0x290]);
        }, input, k => k >= 12 && k < 28 || k >= 48 && k < 108); // pointers; and ST(2)-ST(7), empty registers whose
        // contents FNINIT leaves as they were (on the host: whatever x87 code ran last on this core)
    }

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
        cpu.Gpr[6] = 0x3000;
        mem.Write(0x1000, NativeRunner.Assemble(emit, 0x1000));
        return (new InstructionEngine(mem), mem, cpu);
    }

    [Fact]
    public void Fldenv_restores_top_and_tags_and_keeps_each_physical_register()
    {
        var (engine, mem, cpu) = Machine(a => { a.fld1(); a.fnstenv(__[rsi]); a.fldz(); a.fldz(); a.fldenv(__[rsi]); });
        for (int k = 0; k < 5; k++) Assert.True(engine.Step(cpu).IsOk);
        Assert.Equal(7, (cpu.Fsw >> 11) & 7);               // TOP as FLD1 left it
        Assert.Equal(0x80, cpu.FtwAbridged);                   // R7 valid, the rest empty
        Assert.Equal(0x8000000000000000ul, BinaryPrimitives.ReadUInt64LittleEndian(cpu.St(0))); // ST(0) is R7 = 1.0 again
        Assert.Equal(0x3fff, BinaryPrimitives.ReadUInt16LittleEndian(cpu.St(0)[8..]));
        // The stored tag word: R7 valid (00), the others empty (11).
        Assert.Equal(0x3ffful, mem.Read64(0x3008) & 0xffff);
        Assert.Equal(0x3f, cpu.Fcw & 0x3f);
    }

    [Fact]
    public void Fnsave_stores_94_bytes_in_16_bit_protected_layout_and_reinitializes()
    {
        var (engine, mem, cpu) = Machine(a => { a.fld1(); a.db(0x66); a.fnsave(__[rsi]); });
        Assert.True(engine.Step(cpu).IsOk);
        var r = engine.Step(cpu);
        Assert.True(r.IsOk, $"{r.Status} {r.Code}");
        Assert.Equal(Code.Fnsave_m94byte, r.Code);
        Assert.Equal(0x037ful, mem.Read64(0x3000) & 0xffff);    // FCW at 0
        Assert.Equal(7ul << 11, mem.Read64(0x3002) & 0xffff);  // FSW at 2: TOP 7
        Assert.Equal(0x3fffu, (uint)(mem.Read64(0x3004) & 0xffff)); // FTW at 4
        Assert.Equal(0x8000000000000000ul, mem.Read64(0x300e)); // ST(0) at 14
        Assert.Equal(0x037f, cpu.Fcw);                           // FNINIT after the save
        Assert.Equal(0, cpu.FtwAbridged);
    }

    [Fact]
    public void X87_is_nm_with_cr0_em_or_ts_and_wait_only_with_ts_and_mp()
    {
        var (engine, _, cpu) = Machine(a => a.fld1());
        cpu.Cr0 |= CpuState.Cr0Em;
        Assert.Equal(Vector.NM, engine.Step(cpu).Exception.Vector);
        cpu.Cr0 = cpu.Cr0 & ~CpuState.Cr0Em | CpuState.Cr0Ts;
        Assert.Equal(Vector.NM, engine.Step(cpu).Exception.Vector);
        cpu.Cr0 &= ~CpuState.Cr0Ts;
        Assert.True(engine.Step(cpu).IsOk);

        (engine, _, cpu) = Machine(a => a.wait());
        cpu.Cr0 = cpu.Cr0 & ~2ul | CpuState.Cr0Ts | CpuState.Cr0Em; // TS without MP: WAIT runs (EM is ignored by WAIT)
        Assert.True(engine.Step(cpu).IsOk);
        cpu.Rip = 0x1000;
        cpu.Cr0 |= 2; // MP and TS
        Assert.Equal(Vector.NM, engine.Step(cpu).Exception.Vector);
    }

    [Fact]
    public void The_8087_and_287_control_forms_are_fnop_and_bswap_r16_clears_the_low_word()
    {
        var (engine, _, cpu) = Machine(a => { a.fneni(); a.fndisi(); a.fnsetpm(); });
        for (int k = 0; k < 3; k++) Assert.True(engine.Step(cpu).IsOk);
        // BSWAP with a 66 prefix (undefined in the SDM): the processors write zero to the low word.
        var (e2, mem, c2) = Machine(a => a.nop());
        mem.Write(0x1000, new byte[] { 0x66, 0x0f, 0xc8 });
        c2.Gpr[0] = 0x1122334455667788;
        Assert.True(e2.Step(c2).IsOk);
        Assert.Equal(0x1122334455660000ul, c2.Gpr[0]);
    }
}
