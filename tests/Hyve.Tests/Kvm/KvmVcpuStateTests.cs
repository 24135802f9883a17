// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Kvm;
using Hyve.Tests.State;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Hyve.Vmm.State;
using Hyve.X86;
using Xunit;
using R = Hyve.Vmm.Io.LapicRegisters;

namespace Hyve.Tests.Kvm;

/// <summary>
/// The conversions between KVM's vCPU state structures (kvm_regs, kvm_sregs, kvm_xsave, kvm_lapic_state,
/// kvm_vcpu_events, MSRs, mp_state) and Hyve's engine-neutral <see cref="VcpuState"/>: what lets a snapshot move
/// between KVM and the software CPU. KVM cannot run guests here, so the layouts are checked against api.rst directly.
/// </summary>
public class KvmVcpuStateTests
{
    private static VcpuState Sample()
    {
        var s = new VcpuState();
        var c = s.Cpu;
        for (int i = 0; i < 16; i++) c.Gpr[i] = 0x1111_0000ul * (ulong)(i + 1);
        c.Rip = 0xffff_ffff_8100_1234;
        c.Rflags = 0x246;
        c.Segs[(int)Seg.Cs] = new SegmentRegister(0x10, new SegmentDescriptor(0, 0xffff_ffff, 0xa09b));
        c.Segs[(int)Seg.Ss] = new SegmentRegister(0x18, new SegmentDescriptor(0, 0xffff_ffff, 0xc093));
        c.Segs[(int)Seg.Fs] = new SegmentRegister(0, new SegmentDescriptor(0x7f00_1234_5000, 0, 0x1_0000));
        c.Segs[(int)Seg.Gs] = new SegmentRegister(0, new SegmentDescriptor(0xffff_8880_0000_0000, 0xfffff, 0x1_0000));
        c.Tr = new SegmentRegister(0x40, new SegmentDescriptor(0xfffffe00_00003000, 0x4087, 0x8b));
        c.Ldtr = new SegmentRegister(0, new SegmentDescriptor(0, 0, 0x1_0082));
        c.Gdtr = new SegmentDescriptor(0xfffffe00_00001000, 0x7f, 0);
        c.Idtr = new SegmentDescriptor(0xfffffe00_00000000, 0xfff, 0);
        c.Cr0 = 0x8005_0033; c.Cr2 = 0x7f00_dead_b000; c.Cr3 = 0x1234_5000; c.Cr4 = 0x3506f0; c.Cr8 = 3;
        c.Efer = 0xd01;
        c.Dr[0] = 0x401000; c.Dr[6] = 0xffff0ff0; c.Dr[7] = 0x401;
        c.Star = 0x0023_0010_0000_0000; c.Lstar = 0xffff_ffff_8160_0080; c.Cstar = 0xffff_ffff_8160_1000; c.Sfmask = 0x47700;
        c.KernelGsBase = 0x7f00_aaaa_0000; c.SysenterCs = 0x10; c.SysenterEsp = 0xfffffe00_00003000; c.SysenterEip = 0xffffffff81601234;
        c.TscAux = 1; c.Pat = 0x0407050600070106;
        c.InterruptShadow = CpuState.ShadowSti;
        c.Fcw = 0x37f; c.Mxcsr = 0x1fa0;
        for (int i = 0; i < 16; i++) c.Xmm(0)[i] = (byte)(0xa0 + i);
        s.Xcr0 = 7;
        for (int i = 0; i < 16; i++) s.YmmHigh[i] = (byte)(0xb0 + i);
        s.Msrs[0x2ff] = 0xc06; // MTRRdefType
        s.Msrs[0x1a0] = 0x1;   // MISC_ENABLE
        s.Tsc = 0x1_2345_6789;
        s.TscHz = 2_400_000_000;
        s.Activity = VcpuActivity.Halted;
        s.NmiMasked = true;
        s.Exception = new PendingException(14, true, 2, c.Cr2); // a #PF pending with CR2 already set
        s.InjectedInterrupt = 0x31;
        return s;
    }

    [Fact]
    public void Neutral_state_survives_the_trip_through_KVM_structures()
    {
        var s = Sample();
        s.Lapic = LapicWithTimer().Save();
        var back = KvmVcpuState.FromNeutral(s).ToNeutral();
        Assert.Equal(StateCopy.Save(s).Data, StateCopy.Save(back).Data);
    }

