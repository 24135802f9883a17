// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.X86;

/// <summary>Hardware task switches on the software CPU (SDM Vol. 3 chapter 7; Vol. 2 JMP, CALL, INT n, IRET).</summary>
public class TaskSwitchTests
{
    private const ulong Gdt = 0x500, Idt = 0x1000, TssA = 0x3000, TssB = 0x3100, TssC = 0x3200, Ldt = 0x3400;
    private const ushort Code0 = 0x08, Data0 = 0x10, SelA = 0x28, SelB = 0x30, GateB = 0x38, SelC = 0x40, SelLdt = 0x48, SelSmall = 0x50;
    private readonly TestMemory _mem = new(4 << 20);
    private readonly InstructionEngine _engine;

    public TaskSwitchTests()
    {
        _engine = new InstructionEngine(_mem);
        _mem.Write64(Gdt + Code0, 0x00cf9b000000ffff);
        _mem.Write64(Gdt + Data0, 0x00cf93000000ffff);
        _mem.Write64(Gdt + SelA, TssDescriptor(TssA, 0x67, busy: true));
        _mem.Write64(Gdt + SelB, TssDescriptor(TssB, 0x67, busy: false));
        _mem.Write64(Gdt + GateB, (ulong)SelB << 16 | 0x85ul << 40); // task gate, DPL 0
        _mem.Write64(Gdt + SelC, TssDescriptor(TssC, 0x67, busy: false));
        _mem.Write64(Gdt + SelLdt, 0x0000820000000000 | (Ldt & 0xffffff) << 16 | 0x17);
        _mem.Write64(Gdt + SelSmall, TssDescriptor(0x3300, 0x50, busy: false));
        WriteTss(TssB, eip: 0x6000, esp: 0x18000, eax: 0xb0b0b0b0, ldt: SelLdt);
        WriteTss(TssC, eip: 0x7000, esp: 0x19000, eax: 0xc0c0c0c0, ldt: 0);
        _mem.Write(0x6000, new byte[] { 0xcf }); // task B: iretd (back through the link)
    }

    private static ulong TssDescriptor(ulong b, uint limit, bool busy)
        => (limit & 0xffff) | (b & 0xffffff) << 16 | (ulong)(busy ? 0x8b : 0x89) << 40 | (b >> 24) << 56;

    private void WriteTss(ulong at, uint eip, uint esp, uint eax, ushort ldt)
    {
        _mem.Write32(at + 0x20, eip);
        _mem.Write32(at + 0x24, 2);
        _mem.Write32(at + 0x28, eax);
        _mem.Write32(at + 0x38, esp);
        _mem.Write32(at + 0x4c, Code0);
        foreach (uint off in new uint[] { 0x48, 0x50, 0x54, 0x58, 0x5c }) _mem.Write32(at + off, Data0);
        _mem.Write32(at + 0x60, ldt);
    }

    private byte DescriptorType(ushort sel) => (byte)(_mem.Read32(Gdt + sel + 4) >> 8 & 0xf);

