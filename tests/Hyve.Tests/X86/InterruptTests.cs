// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.X86;

/// <summary>INT n / IRET and event delivery through the IVT and IDT (SDM Vol. 3 6.10-6.14, 20.1.4).</summary>
public class InterruptTests
{
    private const ulong Gdt = 0x500, Idt = 0x1000, Tss = 0x3000;
    private const ushort Code0 = 0x08, Data0 = 0x10, Code3 = 0x18, Data3 = 0x20, Tss32 = 0x28, Code64 = 0x30, Tss64 = 0x38;
    private readonly TestMemory _mem = new(4 << 20);
    private readonly InstructionEngine _engine;

    public InterruptTests()
    {
        _engine = new InstructionEngine(_mem);
        _mem.Write64(Gdt + Code0, 0x00cf9b000000ffff);
        _mem.Write64(Gdt + Data0, 0x00cf93000000ffff);
        _mem.Write64(Gdt + Code3, 0x00cffb000000ffff);
        _mem.Write64(Gdt + Data3, 0x00cff3000000ffff);
        _mem.Write64(Gdt + Tss32, 0x00008b0030000067);
        _mem.Write64(Gdt + Code64, 0x00af9b000000ffff);
        _mem.Write64(Gdt + Tss64, 0x00008b0030000067);
        _mem.Write64(Gdt + Tss64 + 8, 0);
    }

    /// <summary>A 32-bit interrupt (0xE) or trap (0xF) gate.</summary>
    private void Gate32(int vector, ushort sel, uint offset, int dpl, uint type = 0xe)
        => _mem.Write64(Idt + 8 * (ulong)vector, (offset & 0xffff) | (ulong)sel << 16 | (ulong)(0x80 | dpl << 5 | (int)type) << 40 | (ulong)(offset >> 16) << 48);

    private void Gate64(int vector, ushort sel, ulong offset, int dpl, int ist = 0)
    {
        _mem.Write64(Idt + 16 * (ulong)vector, (offset & 0xffff) | (ulong)sel << 16 | (ulong)ist << 32 | (ulong)(0x8e | dpl << 5) << 40 | ((offset >> 16) & 0xffff) << 48);
        _mem.Write64(Idt + 16 * (ulong)vector + 8, offset >> 32);
    }

