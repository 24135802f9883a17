// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.X86;

/// <summary>
/// Virtual-8086 mode on the software CPU (SDM Vol. 3 chapter 20; Vol. 2 IRET RETURN-TO-VIRTUAL-8086-MODE and INT n
/// INTERRUPT-FROM-VIRTUAL-8086-MODE): entered by IRETD from ring 0, left by interrupts and exceptions through ring-0 gates.
/// </summary>
public class Virtual8086Tests
{
    private const ulong Gdt = 0x500, Idt = 0x1000, Tss = 0x3000, Ring0Code = 0x4000, Ring0Stack = 0x20000;
    private const ushort Code0 = 0x08, Data0 = 0x10, Code3 = 0x18, Data3 = 0x20, Tss32 = 0x28;
    private const ushort V86Cs = 0x0800, V86Ss = 0x0900, V86Ds = 0x1234, V86Es = 0x2345, V86Fs = 0x3456, V86Gs = 0x4567;
    private const uint V86Esp = 0xfff0, V86Ip = 0x0010;
    private readonly TestMemory _mem = new(4 << 20);
    private readonly InstructionEngine _engine;

    public Virtual8086Tests()
    {
        _engine = new InstructionEngine(_mem);
        _mem.Write64(Gdt + Code0, 0x00cf9b000000ffff);
        _mem.Write64(Gdt + Data0, 0x00cf93000000ffff);
        _mem.Write64(Gdt + Code3, 0x00cffb000000ffff);
        _mem.Write64(Gdt + Data3, 0x00cff3000000ffff);
        _mem.Write64(Gdt + Tss32, 0x00008b0030000000 | 0x67 + 0x2000); // limit covers the I/O bitmap
        _mem.Write32(Tss + 4, (uint)Ring0Stack); // ESP0
        _mem.Write32(Tss + 8, Data0);             // SS0
        _mem.Write32(Tss + 0x64, 0x68u << 16);    // I/O map base 0x68 (no redirection bitmap room below it)
    }

    private void Gate32(int vector, ushort sel, uint offset, int dpl, uint type = 0xe)
        => _mem.Write64(Idt + 8 * (ulong)vector, (offset & 0xffff) | (ulong)sel << 16 | (ulong)(0x80 | dpl << 5 | (int)type) << 40 | (ulong)(offset >> 16) << 48);