    private CpuState TaskA()
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x57, 0);
        cpu.Idtr = new SegmentDescriptor(Idt, 0x7ff, 0);
        cpu.Tr = new SegmentRegister(SelA, new SegmentDescriptor(TssA, 0x67, 0x8b));
        cpu.Rip = 0x4000;
        cpu.Gpr[0] = 0xa0a0a0a0;
        cpu.Gpr[3] = 0x12345678;
        cpu.Gpr[4] = 0x9000;
        cpu.Rflags = 2 | CpuState.FlagIf | CpuState.FlagCf;
        return cpu;
    }

    [Fact]
    public void Call_to_a_TSS_nests_and_iret_with_NT_returns_through_the_back_link()
    {
        var cpu = TaskA();
        _mem.Write(0x4000, new byte[] { 0x9a, 0, 0, 0, 0, (byte)SelB, 0 }); // call far SelB:0
        Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);
        Assert.Equal(SelB, cpu.Tr.Selector);
        Assert.Equal(0x6000ul, cpu.Rip);
        Assert.Equal(0xb0b0b0b0ul, cpu.Gpr[0]);
        Assert.Equal(0x18000ul, cpu.Gpr[4]);
        Assert.Equal(2 | CpuState.FlagNt, cpu.Rflags);
        Assert.NotEqual(0ul, cpu.Cr0 & CpuState.Cr0Ts);
        Assert.Equal(SelLdt, cpu.Ldtr.Selector);
        Assert.Equal(Ldt, cpu.Ldtr.Descriptor.Base);
        Assert.Equal(Code0, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(Data0, cpu.Segs[(int)Seg.Ss].Selector);
        Assert.Equal((uint)SelA, _mem.Read32(TssB) & 0xffff);          // back link
        Assert.Equal(0xb, DescriptorType(SelB));                        // new task busy
        Assert.Equal(0xb, DescriptorType(SelA));                        // the caller stays busy
        // The outgoing state in task A's TSS: EIP after the CALL, EFLAGS, EAX, EBX, ESP, CS, DS.
        Assert.Equal(new uint[] { 0x4007, (uint)(2 | CpuState.FlagIf | CpuState.FlagCf), 0xa0a0a0a0, 0x12345678, 0x9000, Code0, Data0 },
            new[] { _mem.Read32(TssA + 0x20), _mem.Read32(TssA + 0x24), _mem.Read32(TssA + 0x28), _mem.Read32(TssA + 0x34), _mem.Read32(TssA + 0x38), _mem.Read32(TssA + 0x4c), _mem.Read32(TssA + 0x54) });

        Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);         // iretd in task B
        Assert.Equal(SelA, cpu.Tr.Selector);
        Assert.Equal(0x4007ul, cpu.Rip);
        Assert.Equal(0xa0a0a0a0ul, cpu.Gpr[0]);
        Assert.Equal(0x9000ul, cpu.Gpr[4]);
        Assert.Equal(2 | CpuState.FlagIf | CpuState.FlagCf, cpu.Rflags);
        Assert.Equal(0, cpu.Ldtr.Selector);
        Assert.Equal(0x9, DescriptorType(SelB));                        // abandoned task no longer busy
        Assert.Equal(0xb, DescriptorType(SelA));
        Assert.Equal(0x6001u, _mem.Read32(TssB + 0x20));
        Assert.Equal(2u, _mem.Read32(TssB + 0x24));                      // saved with NT clear
    }

    [Fact]
    public void Jmp_through_a_task_gate_does_not_nest()
    {
        var cpu = TaskA();
        _mem.Write(0x4000, new byte[] { 0xea, 0, 0, 0, 0, (byte)GateB, 0 }); // jmp far GateB:0
        Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);
        Assert.Equal(SelB, cpu.Tr.Selector);
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagNt);
        Assert.Equal(0u, _mem.Read32(TssB) & 0xffff);                   // no back link
        Assert.Equal(0x9, DescriptorType(SelA));
        Assert.Equal(0xb, DescriptorType(SelB));
        // IRET without NT is an ordinary return; the busy target of a JMP is #GP(selector).
        var c2 = TaskA();
        c2.Tr = new SegmentRegister(SelC, new SegmentDescriptor(TssC, 0x67, 0x8b));
        _mem.Write(0x4000, new byte[] { 0xea, 0, 0, 0, 0, (byte)SelB, 0 });
        var r = _engine.Step(c2);
        Assert.Equal(new PendingException(Vector.GP, true, SelB, 0), r.Exception);
    }

    [Fact]
    public void Double_fault_through_a_task_gate_switches_to_the_handler_task_and_pushes_the_error_code()
    {
        var cpu = TaskA();
        _mem.Write64(Idt + 8 * 8, (ulong)SelC << 16 | 0x85ul << 40);
        cpu.Gpr[4] = 0; // the kernel stack is gone, as when Linux i386 takes a #DF
        Assert.Equal(StepStatus.Ok, _engine.DeliverException(cpu, new PendingException(8, true, 0, 0)).Status);
        Assert.Equal(SelC, cpu.Tr.Selector);
        Assert.Equal(0x7000ul, cpu.Rip);
        Assert.Equal(0x19000ul - 4, cpu.Gpr[4]);
        Assert.Equal(0u, _mem.Read32(0x19000 - 4));                     // error code on the new task's stack
        Assert.Equal(2 | CpuState.FlagNt, cpu.Rflags);
        Assert.Equal((uint)SelA, _mem.Read32(TssC) & 0xffff);
        Assert.Equal(0x4000u, _mem.Read32(TssA + 0x20));                 // the faulting instruction
        Assert.Equal(0u, _mem.Read32(TssA + 0x38));
    }

    [Fact]
    public void Task_switch_faults_carry_the_selector()
    {
        // A TSS below the minimum limit: #TS(selector).
        var cpu = TaskA();
        _mem.Write(0x4000, new byte[] { 0x9a, 0, 0, 0, 0, (byte)SelSmall, 0 });
        Assert.Equal(new PendingException(Vector.TS, true, SelSmall, 0), _engine.Step(cpu).Exception);
        Assert.Equal(SelA, cpu.Tr.Selector);
        // A new task whose CS names a data segment: #TS(CS selector), raised in the new task.
        _mem.Write32(TssB + 0x4c, Data0);
        _mem.Write(0x4000, new byte[] { 0x9a, 0, 0, 0, 0, (byte)SelB, 0 });
        Assert.Equal(new PendingException(Vector.TS, true, Data0, 0), _engine.Step(cpu).Exception);
        Assert.Equal(SelB, cpu.Tr.Selector);
        // IRET with NT whose back link is not busy: #TS(link).
        var c2 = TaskA();
        c2.Rflags |= CpuState.FlagNt;
        _mem.Write32(TssA, SelC);
        _mem.Write(0x4000, new byte[] { 0xcf });
        Assert.Equal(new PendingException(Vector.TS, true, SelC, 0), _engine.Step(c2).Exception);
        Assert.Equal(SelA, c2.Tr.Selector);
    }

    /// <summary>A task whose TSS EFLAGS has VM set starts in virtual-8086 mode with real-mode style segments.</summary>
    [Fact]
    public void A_task_switch_can_enter_virtual_8086_mode()
    {
        var cpu = TaskA();
        _mem.Write32(TssB + 0x24, 0x20002);     // EFLAGS: VM
        _mem.Write32(TssB + 0x20, 0x0010);      // IP
        _mem.Write32(TssB + 0x4c, 0x1000);      // CS
        _mem.Write32(TssB + 0x50, 0x2000);      // SS
        _mem.Write32(TssB + 0x54, 0x3000);      // DS
        _mem.Write(0x4000, new byte[] { 0xea, 0, 0, 0, 0, (byte)SelB, 0 }); // jmp far SelB:0
        Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);
        Assert.Equal(CpuMode.Virtual8086, cpu.Mode);
        Assert.Equal(3, cpu.Cpl);
        Assert.Equal(0x10000ul, cpu.Segs[(int)Seg.Cs].Descriptor.Base);
        Assert.Equal(0x30000ul, cpu.Segs[(int)Seg.Ds].Descriptor.Base);
        Assert.Equal(0xffffu, cpu.Segs[(int)Seg.Ss].Descriptor.Limit);
        Assert.Equal(0x10ul, cpu.Rip);
    }

    /// <summary>The T flag in the new TSS raises a #DB trap in the new task after the switch, with DR6.BT set.</summary>
    [Fact]
    public void The_TSS_T_flag_traps_into_the_new_task()
    {
        var cpu = TaskA();
        _mem.Write32(TssB + 0x64, 1);
        _mem.Write(0x4000, new byte[] { 0x9a, 0, 0, 0, 0, (byte)SelB, 0 });
        var r = _engine.Step(cpu);
        Assert.Equal(new PendingException(Vector.DB, false, 0, 0), r.Exception);
        Assert.Equal(SelB, cpu.Tr.Selector);
        Assert.Equal(0x6000ul, cpu.Rip);
        Assert.NotEqual(0ul, cpu.Dr[6] & 1ul << 15);
    }
}