    private CpuState Protected32(int cpl)
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x47, 0);
        cpu.Idtr = new SegmentDescriptor(Idt, 0x7ff, 0);
        cpu.Tr = new SegmentRegister(Tss32, new SegmentDescriptor(Tss, 0x67, 0x8b));
        if (cpl == 3)
        {
            cpu.Segs[(int)Seg.Cs] = new SegmentRegister(Code3 | 3, new SegmentDescriptor(0, 0xffffffff, 0xc0fb));
            var d3 = new SegmentRegister(Data3 | 3, new SegmentDescriptor(0, 0xffffffff, 0xc0f3));
            cpu.Segs[(int)Seg.Ss] = d3; cpu.Segs[(int)Seg.Es] = d3; cpu.Segs[(int)Seg.Fs] = d3; cpu.Segs[(int)Seg.Gs] = d3;
        }
        else
        {
            cpu.Segs[(int)Seg.Cs] = new SegmentRegister(Code0, new SegmentDescriptor(0, 0xffffffff, 0xc09b));
        }
        cpu.Rip = 0x4000;
        cpu.Gpr[4] = 0x9000;
        cpu.Rflags = 2 | CpuState.FlagIf;
        return cpu;
    }

    private StepResult Run(CpuState cpu, params byte[] code)
    {
        _mem.Write(cpu.Segs[(int)Seg.Cs].Descriptor.Base + cpu.Rip, code);
        return _engine.Step(cpu);
    }

    [Fact]
    public void Real_mode_int_goes_through_the_IVT_and_iret_returns()
    {
        var cpu = new CpuState();
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
        cpu.Rip = 0x7c00;
        cpu.Gpr[4] = 0x7000;
        cpu.Rflags = 2 | CpuState.FlagIf | CpuState.FlagCf;
        _mem.Write32(0x10 * 4, 0xf000_1234);
        Assert.True(Run(cpu, 0xcd, 0x10).IsOk); // int 0x10
        Assert.Equal(0xf000, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0xf0000ul, cpu.Segs[(int)Seg.Cs].Descriptor.Base);
        Assert.Equal(0x1234ul, cpu.Rip);
        Assert.Equal(0x6ffaul, cpu.Gpr[4]);
        Assert.Equal(0x7c02u, _mem.Read32(0x6ffa) & 0xffff);                             // IP
        Assert.Equal(0u, _mem.Read32(0x6ffc) & 0xffff);                                  // CS
        Assert.Equal((uint)(2 | CpuState.FlagIf | CpuState.FlagCf), _mem.Read32(0x6ffe) & 0xffff); // FLAGS
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagIf);
        Assert.True(Run(cpu, 0xcf).IsOk); // iret
        Assert.Equal(0x7c02ul, cpu.Rip);
        Assert.Equal(0, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x7000ul, cpu.Gpr[4]);
        Assert.Equal(2 | CpuState.FlagIf | CpuState.FlagCf, cpu.Rflags);
    }

    [Fact]
    public void Same_privilege_interrupt_gate_clears_IF_and_trap_gate_keeps_it()
    {
        var cpu = Protected32(0);
        Gate32(0x40, Code0, 0x5000, 0);
        Gate32(0x41, Code0, 0x6000, 0, 0xf);
        Assert.True(Run(cpu, 0xcd, 0x40).IsOk);
        Assert.Equal(0x5000ul, cpu.Rip);
        Assert.Equal(0x8ff4ul, cpu.Gpr[4]);
        Assert.Equal(0x4002u, _mem.Read32(0x8ff4));
        Assert.Equal((uint)Code0, _mem.Read32(0x8ff8));
        Assert.Equal((uint)(2 | CpuState.FlagIf), _mem.Read32(0x8ffc));
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagIf);
        Assert.True(Run(cpu, 0xcf).IsOk); // iretd
        Assert.Equal(0x4002ul, cpu.Rip);
        Assert.Equal(0x9000ul, cpu.Gpr[4]);
        Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagIf);
        Assert.True(Run(cpu, 0xcd, 0x41).IsOk);
        Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagIf);
    }

    [Fact]
    public void Int_from_CPL3_switches_to_the_TSS_stack_and_iret_returns_to_user()
    {
        var cpu = Protected32(3);
        _mem.Write32(Tss + 4, 0x20000); // ESP0
        _mem.Write32(Tss + 8, Data0);   // SS0
        Gate32(0x80, Code0, 0x5000, 3);
        Assert.True(Run(cpu, 0xcd, 0x80).IsOk);
        Assert.Equal(0, cpu.Cpl);
        Assert.Equal(Code0, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(Data0, cpu.Segs[(int)Seg.Ss].Selector);
        Assert.Equal(0x20000ul - 20, cpu.Gpr[4]);
        Assert.Equal(new uint[] { 0x4002, Code3 | 3, (uint)(2 | CpuState.FlagIf), 0x9000, Data3 | 3 },
            new[] { _mem.Read32(0x20000 - 20), _mem.Read32(0x20000 - 16), _mem.Read32(0x20000 - 12), _mem.Read32(0x20000 - 8), _mem.Read32(0x20000 - 4) });
        // The kernel loads DPL-0 DS, then IRET back to CPL 3: DS is nulled, ES (DPL 3) kept.
        cpu.Segs[(int)Seg.Ds] = new SegmentRegister(Data0, new SegmentDescriptor(0, 0xffffffff, 0xc093));
        Assert.True(Run(cpu, 0xcf).IsOk);
        Assert.Equal(3, cpu.Cpl);
        Assert.Equal(0x4002ul, cpu.Rip);
        Assert.Equal(0x9000ul, cpu.Gpr[4]);
        Assert.Equal(Data3 | 3, cpu.Segs[(int)Seg.Ss].Selector);
        Assert.Equal(0, cpu.Segs[(int)Seg.Ds].Selector);
        Assert.NotEqual(0u, cpu.Segs[(int)Seg.Ds].Descriptor.Access & SegmentDescriptor.Unusable);
        Assert.Equal(Data3 | 3, cpu.Segs[(int)Seg.Es].Selector);
    }

    [Fact]
    public void Software_int_through_a_DPL0_gate_from_CPL3_is_GP_with_the_IDT_error_code()
    {
        var cpu = Protected32(3);
        Gate32(0x0d, Code0, 0x5000, 0);
        var r = Run(cpu, 0xcd, 0x0d);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(Vector.GP, r.Exception.Vector);
        Assert.Equal(0x0du * 8 + 2, r.Exception.ErrorCode);
        Assert.Equal(0x4000ul, cpu.Rip);
        // The same vector delivered as an exception ignores the gate DPL.
        _mem.Write32(Tss + 4, 0x20000); _mem.Write32(Tss + 8, Data0);
        Assert.True(_engine.Deliver(cpu, new PendingException(Vector.GP, true, 0x1234, 0)).IsOk);
        Assert.Equal(0x5000ul, cpu.Rip);
        Assert.Equal(0x1234u, _mem.Read32(0x20000 - 24)); // error code on top of the frame
    }

    [Fact]
    public void Delivery_faults_use_EXT_and_the_IDT_bit()
    {
        var cpu = Protected32(0);
        cpu.Idtr = new SegmentDescriptor(Idt, 8 * 0x20 - 1, 0);
        var r = _engine.Deliver(cpu, new PendingException(0x20, false, 0, 0)); // external interrupt beyond the IDT limit
        Assert.Equal(Vector.GP, r.Exception.Vector);
        Assert.Equal(0x20u * 8 + 3, r.Exception.ErrorCode);
        _mem.Write64(Idt + 8 * 6, 0); // an empty entry is not a gate type: #GP, checked before presence
        r = _engine.Deliver(cpu, PendingException.Ud);
        Assert.Equal(Vector.GP, r.Exception.Vector);
        Assert.Equal(6u * 8 + 3, r.Exception.ErrorCode);
        _mem.Write64(Idt + 8 * 6, 0x00000e0000085000); // interrupt gate with P=0
        r = _engine.Deliver(cpu, PendingException.Ud);
        Assert.Equal(Vector.NP, r.Exception.Vector);
        Assert.Equal(6u * 8 + 3, r.Exception.ErrorCode);
        Assert.Equal(0x9000ul, cpu.Gpr[4]);
    }

    [Fact]
    public void Long_mode_page_fault_delivery_uses_IST_aligned_frame_and_iretq_returns()
    {
        _mem.Write64(0x10000, 0x11000 | 3);
        _mem.Write64(0x11000, 0x12000 | 3);
        _mem.Write64(0x12000, 0x83);
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(Code64, new SegmentDescriptor(0, 0xffffffff, 0xa09b));
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x47, 0);
        cpu.Idtr = new SegmentDescriptor(Idt, 0xfff, 0);
        cpu.Tr = new SegmentRegister(Tss64, new SegmentDescriptor(Tss, 0x67, 0x8b));
        _mem.Write64(Tss + 0x24 + 8, 0x30008); // IST2, deliberately misaligned
        Gate64(14, Code64, 0x7000, 0, ist: 2);
        cpu.Rip = 0x4000;
        cpu.Gpr[4] = 0x9000;
        cpu.Rflags = 2 | CpuState.FlagIf;
        Assert.True(_engine.Deliver(cpu, PendingException.PageFault(2, 0xdead000)).IsOk);
        Assert.Equal(0xdead000ul, cpu.Cr2);
        Assert.Equal(0x7000ul, cpu.Rip);
        Assert.Equal(0x30000ul - 48, cpu.Gpr[4]);
        Assert.Equal(new ulong[] { 2, 0x4000, Code64, 2 | CpuState.FlagIf, 0x9000, 0x10 },
            new[] { _mem.Read64(0x30000 - 48), _mem.Read64(0x30000 - 40), _mem.Read64(0x30000 - 32), _mem.Read64(0x30000 - 24), _mem.Read64(0x30000 - 16), _mem.Read64(0x30000 - 8) });
        cpu.Gpr[4] += 8; // the handler drops the error code
        Assert.True(Run(cpu, 0x48, 0xcf).IsOk); // iretq
        Assert.Equal(0x4000ul, cpu.Rip);
        Assert.Equal(0x9000ul, cpu.Gpr[4]);
        Assert.Equal(0x10, cpu.Segs[(int)Seg.Ss].Selector);
        Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagIf);
        Assert.Equal(CpuMode.Long64, cpu.Mode);
    }

    [Fact]
    public void Far_call_through_a_call_gate_to_ring0_copies_parameters_and_retf_returns()
    {
        var cpu = Protected32(3);
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x4f, 0);
        // Call gate at 0x48: 32-bit, DPL 3, two parameters, to Code0:0x5000.
        _mem.Write64(Gdt + 0x48, 0x5000 | (ulong)Code0 << 16 | 2ul << 32 | 0xecul << 40);
        _mem.Write32(Tss + 4, 0x20000); // ESP0
        _mem.Write32(Tss + 8, Data0);   // SS0
        _mem.Write32(0x9000, 0x1111);   // parameters on the caller's stack
        _mem.Write32(0x9004, 0x2222);
        Assert.True(Run(cpu, 0x9a, 0, 0, 0, 0, 0x4b, 0x00).IsOk); // call 0x4b:0 (the offset is ignored)
        Assert.Equal(0, cpu.Cpl);
        Assert.Equal(0x5000ul, cpu.Rip);
        Assert.Equal(Code0, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x20000ul - 24, cpu.Gpr[4]);
        Assert.Equal(new uint[] { 0x4007, Code3 | 3, 0x1111, 0x2222, 0x9000, Data3 | 3 },
            Enumerable.Range(0, 6).Select(k => _mem.Read32(0x20000 - 24 + 4 * (ulong)k)).ToArray());
        Assert.True(Run(cpu, 0xca, 0x08, 0x00).IsOk); // retf 8
        Assert.Equal(3, cpu.Cpl);
        Assert.Equal(0x4007ul, cpu.Rip);
        Assert.Equal(0x9008ul, cpu.Gpr[4]);
        Assert.Equal(Data3 | 3, cpu.Segs[(int)Seg.Ss].Selector);
        // A gate with DPL 0 is out of reach from CPL 3: #GP(gate selector).
        _mem.Write64(Gdt + 0x48, 0x5000 | (ulong)Code0 << 16 | 0x8cul << 40);
        var r = Run(cpu, 0x9a, 0, 0, 0, 0, 0x4b, 0x00);
        Assert.Equal(Vector.GP, r.Exception.Vector);
        Assert.Equal(0x48u, r.Exception.ErrorCode);
    }

    [Fact]
    public void Far_jmp_through_a_64_bit_call_gate_keeps_the_privilege_level()
    {
        _mem.Write64(0x10000, 0x11000 | 3);
        _mem.Write64(0x11000, 0x12000 | 3);
        _mem.Write64(0x12000, 0x83);
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        cpu.Segs[(int)Seg.Cs] = new SegmentRegister(Code0, new SegmentDescriptor(0, 0xffffffff, 0xc09b)); // compatibility mode
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x5f, 0);
        _mem.Write64(Gdt + 0x48, 0x6000 | (ulong)Code64 << 16 | 0x8cul << 40);
        _mem.Write64(Gdt + 0x50, 0);
        cpu.Rip = 0x4000;
        Assert.True(Run(cpu, 0xea, 0, 0, 0, 0, 0x48, 0x00).IsOk);
        Assert.Equal(CpuMode.Long64, cpu.Mode);
        Assert.Equal(0x6000ul, cpu.Rip);
        Assert.Equal(Code64, cpu.Segs[(int)Seg.Cs].Selector);
    }
}
