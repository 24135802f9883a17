// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Vmm.Io;
using Hyve.Vmm.State;
using Hyve.X86;

namespace Hyve.Kvm;

/// <summary>
/// A KVM vCPU's state as the KVM_GET_* ioctls return it (Documentation/virt/kvm/api.rst): kvm_regs, kvm_sregs, the
/// kvm_xsave image, XCR0 (kvm_xcrs), kvm_debugregs, the MSRs by index, the kvm_lapic_state page, kvm_vcpu_events and
/// the mp_state; <see cref="ToNeutral"/> and <see cref="FromNeutral"/> convert it to and from Hyve's
/// <see cref="VcpuState"/>, which is how a snapshot moves between KVM and the software CPU.
/// </summary>
internal sealed class KvmVcpuState
{
    /// <summary>Size of struct kvm_xsave.</summary>
    public const int XsaveSize = 4096;
    /// <summary>Size of struct kvm_vcpu_events.</summary>
    public const int EventsSize = 64;
    /// <summary>Offset of XSTATE_BV in the XSAVE header.</summary>
    public const int XstateBvOffset = 512;
    /// <summary>Offset of the AVX (YMM_Hi128) component in the standard XSAVE layout (CPUID.(EAX=0DH,ECX=2).EBX).</summary>
    public const int AvxOffset = 576;

    // kvm_vcpu_events flags.
    public const uint EventValidNmiPending = 1, EventValidSipiVector = 2, EventValidShadow = 4;
    // IA32 MSR indices kept outside kvm_sregs.
    public const uint MsrTsc = 0x10, MsrSysenterCs = 0x174, MsrSysenterEsp = 0x175, MsrSysenterEip = 0x176, MsrPat = 0x277,
        MsrTscDeadline = 0x6e0, MsrStar = 0xc000_0081, MsrLstar = 0xc000_0082, MsrCstar = 0xc000_0083, MsrSfmask = 0xc000_0084,
        MsrKernelGsBase = 0xc000_0102, MsrTscAux = 0xc000_0103, MsrMiscEnable = 0x1a0;

    /// <summary>The MSRs a state reads: the architectural ones above, then the MTRRs and IA32_MISC_ENABLE.</summary>
    public static readonly uint[] SavedMsrs = BuildMsrList();

    public KvmRegs Regs;
    public KvmSregs Sregs;
    public byte[] Xsave = new byte[XsaveSize];
    public ulong Xcr0 = 1;
    /// <summary>kvm_debugregs as 16 quadwords: db[4], dr6, dr7, flags, reserved.</summary>
    public ulong[] DebugRegs = new ulong[16];
    public Dictionary<uint, ulong> Msrs = [];
    public byte[] Lapic = new byte[LapicState.Size];
    public byte[] Events = new byte[EventsSize];
    public uint MpState;
    public long TscKhz;

    private static uint[] BuildMsrList()
    {
        var l = new List<uint> { MsrTsc, MsrSysenterCs, MsrSysenterEsp, MsrSysenterEip, MsrPat, MsrTscDeadline, MsrStar, MsrLstar,
            MsrCstar, MsrSfmask, MsrKernelGsBase, MsrTscAux, MsrMiscEnable };
        for (uint i = 0x200; i <= 0x20f; i++) l.Add(i);
        l.AddRange([0x250, 0x258, 0x259]);
        for (uint i = 0x268; i <= 0x26f; i++) l.Add(i);
        l.Add(0x2ff);
        return [.. l];
    }

    private static bool IsArchitectural(uint msr) => msr is MsrTsc or MsrSysenterCs or MsrSysenterEsp or MsrSysenterEip or MsrPat
        or MsrTscDeadline or MsrStar or MsrLstar or MsrCstar or MsrSfmask or MsrKernelGsBase or MsrTscAux;