    /// <summary>A ring-0 flat 32-bit CPU at <see cref="Ring0Code"/> whose code pushes the v86 frame and executes IRETD.</summary>
    private CpuState EnterV86(uint eflags, params byte[] v86Code)
    {
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x2f, 0);
        cpu.Idtr = new SegmentDescriptor(Idt, 0x7ff, 0);
        cpu.Tr = new SegmentRegister(Tss32, new SegmentDescriptor(Tss, 0x67 + 0x2000, 0x8b));
        cpu.Rip = Ring0Code;
        cpu.Gpr[4] = 0x9000;
        cpu.Rflags = 2;
        var code = new List<byte>();
        foreach (uint v in new[] { V86Gs, V86Fs, V86Ds, V86Es, V86Ss, V86Esp, eflags, V86Cs, V86Ip })
        {
            code.Add(0x68); // push imm32
            code.AddRange(BitConverter.GetBytes(v));
        }
        code.Add(0xcf); // iretd
        _mem.Write(Ring0Code, code.ToArray());
        _mem.Write(((ulong)V86Cs << 4) + V86Ip, v86Code);
        for (int k = 0; k < 10; k++) Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);
        return cpu;
    }

    /// <summary>Steps until HLT, delivering every exception the way the soft vCPU does.</summary>
    private void RunToHalt(CpuState cpu, int max = 100)
    {
        for (int k = 0; k < max; k++)
        {
            var r = _engine.Step(cpu);
            if (r.Status == StepStatus.Halt) return;
            if (r.Status == StepStatus.Exception) { Assert.Equal(StepStatus.Ok, _engine.DeliverException(cpu, r.Exception).Status); continue; }
            Assert.Equal(StepStatus.Ok, r.Status);
        }
        Assert.Fail("no HLT");
    }

    private uint[] Frame(int slots) => Enumerable.Range(0, slots).Select(k => _mem.Read32(Ring0Stack - 4 * (ulong)slots + 4 * (ulong)k)).ToArray();

    private static void AssertV86Segments(CpuState cpu)
    {
        foreach (var (s, sel) in new[] { (Seg.Cs, V86Cs), (Seg.Ss, V86Ss), (Seg.Ds, V86Ds), (Seg.Es, V86Es), (Seg.Fs, V86Fs), (Seg.Gs, V86Gs) })
        {
            Assert.Equal(sel, cpu.Segs[(int)s].Selector);
            Assert.Equal((ulong)sel << 4, cpu.Segs[(int)s].Descriptor.Base);
            Assert.Equal(0xffffu, cpu.Segs[(int)s].Descriptor.Limit);
        }
    }

    [Fact]
    public void Iretd_enters_v86_mode_and_int_and_GP_return_to_ring0_with_the_SDM_frame()
    {
        const uint flags = 0x2 | 0x200 /* IF */ | 0x3000 /* IOPL 3 */ | 0x20000 /* VM */ | 0x1 /* CF */;
        _mem.Write(((ulong)V86Ds << 4), new byte[] { 0xef, 0xbe });
        Gate32(0x21, Code0, 0x5000, 3);
        Gate32(13, Code0, 0x6000, 0);
        _mem.Write(0x5000, new byte[] { 0xf4, 0xcf }); // hlt; iretd
        _mem.Write(0x6000, new byte[] { 0xf4 });
        var cpu = EnterV86(flags,
            0xa1, 0x00, 0x00,       // mov ax, [0]        (DS base 0x12340)
            0x8c, 0xdb,             // mov bx, ds
            0xcd, 0x21,             // int 0x21           (IOPL 3: to the ring-0 handler)
            0x8e, 0xc3,             // mov es, bx         (after IRETD back)
            0xa1, 0xff, 0xff);      // mov ax, [0xffff]   (word beyond the 64 KiB limit: #GP(0))
        Assert.Equal(CpuMode.Virtual8086, cpu.Mode);
        Assert.Equal(3, cpu.Cpl);
        Assert.Equal(V86Ip, (uint)cpu.Rip);
        Assert.Equal(V86Esp, (uint)cpu.Gpr[4]);
        Assert.Equal(flags, (uint)cpu.Rflags);
        AssertV86Segments(cpu);

        RunToHalt(cpu);
        Assert.Equal(0xbeeful, cpu.Gpr[0] & 0xffff);
        Assert.Equal((ulong)V86Ds, cpu.Gpr[3] & 0xffff);
        Assert.Equal(0x5001ul, cpu.Rip);
        Assert.Equal(CpuMode.Protected32, cpu.Mode);
        Assert.Equal(Code0, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(Data0, cpu.Segs[(int)Seg.Ss].Selector);
        Assert.Equal(Ring0Stack - 36, cpu.Gpr[4]);
        // EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS (lowest address first).
        Assert.Equal(new uint[] { V86Ip + 7, V86Cs, flags, V86Esp, V86Ss, V86Es, V86Ds, V86Fs, V86Gs }, Frame(9));
        foreach (var s in new[] { Seg.Ds, Seg.Es, Seg.Fs, Seg.Gs }) Assert.Equal(0, cpu.Segs[(int)s].Selector);
        Assert.Equal(0ul, cpu.Rflags & (CpuState.FlagVm | CpuState.FlagIf | CpuState.FlagTf | CpuState.FlagNt | CpuState.FlagRf));

        // IRETD from the handler returns to v86 mode; the next fault is #GP(0) with an error code and RF in the image.
        RunToHalt(cpu);
        Assert.Equal(0x6001ul, cpu.Rip);
        Assert.Equal(Ring0Stack - 40, cpu.Gpr[4]);
        Assert.Equal(new uint[] { 0, V86Ip + 9, V86Cs, flags | 0x10000 /* RF */, V86Esp, V86Ss, V86Ds /* ES = BX */, V86Ds, V86Fs, V86Gs }, Frame(10));
    }

    [Fact]
    public void IOPL_sensitive_instructions_fault_below_IOPL_3_and_INT3_goes_to_the_ring0_gate()
    {
        const uint flags = 0x2 | 0x20000; // VM, IOPL 0, IF 0
        Gate32(13, Code0, 0x6000, 0);
        Gate32(3, Code0, 0x5000, 3);
        _mem.Write(0x6000, new byte[] { 0xf4 });
        _mem.Write(0x5000, new byte[] { 0xf4 });
        foreach (var insn in new byte[][] { [0xfa], [0xfb], [0x9c], [0x9d], [0xcd, 0x21], [0xcf], [0x66, 0x9c] })
        {
            var cpu = EnterV86(flags, insn);
            RunToHalt(cpu);
            Assert.Equal(0x6001ul, cpu.Rip);
            Assert.Equal(new uint[] { 0, V86Ip, V86Cs, flags | 0x10000 }, Frame(10)[..4]);
        }
        // IN/OUT ignore IOPL in v86 mode and use the TSS I/O bitmap: port 0x80 allowed (bit clear), 0x81 denied.
        _mem.Write(Tss + 0x68 + 0x10, new byte[] { 0x02 });
        var c2 = EnterV86(flags, 0xe6, 0x80, 0xe6, 0x81);
        RunToHalt(c2);
        Assert.Equal(new uint[] { 0, V86Ip + 2 }, Frame(10)[..2]);
        // INT3 is not IOPL-sensitive: it reaches the DPL-3 gate with no error code.
        var c3 = EnterV86(flags, 0xcc);
        RunToHalt(c3);
        Assert.Equal(0x5001ul, c3.Rip);
        Assert.Equal(new uint[] { V86Ip + 1, V86Cs, flags }, Frame(9)[..3]);
    }

    [Fact]
    public void A_gate_to_a_non_ring0_or_conforming_segment_is_GP_with_its_selector()
    {
        const uint flags = 0x2 | 0x3000 | 0x20000;
        Gate32(0x21, Code3, 0x5000, 3);
        var cpu = EnterV86(flags, 0xcd, 0x21);
        var r = _engine.Step(cpu);
        Assert.Equal(StepStatus.Exception, r.Status);
        Assert.Equal(new PendingException(Vector.GP, true, Code3, 0), r.Exception);
        Assert.Equal(CpuMode.Virtual8086, cpu.Mode);
        // A software INT through a DPL-0 gate is #GP(vector × 8 + 2).
        Gate32(0x22, Code0, 0x5000, 0);
        _mem.Write(((ulong)V86Cs << 4) + V86Ip, new byte[] { 0xcd, 0x22 });
        r = _engine.Step(cpu);
        Assert.Equal(new PendingException(Vector.GP, true, 0x22 * 8 + 2, 0), r.Exception);
    }

    [Fact]
    public void VME_redirects_INT_n_through_the_8086_IVT_and_uses_VIF_for_CLI_STI_and_IRET()
    {
        const uint flags = 0x2 | 0x20000 | 0x80000; // VM, IOPL 0, VIF
        // I/O map base 0x88: the redirection bitmap is TSS+0x68..0x87; vector 0x21 is redirected (bit clear), 0x22 is not.
        _mem.Write32(Tss + 0x64, 0x88u << 16);
        _mem.Write(Tss + 0x68 + (0x22 >> 3), new byte[] { 1 << (0x22 & 7) });
        _mem.Write32(0x21 * 4, 0x0700_0020); // IVT[0x21] = 0700:0020
        Gate32(13, Code0, 0x6000, 0);
        _mem.Write(0x6000, new byte[] { 0xf4 });
        _mem.Write(0x7020, new byte[] { 0xfb, 0xcf }); // sti; iret (16-bit)
        var cpu = EnterV86(flags, 0xcd, 0x21, 0xfa, 0xcd, 0x22);
        cpu.Cr4 |= CpuState.Cr4Vme;
        Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);          // int 0x21: redirected
        Assert.Equal(0x0700, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal(0x20ul, cpu.Rip);
        Assert.Equal(V86Esp - 6, (uint)cpu.Gpr[4]);
        ulong sp = ((ulong)V86Ss << 4) + V86Esp - 6;
        // IP, CS, FLAGS: the image shows IOPL 3 and VIF as IF; VIF is then cleared.
        Assert.Equal(new uint[] { V86Ip + 2, V86Cs, (flags & 0xffff) | 0x3000 | 0x200 },
            new[] { _mem.Read32(sp) & 0xffff, _mem.Read32(sp + 2) & 0xffff, _mem.Read32(sp + 4) & 0xffff });
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagVif);
        Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);          // sti: sets VIF
        Assert.NotEqual(0ul, cpu.Rflags & CpuState.FlagVif);
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagIf);
        Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);          // iret: back, VIF from the popped IF
        Assert.Equal(V86Ip + 2, (uint)cpu.Rip);
        Assert.Equal(V86Cs, cpu.Segs[(int)Seg.Cs].Selector);
        Assert.Equal((ulong)flags, cpu.Rflags);
        Assert.Equal(StepStatus.Ok, _engine.Step(cpu).Status);          // cli: clears VIF
        Assert.Equal(0ul, cpu.Rflags & CpuState.FlagVif);
        var r = _engine.Step(cpu);                                      // int 0x22: bit set, IOPL < 3: #GP(0)
        Assert.Equal(new PendingException(Vector.GP, true, 0, 0), r.Exception);
    }

    [Theory]
    [InlineData("x86-64", false)]
    [InlineData("max", true)]
    public void CR4_VME_is_writable_exactly_when_CPUID_reports_VME(string model, bool vme)
    {
        var m = CpuModel.Parse(null, model, null);
        var cpuid = new MinimalCpuidModel { Model = m };
        var engine = new InstructionEngine(_mem) { Model = m, Cpuid = cpuid };
        Assert.Equal(vme, (cpuid.Query(new CpuState(), 1, 0).Edx & 2) != 0);
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Rip = 0x4000;
        cpu.Gpr[0] = CpuState.Cr4Vme;
        _mem.Write(0x4000, new byte[] { 0x0f, 0x22, 0xe0 }); // mov cr4, eax
        var r = engine.Step(cpu);
        Assert.Equal(vme ? StepStatus.Ok : StepStatus.Exception, r.Status);
        Assert.Equal(vme ? CpuState.Cr4Vme : 0, cpu.Cr4);
    }
}