    [Fact]
    public void KVM_structures_carry_each_field_where_api_rst_puts_it()
    {
        var k = KvmVcpuState.FromNeutral(Sample());
        Assert.Equal(0x1111_0000ul, k.Regs.Rax);
        Assert.Equal(0x1111_0000ul * 4, k.Regs.Rbx); // Hyve's GPRs are in encoding order (rax, rcx, rdx, rbx)
        Assert.Equal(0x1111_0000ul * 5, k.Regs.Rsp);
        Assert.Equal(0xffff_ffff_8100_1234ul, k.Regs.Rip);
        Assert.Equal(1, k.Sregs.Cs.L);
        Assert.Equal(11, k.Sregs.Cs.Type);
        Assert.Equal(1, k.Sregs.Fs.Unusable);
        Assert.Equal(0x7f00_1234_5000ul, k.Sregs.Fs.Base);
        Assert.Equal((ushort)0xfff, k.Sregs.Idt.Limit);
        Assert.Equal(3ul, k.Sregs.Cr8);
        // kvm_debugregs: db[0..3], dr6, dr7.
        Assert.Equal(0x401000ul, k.DebugRegs[0]);
        Assert.Equal(0xffff0ff0ul, k.DebugRegs[4]);
        Assert.Equal(0x401ul, k.DebugRegs[5]);
        // kvm_xsave: the FXSAVE image first (XMM0 at 160), XSTATE_BV at 512 with x87|SSE|AVX, YMM0's high half at 576.
        Assert.Equal(0xa0, k.Xsave[160]);
        Assert.Equal(0x1fa0u, BinaryPrimitives.ReadUInt32LittleEndian(k.Xsave.AsSpan(24)));
        Assert.Equal(7ul, BinaryPrimitives.ReadUInt64LittleEndian(k.Xsave.AsSpan(512)));
        Assert.Equal(0xb0, k.Xsave[576]);
        // MSRs by index: the SYSCALL ones, PAT, TSC and the ones only one engine models.
        Assert.Equal(0xffff_ffff_8160_0080ul, k.Msrs[0xc000_0082]);
        Assert.Equal(0x0407050600070106ul, k.Msrs[0x277]);
        Assert.Equal(0x1_2345_6789ul, k.Msrs[0x10]);
        Assert.Equal(0xc06ul, k.Msrs[0x2ff]);
        Assert.Equal(2_400_000L, k.TscKhz);
        // kvm_vcpu_events: exception {injected, nr, has_error_code, pending, error_code}, interrupt {injected, nr, soft,
        // shadow} at 8, nmi {injected, pending, masked} at 12, flags at 20.
        Assert.Equal([0, 14, 1, 1], k.Events[..4]);
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(k.Events.AsSpan(4)));
        Assert.Equal([1, 0x31, 0, CpuState.ShadowSti], k.Events[8..12]);
        Assert.Equal([0, 0, 1], k.Events[12..15]);
        Assert.Equal(KvmVcpuState.EventValidNmiPending | KvmVcpuState.EventValidShadow, BinaryPrimitives.ReadUInt32LittleEndian(k.Events.AsSpan(20)));
        Assert.Equal(3u, k.MpState); // KVM_MP_STATE_HALTED
    }

    [Fact]
    public void An_exception_KVM_already_injected_and_its_payload_are_read_back()
    {
        var k = KvmVcpuState.FromNeutral(new VcpuState());
        k.Events[0] = 1; k.Events[1] = 14; k.Events[2] = 1; k.Events[3] = 0;
        BinaryPrimitives.WriteUInt32LittleEndian(k.Events.AsSpan(4), 6);
        k.Events[55] = 1;
        BinaryPrimitives.WriteUInt64LittleEndian(k.Events.AsSpan(56), 0xdead_0000);
        k.MpState = 0; // runnable
        var s = k.ToNeutral();
        Assert.Equal(new PendingException(14, true, 6, 0xdead_0000), s.Exception);
        Assert.Equal(VcpuActivity.Running, s.Activity);
        k.MpState = 1; // uninitialized: an AP before its SIPI
        Assert.Equal(VcpuActivity.WaitingForSipi, k.ToNeutral().Activity);
    }

    private static Vlapic LapicWithTimer()
    {
        var clock = new ManualClock();
        var l = new Vlapic(2, false, clock, new LapicBus());
        l.MmioWrite(R.Svr, 4, 0x1ff);
        l.MmioWrite(R.Tpr, 4, 0x20);
        l.MmioWrite(R.LvtLint0, 4, 0x700);
        l.MmioWrite(R.TimerDivide, 4, 0xb); // divide by 1
        l.MmioWrite(R.LvtTimer, 4, 0x20000 | 0xec); // periodic, vector 0xec
        l.MmioWrite(R.TimerInitialCount, 4, 1_000_000);
        clock.Advance(250_000); // a quarter of the period at the 1 GHz bus
        return l;
    }

    [Fact]
    public void The_local_APIC_goes_to_KVMs_register_page_and_back_into_a_software_APIC()
    {
        var a = LapicWithTimer();
        var s = new VcpuState { Lapic = a.Save() };
        var k = KvmVcpuState.FromNeutral(s);
        // struct kvm_lapic_state: each register at its xAPIC offset.
        Assert.Equal(2u << 24, BinaryPrimitives.ReadUInt32LittleEndian(k.Lapic.AsSpan(R.Id)));
        Assert.Equal(0x20u, BinaryPrimitives.ReadUInt32LittleEndian(k.Lapic.AsSpan(R.Tpr)));
        Assert.Equal(0x1ffu, BinaryPrimitives.ReadUInt32LittleEndian(k.Lapic.AsSpan(R.Svr)));
        Assert.Equal(0x200ecu, BinaryPrimitives.ReadUInt32LittleEndian(k.Lapic.AsSpan(R.LvtTimer)));
        Assert.Equal(1_000_000u, BinaryPrimitives.ReadUInt32LittleEndian(k.Lapic.AsSpan(R.TimerInitialCount)));
        Assert.Equal(750_000u, BinaryPrimitives.ReadUInt32LittleEndian(k.Lapic.AsSpan(R.TimerCurrentCount)));
        Assert.Equal(s.Lapic.ApicBase, k.Sregs.ApicBase);

        var clock = new ManualClock();
        clock.Advance(9_999);
        var b = new Vlapic(2, false, clock, new LapicBus());
        b.Restore(k.ToNeutral().Lapic);
        foreach (int reg in new[] { R.Id, R.Tpr, R.Svr, R.LvtTimer, R.LvtLint0, R.TimerInitialCount, R.TimerDivide })
            Assert.Equal(a.MmioRead((ulong)reg, 4), b.MmioRead((ulong)reg, 4));
        // The countdown goes on from where it was, on the new clock.
        Assert.Equal(750_000ul, b.MmioRead(R.TimerCurrentCount, 4));
        clock.Advance(100_000);
        Assert.Equal(650_000ul, b.MmioRead(R.TimerCurrentCount, 4));
    }
}