    /// <summary>Converts to the engine-neutral form.</summary>
    public VcpuState ToNeutral()
    {
        var s = new VcpuState();
        var c = s.Cpu;
        var r = Regs;
        ulong[] g = [r.Rax, r.Rcx, r.Rdx, r.Rbx, r.Rsp, r.Rbp, r.Rsi, r.Rdi, r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15];
        g.CopyTo(c.Gpr);
        c.Rip = r.Rip;
        c.Rflags = r.Rflags;
        var sr = Sregs;
        c.Segs[(int)Seg.Es] = new SegmentRegister(sr.Es.Selector, sr.Es.ToDescriptor());
        c.Segs[(int)Seg.Cs] = new SegmentRegister(sr.Cs.Selector, sr.Cs.ToDescriptor());
        c.Segs[(int)Seg.Ss] = new SegmentRegister(sr.Ss.Selector, sr.Ss.ToDescriptor());
        c.Segs[(int)Seg.Ds] = new SegmentRegister(sr.Ds.Selector, sr.Ds.ToDescriptor());
        c.Segs[(int)Seg.Fs] = new SegmentRegister(sr.Fs.Selector, sr.Fs.ToDescriptor());
        c.Segs[(int)Seg.Gs] = new SegmentRegister(sr.Gs.Selector, sr.Gs.ToDescriptor());
        c.Ldtr = new SegmentRegister(sr.Ldt.Selector, sr.Ldt.ToDescriptor());
        c.Tr = new SegmentRegister(sr.Tr.Selector, sr.Tr.ToDescriptor());
        c.Gdtr = new SegmentDescriptor(sr.Gdt.Base, sr.Gdt.Limit, 0);
        c.Idtr = new SegmentDescriptor(sr.Idt.Base, sr.Idt.Limit, 0);
        (c.Cr0, c.Cr2, c.Cr3, c.Cr4, c.Cr8, c.Efer) = (sr.Cr0, sr.Cr2, sr.Cr3, sr.Cr4, sr.Cr8, sr.Efer);
        for (int i = 0; i < 4; i++) c.Dr[i] = DebugRegs[i];
        c.Dr[6] = DebugRegs[4];
        c.Dr[7] = DebugRegs[5];
        ulong Msr(uint i, ulong fallback = 0) => Msrs.TryGetValue(i, out var v) ? v : fallback;
        c.SysenterCs = Msr(MsrSysenterCs); c.SysenterEsp = Msr(MsrSysenterEsp); c.SysenterEip = Msr(MsrSysenterEip);
        c.Pat = Msr(MsrPat, CpuState.PatDefault);
        c.Star = Msr(MsrStar); c.Lstar = Msr(MsrLstar); c.Cstar = Msr(MsrCstar); c.Sfmask = Msr(MsrSfmask);
        c.KernelGsBase = Msr(MsrKernelGsBase); c.TscAux = Msr(MsrTscAux);
        foreach (var (i, v) in Msrs) if (!IsArchitectural(i)) s.Msrs[i] = v;
        s.Tsc = Msr(MsrTsc);
        if (TscKhz > 0) s.TscHz = TscKhz * 1000;

        Xsave.AsSpan(0, 512).CopyTo(c.Fx);
        s.Xcr0 = Xcr0;
        ulong bv = BinaryPrimitives.ReadUInt64LittleEndian(Xsave.AsSpan(XstateBvOffset));
        if ((bv & 4) != 0) Xsave.AsSpan(AvxOffset, 256).CopyTo(s.YmmHigh);

        s.Lapic = new VlapicState { ApicBase = sr.ApicBase, TscDeadline = Msr(MsrTscDeadline) };
        Lapic.CopyTo(s.Lapic.Page, 0);

        var e = Events;
        // exception: injected, nr, has_error_code, pending, error_code; then the payload at 55/56.
        if (e[0] != 0 || e[3] != 0)
        {
            ulong payload = e[55] != 0 ? BinaryPrimitives.ReadUInt64LittleEndian(e.AsSpan(56)) : e[1] == Vector.PF ? sr.Cr2 : 0;
            s.Exception = new PendingException(e[1], e[2] != 0, BinaryPrimitives.ReadUInt32LittleEndian(e.AsSpan(4)), payload);
        }
        // interrupt: injected, nr, soft, shadow.
        if (e[8] != 0 && e[10] == 0) s.InjectedInterrupt = e[9];
        c.InterruptShadow = (byte)(e[11] & (CpuState.ShadowMovSs | CpuState.ShadowSti));
        // nmi: injected, pending, masked.
        s.NmiPending = e[12] != 0 || e[13] != 0;
        s.NmiMasked = e[14] != 0;
        s.Activity = MpState switch
        {
            KvmApi.MpStateHalted => VcpuActivity.Halted,
            KvmApi.MpStateUninitialized or KvmApi.MpStateInitReceived => VcpuActivity.WaitingForSipi,
            _ => VcpuActivity.Running,
        };
        return s;
    }

