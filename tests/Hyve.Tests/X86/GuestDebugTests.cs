// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.X86;

/// <summary>
/// Issue 17 items 3 and 5: the guest's own debug registers and single step on the software CPU (SDM Vol. 3 17.2-17.3),
/// and RF in the RFLAGS image pushed for faults (SDM Vol. 3 17.3.1.1).
/// </summary>
public sealed class GuestDebugTests
{
    private const ulong Gdt = 0x500, Idt = 0x1000;
    private const ushort Code0 = 0x08, Data0 = 0x10;
    private const ulong Dr6Bs = 1ul << 14;
    private readonly TestMemory _mem = new(4 << 20);
    private readonly InstructionEngine _engine;

    public GuestDebugTests()
    {
        _engine = new InstructionEngine(_mem);
        _mem.Write64(Gdt + Code0, 0x00cf9b000000ffff);
        _mem.Write64(Gdt + Data0, 0x00cf93000000ffff);
    }

    private CpuState Protected32()
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x17, 0);
        cpu.Idtr = new SegmentDescriptor(Idt, 0x7ff, 0);
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(Code0, new SegmentDescriptor(0, 0xffffffff, 0xc09b));
        cpu.Segs[(int)Seg.Ss] = new SegmentRegister(Data0, new SegmentDescriptor(0, 0xffffffff, 0xc093));
        cpu.Rip = 0x4000;
        cpu.Gpr[4] = 0x9000;
        cpu.Gpr[0] = 0x3000;
        cpu.Rflags = 2;
        return cpu;
    }

    private StepResult Step(CpuState cpu, string hex)
    {
        _mem.Write(cpu.Rip, Convert.FromHexString(hex));
        return _engine.StepWithDebug(cpu, null);
    }

    private static void AssertDb(StepResult r)
    {
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.DB, r.Exception.Vector);
    }

    [Fact]
    public void Tf_traps_after_one_instruction_with_dr6_bs()
    {
        var cpu = Protected32();
        cpu.Rflags |= CpuState.FlagTf;
        var r = Step(cpu, "90"); // NOP
        AssertDb(r);
        Assert.Equal(0x4001ul, cpu.Rip); // a trap: RIP past the instruction
        Assert.NotEqual(0ul, cpu.Dr[6] & Dr6Bs);
        // INT n clears TF on the way to its handler: no single-step trap after it (SDM 17.3.1.4).
        var c2 = Protected32();
        c2.Rflags |= CpuState.FlagTf;
        _mem.Write64(Idt + 0x20 * 8, 0x00008e0000085000ul);
        Assert.True(Step(c2, "cd20").IsOk);
        Assert.Equal(0x5000ul, c2.Rip);
        // Without TF nothing traps.
        Assert.True(Step(Protected32(), "90").IsOk);
    }

    [Fact]
    public void Instruction_breakpoint_faults_before_the_instruction_and_rf_suppresses_it_once()
    {
        var cpu = Protected32();
        cpu.Dr[0] = 0x4000;
        cpu.Dr[7] = 0x400 | 1; // L0, RW0 = 00 (execute), LEN0 = 00
        var r = Step(cpu, "40"); // INC EAX
        AssertDb(r);
        Assert.Equal(0x4000ul, cpu.Rip); // a fault: nothing executed
        Assert.Equal(0x3000ul, cpu.Gpr[0]);
        Assert.Equal(1ul, cpu.Dr[6] & 0xf);
        cpu.Rflags |= CpuState.FlagRf; // as the handler's IRET would restore it
        Assert.True(Step(cpu, "40").IsOk);
        Assert.Equal(0x3001ul, cpu.Gpr[0]);
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagRf); // cleared once the instruction ran
        cpu.Rip = 0x4000;
        AssertDb(Step(cpu, "40")); // and the breakpoint is live again
        cpu.Dr[7] = 0x400;      // disabled: runs
        Assert.True(Step(cpu, "40").IsOk);
    }

    [Theory]
    [InlineData(1, "894804", true)]  // write-only breakpoint, MOV [EAX+4], ECX: hit
    [InlineData(1, "8b4804", false)] // write-only breakpoint, MOV ECX, [EAX+4]: a read does not hit
    [InlineData(3, "8b4806", true)]  // read/write breakpoint, MOV ECX, [EAX+6]: the 4-byte range 0x3004-7 is touched
    [InlineData(3, "8b4808", false)] // read/write, MOV ECX, [EAX+8]: outside
    public void Data_breakpoints_trap_after_the_access_with_their_b_bit(int rw, string insn, bool hit)
    {
        var cpu = Protected32();
        cpu.Dr[1] = 0x3004;
        cpu.Dr[7] = 0x400 | 1ul << 3 /* G1 */ | (ulong)rw << 20 | 3ul << 22 /* LEN1 = 4 bytes */;
        var r = Step(cpu, insn);
        if (!hit)
        {
            Assert.True(r.IsOk);
            return;
        }
        AssertDb(r);
        Assert.Equal(0x4003ul, cpu.Rip);
        Assert.Equal(2ul, cpu.Dr[6] & 0xf);
    }

    [Fact]
    public void Io_breakpoints_need_cr4_de()
    {
        var cpu = Protected32();
        cpu.Gpr[2] = 0x70;
        cpu.Dr[2] = 0x70;
        cpu.Dr[7] = 0x400 | 1ul << 4 /* L2 */ | 2ul << 24; // RW2 = 10: I/O
        Assert.True(Step(cpu, "ee").IsOk); // OUT DX, AL without CR4.DE: no I/O breakpoints
        cpu.Cr4 |= CpuState.Cr4De;
        cpu.Rip = 0x4000;
        var r = Step(cpu, "ee");
        AssertDb(r);
        Assert.Equal(4ul, cpu.Dr[6] & 0xf);
    }

    [Fact]
    public void Mov_ss_holds_the_single_step_trap_until_after_the_next_instruction()
    {
        var cpu = Protected32();
        cpu.Rflags |= CpuState.FlagTf;
        cpu.Gpr[0] = Data0;
        _mem.Write(0x4000, Convert.FromHexString("8ed0" + "90")); // MOV SS, AX; NOP
        Assert.True(_engine.StepWithDebug(cpu, null).IsOk);  // no #DB between MOV SS and the next instruction
        Assert.Equal(0x4002ul, cpu.Rip);
        AssertDb(_engine.StepWithDebug(cpu, null));
        Assert.Equal(0x4003ul, cpu.Rip);
    }

    [Fact]
    public void Engine_run_delivers_single_steps_through_its_fast_path_entry()
    {
        var cpu = Protected32();
        cpu.Rflags |= CpuState.FlagTf;
        _mem.Write(0x4000, Convert.FromHexString("404040"));
        var r = _engine.Run(cpu, null, 100, out _);
        AssertDb(r);
        Assert.Equal(0x3001ul, cpu.Gpr[0]); // one INC ran, then the trap
        Assert.Equal(0x4001ul, cpu.Rip);
    }

    [Fact]
    public void Faults_push_rf_set_and_an_instruction_breakpoint_pushes_it_clear()
    {
        foreach (var (vector, expectRf) in new[] { (Vector.GP, true), (Vector.UD, true), (Vector.DB, false) })
        {
            var cpu = Protected32();
            _mem.Write64(Idt + (ulong)vector * 8, 0x00008e0000085000ul); // 32-bit interrupt gate to 0x08:0x5000
            var r = _engine.DeliverException(cpu, new PendingException(vector, vector == Vector.GP, 0, 0));
            Assert.True(r.IsOk);
            ulong sp = cpu.Gpr[4];
            ulong flags = _mem.Read32(sp + (vector == Vector.GP ? 12ul : 8ul));
            Assert.Equal(expectRf, (flags & CpuState.FlagRf) != 0);
        }
        // An external interrupt pushes RF as it is (clear).
        var c = Protected32();
        _mem.Write64(Idt + 0x30 * 8, 0x00008e0000085000ul);
        Assert.True(_engine.Deliver(c, new PendingException(0x30, false, 0, 0)).IsOk);
        Assert.Equal(0u, _mem.Read32(c.Gpr[4] + 8) & (uint)CpuState.FlagRf);
    }

    /// <summary>
    /// SDM Vol. 3 17.3.1.1: RF is 1 in the image pushed for an interrupt arriving after any iteration of a REP string
    /// instruction but the last, and for a trap raised by such an iteration; after the last iteration it is pushed as it is.
    /// </summary>
    [Fact]
    public void Rf_is_pushed_for_events_between_REP_iterations_but_not_after_the_last()
    {
        var cpu = Protected32();
        cpu.Segs[(int)Seg.Ds] = cpu.Segs[(int)Seg.Es] = cpu.Segs[(int)Seg.Ss];
        _mem.Write64(Idt + 8 * 0x30, 0x5000 | (ulong)Code0 << 16 | 0x8eul << 40);
        _mem.Write64(Idt + 8 * Vector.DB, 0x5000 | (ulong)Code0 << 16 | 0x8eul << 40);
        _mem.Write(0x5000, new byte[] { 0xcf }); // iretd
        cpu.Gpr[1] = 10;      // ECX
        cpu.Gpr[7] = 0x20000; // EDI
        _engine.MaxRepIterations = 4;
        _mem.Write(0x4000, new byte[] { 0xf3, 0xaa }); // rep stosb
        // An instruction breakpoint on the REP itself: taken once, before the first iteration.
        cpu.Dr[0] = 0x4000;
        cpu.Dr[7] = 0x400 | 1;
        AssertDb(_engine.StepWithDebug(cpu, null));
        Assert.True(_engine.DeliverException(cpu, new PendingException(Vector.DB, false, 0, 0)).IsOk);
        Assert.Equal(0u, _mem.Read32(0x9000 - 4) & (uint)CpuState.FlagRf); // instruction breakpoint: RF as it was
        Assert.True(_engine.StepWithDebug(cpu, null).IsOk);                  // iretd
        cpu.Rflags |= CpuState.FlagRf;                                      // the handler returns with RF set, as Linux does
        Assert.True(_engine.StepWithDebug(cpu, null).IsOk);                  // iterations 1-4
        Assert.Equal(0x4000ul, cpu.Rip);
        Assert.Equal(6ul, cpu.Gpr[1]);
        Assert.True(_engine.Deliver(cpu, new PendingException(0x30, false, 0, 0)).IsOk);
        Assert.NotEqual(0u, _mem.Read32(0x9000 - 4) & (uint)CpuState.FlagRf); // interrupt between iterations: RF = 1
        Assert.True(_engine.StepWithDebug(cpu, null).IsOk);                    // iretd restores RF = 1
        Assert.True(_engine.StepWithDebug(cpu, null).IsOk);                    // iterations 5-8: no second breakpoint hit
        Assert.Equal(2ul, cpu.Gpr[1]);
        Assert.True(_engine.StepWithDebug(cpu, null).IsOk);                    // iterations 9-10: done
        Assert.Equal(0x4002ul, cpu.Rip);
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagRf);
        Assert.True(_engine.Deliver(cpu, new PendingException(0x30, false, 0, 0)).IsOk);
        Assert.Equal(0u, _mem.Read32(0x9000 - 4) & (uint)CpuState.FlagRf);    // after the last iteration: RF = 0

        // A data breakpoint trap raised by a middle iteration pushes RF = 1; by the last one, RF = 0.
        var c2 = Protected32();
        c2.Segs[(int)Seg.Ds] = c2.Segs[(int)Seg.Es] = c2.Segs[(int)Seg.Ss];
        _engine.MaxRepIterations = 1 << 20;
        c2.Gpr[1] = 3;
        c2.Gpr[7] = 0x20000;
        c2.Dr[1] = 0x20001;
        c2.Dr[7] = 0x400 | 1ul << 2 /* L1 */ | 1ul << 20 /* RW1 = write */;
        Assert.True(_engine.StepWithDebug(c2, null).IsOk);    // iteration 1 writes 0x20000
        AssertDb(_engine.StepWithDebug(c2, null));           // iteration 2 hits DR1
        Assert.Equal(1ul, c2.Gpr[1]);
        Assert.Equal(0x4000ul, c2.Rip);
        Assert.True(_engine.DeliverException(c2, new PendingException(Vector.DB, false, 0, 0)).IsOk);
        Assert.NotEqual(0u, _mem.Read32(0x9000 - 4) & (uint)CpuState.FlagRf);
        var c3 = Protected32();
        c3.Segs[(int)Seg.Ds] = c3.Segs[(int)Seg.Es] = c3.Segs[(int)Seg.Ss];
        c3.Gpr[1] = 2;
        c3.Gpr[7] = 0x20000;
        c3.Dr[1] = 0x20001;
        c3.Dr[7] = c2.Dr[7];
        Assert.True(_engine.StepWithDebug(c3, null).IsOk);
        AssertDb(_engine.StepWithDebug(c3, null));           // the last iteration hits DR1
        Assert.Equal(0x4002ul, c3.Rip);
        Assert.True(_engine.DeliverException(c3, new PendingException(Vector.DB, false, 0, 0)).IsOk);
        Assert.Equal(0u, _mem.Read32(0x9000 - 4) & (uint)CpuState.FlagRf);
    }
}