    /// <summary>Converts from the engine-neutral form; <see cref="TscKhz"/> is the saved rate (0 when unknown).</summary>
    public static KvmVcpuState FromNeutral(VcpuState s)
    {
        ArgumentNullException.ThrowIfNull(s);
        var k = new KvmVcpuState();
        var c = s.Cpu;
        var g = c.Gpr;
        k.Regs = new KvmRegs
        {
            Rax = g[0], Rcx = g[1], Rdx = g[2], Rbx = g[3], Rsp = g[4], Rbp = g[5], Rsi = g[6], Rdi = g[7],
            R8 = g[8], R9 = g[9], R10 = g[10], R11 = g[11], R12 = g[12], R13 = g[13], R14 = g[14], R15 = g[15],
            Rip = c.Rip, Rflags = c.Rflags,
        };
        var sr = new KvmSregs();
        sr.Es = Segment(c.Segs[(int)Seg.Es]); sr.Cs = Segment(c.Segs[(int)Seg.Cs]); sr.Ss = Segment(c.Segs[(int)Seg.Ss]);
        sr.Ds = Segment(c.Segs[(int)Seg.Ds]); sr.Fs = Segment(c.Segs[(int)Seg.Fs]); sr.Gs = Segment(c.Segs[(int)Seg.Gs]);
        sr.Ldt = Segment(c.Ldtr); sr.Tr = Segment(c.Tr);
        sr.Gdt = new KvmDtable { Base = c.Gdtr.Base, Limit = (ushort)c.Gdtr.Limit };
        sr.Idt = new KvmDtable { Base = c.Idtr.Base, Limit = (ushort)c.Idtr.Limit };
        (sr.Cr0, sr.Cr2, sr.Cr3, sr.Cr4, sr.Cr8, sr.Efer) = (c.Cr0, c.Cr2, c.Cr3, c.Cr4, c.Cr8, c.Efer);
        sr.ApicBase = s.Lapic.ApicBase;
        k.Sregs = sr;
        for (int i = 0; i < 4; i++) k.DebugRegs[i] = c.Dr[i];
        k.DebugRegs[4] = c.Dr[6];
        k.DebugRegs[5] = c.Dr[7];

        foreach (var (i, v) in s.Msrs) k.Msrs[i] = v;
        k.Msrs[MsrTsc] = s.Tsc;
        k.Msrs[MsrSysenterCs] = c.SysenterCs; k.Msrs[MsrSysenterEsp] = c.SysenterEsp; k.Msrs[MsrSysenterEip] = c.SysenterEip;
        k.Msrs[MsrPat] = c.Pat;
        k.Msrs[MsrStar] = c.Star; k.Msrs[MsrLstar] = c.Lstar; k.Msrs[MsrCstar] = c.Cstar; k.Msrs[MsrSfmask] = c.Sfmask;
        k.Msrs[MsrKernelGsBase] = c.KernelGsBase; k.Msrs[MsrTscAux] = c.TscAux;
        k.Msrs[MsrTscDeadline] = s.Lapic.TscDeadline;
        k.TscKhz = s.TscHz / 1000;

        c.Fx.CopyTo(k.Xsave, 0);
        k.Xcr0 = s.Xcr0 | 1;
        // x87 and SSE always present in the image; AVX when XCR0 enables it.
        ulong bv = 3 | (k.Xcr0 & 4);
        BinaryPrimitives.WriteUInt64LittleEndian(k.Xsave.AsSpan(XstateBvOffset), bv);
        if ((bv & 4) != 0) s.YmmHigh.CopyTo(k.Xsave, AvxOffset);

        s.Lapic.Page.CopyTo(k.Lapic, 0);

        var e = k.Events;
        if (s.Exception is { } x)
        {
            // Pending (not yet injected): KVM delivers it with the nesting rules at the next entry.
            e[3] = 1; e[1] = x.Vector; e[2] = x.HasErrorCode ? (byte)1 : (byte)0;
            BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(4), x.ErrorCode);
        }
        if (s.InjectedInterrupt >= 0) { e[8] = 1; e[9] = (byte)s.InjectedInterrupt; }
        e[11] = c.InterruptShadow;
        e[13] = s.NmiPending ? (byte)1 : (byte)0;
        e[14] = s.NmiMasked ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(20), EventValidNmiPending | EventValidShadow);
        k.MpState = s.Activity switch
        {
            VcpuActivity.Halted => KvmApi.MpStateHalted,
            VcpuActivity.WaitingForSipi => KvmApi.MpStateInitReceived,
            _ => KvmApi.MpStateRunnable,
        };
        return k;
    }

    private static KvmSegment Segment(SegmentRegister r)
    {
        var k = new KvmSegment { Selector = r.Selector };
        k.SetDescriptor(r.Descriptor);
        return k;
    }
}
