// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Vmm;
using Hyve.Vmm.Native;
using Hyve.X86;

namespace Hyve.Kvm;

/// <summary>
/// The user-space fallback for instructions KVM cannot emulate (x87 and SSE control ops, far jumps into
/// protected mode on hosts where KVM runs guests through its instruction emulator): load the vCPU's state into
/// a <see cref="CpuState"/>, run the one instruction in Hyve's engine, and write the state back. One per vCPU;
/// nothing is allocated per instruction.
/// </summary>
internal sealed unsafe class KvmFallback
{
    private readonly int _fd;
    private readonly CpuState _cpu = new();
    private readonly InstructionEngine _engine;
    private readonly VmPhysicalMemory _phys;

    public KvmFallback(Vm vm, int vcpuFd)
    {
        _fd = vcpuFd;
        _phys = new VmPhysicalMemory(vm);
        _engine = new InstructionEngine(_phys);
    }

    /// <summary>What happened to the instruction.</summary>
    public enum Outcome { Done, Halted, Injected, Failed }

    /// <summary>Emulates the instruction at CS:RIP. <paramref name="bytes"/> are the instruction bytes KVM reported (may be empty).</summary>
    public Outcome Emulate(ReadOnlySpan<byte> bytes, out string error)
    {
        error = "";
        KvmRegs regs;
        KvmSregs sregs;
        byte* fpu = stackalloc byte[416];
        if (Libc.Ioctl(_fd, KvmApi.GetRegs, &regs) < 0 || Libc.Ioctl(_fd, KvmApi.GetSregs, &sregs) < 0 || Libc.Ioctl(_fd, KvmApi.GetFpu, fpu) < 0)
        {
            error = $"cannot read vCPU state for the fallback: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}";
            return Outcome.Failed;
        }
        Load(in regs, in sregs, fpu);
        var r = bytes.IsEmpty ? _engine.Step(_cpu, _phys) : _engine.Step(_cpu, _phys, bytes);
        switch (r.Status)
        {
            case StepStatus.Ok:
            case StepStatus.Halt:
                if (!Store(ref regs, ref sregs, fpu, out error)) return Outcome.Failed;
                if (r.Status == StepStatus.Halt)
                {
                    uint halted = KvmApi.MpStateHalted;
                    Libc.Ioctl(_fd, KvmApi.SetMpState, &halted);
                    return Outcome.Halted;
                }
                return Outcome.Done;
            case StepStatus.Exception:
                // REP string instructions may have completed iterations: their registers stand, RIP stays.
                if (!Store(ref regs, ref sregs, fpu, out error)) return Outcome.Failed;
                Inject(r.Exception);
                return Outcome.Injected;
            case StepStatus.Unsupported:
                error = $"instruction {r.Code} at {_cpu.Segs[(int)Seg.Cs].Selector:x4}:{_cpu.Rip:x16} is emulated neither by KVM nor by hyve";
                return Outcome.Failed;
            default:
                error = $"instruction at {_cpu.Segs[(int)Seg.Cs].Selector:x4}:{_cpu.Rip:x16} touched guest-physical 0x{r.Address:x}, which nothing backs";
                return Outcome.Failed;
        }
    }

    private void Inject(PendingException e)
    {
        if (e.Vector == Vector.PF)
        {
            KvmSregs s;
            Libc.Ioctl(_fd, KvmApi.GetSregs, &s);
            s.Cr2 = e.Cr2;
            Libc.Ioctl(_fd, KvmApi.SetSregs, &s);
        }
        byte* ev = stackalloc byte[64];
        new Span<byte>(ev, 64).Clear();
        ev[0] = 1;
        ev[1] = e.Vector;
        ev[2] = e.HasErrorCode ? (byte)1 : (byte)0;
        *(uint*)(ev + 4) = e.ErrorCode;
        Libc.Ioctl(_fd, KvmApi.SetVcpuEvents, ev);
    }

    private void Load(in KvmRegs r, in KvmSregs s, byte* fpu)
    {
        var c = _cpu;
        var g = c.Gpr;
        g[0] = r.Rax; g[1] = r.Rcx; g[2] = r.Rdx; g[3] = r.Rbx; g[4] = r.Rsp; g[5] = r.Rbp; g[6] = r.Rsi; g[7] = r.Rdi;
        g[8] = r.R8; g[9] = r.R9; g[10] = r.R10; g[11] = r.R11; g[12] = r.R12; g[13] = r.R13; g[14] = r.R14; g[15] = r.R15;
        c.Rip = r.Rip;
        c.Rflags = r.Rflags;
        c.Segs[(int)Seg.Es] = ToSeg(s.Es); c.Segs[(int)Seg.Cs] = ToSeg(s.Cs); c.Segs[(int)Seg.Ss] = ToSeg(s.Ss);
        c.Segs[(int)Seg.Ds] = ToSeg(s.Ds); c.Segs[(int)Seg.Fs] = ToSeg(s.Fs); c.Segs[(int)Seg.Gs] = ToSeg(s.Gs);
        c.Ldtr = ToSeg(s.Ldt);
        c.Tr = ToSeg(s.Tr);
        c.Gdtr = new SegmentDescriptor(s.Gdt.Base, s.Gdt.Limit, 0);
        c.Idtr = new SegmentDescriptor(s.Idt.Base, s.Idt.Limit, 0);
        c.Cr0 = s.Cr0; c.Cr2 = s.Cr2; c.Cr3 = s.Cr3; c.Cr4 = s.Cr4; c.Cr8 = s.Cr8; c.Efer = s.Efer;
        // struct kvm_fpu: fpr[8][16] at 0, fcw 128, fsw 130, ftwx 132, last_opcode 134, last_ip 136,
        // last_dp 144, xmm[16][16] 152, mxcsr 408. FXSAVE: FCW 0, FSW 2, FTW 4, FOP 6, FIP 8, FDP 16,
        // MXCSR 24, ST 32, XMM 160.
        var fx = c.Fx.AsSpan();
        fx.Clear();
        new ReadOnlySpan<byte>(fpu + 128, 4).CopyTo(fx);
        fx[4] = fpu[132];
        new ReadOnlySpan<byte>(fpu + 134, 2).CopyTo(fx[6..]);
        new ReadOnlySpan<byte>(fpu + 136, 8).CopyTo(fx[8..]);
        new ReadOnlySpan<byte>(fpu + 144, 8).CopyTo(fx[16..]);
        new ReadOnlySpan<byte>(fpu + 408, 4).CopyTo(fx[24..]);
        c.Fx[28] = 0xff; c.Fx[29] = 0xff; // MXCSR_MASK
        new ReadOnlySpan<byte>(fpu, 128).CopyTo(fx[32..]);
        new ReadOnlySpan<byte>(fpu + 152, 256).CopyTo(fx[160..]);
    }

    private bool Store(ref KvmRegs r, ref KvmSregs s, byte* fpu, out string error)
    {
        var c = _cpu;
        var g = c.Gpr;
        r.Rax = g[0]; r.Rcx = g[1]; r.Rdx = g[2]; r.Rbx = g[3]; r.Rsp = g[4]; r.Rbp = g[5]; r.Rsi = g[6]; r.Rdi = g[7];
        r.R8 = g[8]; r.R9 = g[9]; r.R10 = g[10]; r.R11 = g[11]; r.R12 = g[12]; r.R13 = g[13]; r.R14 = g[14]; r.R15 = g[15];
        r.Rip = c.Rip;
        r.Rflags = c.Rflags;
        FromSeg(ref s.Es, c.Segs[(int)Seg.Es]); FromSeg(ref s.Cs, c.Segs[(int)Seg.Cs]); FromSeg(ref s.Ss, c.Segs[(int)Seg.Ss]);
        FromSeg(ref s.Ds, c.Segs[(int)Seg.Ds]); FromSeg(ref s.Fs, c.Segs[(int)Seg.Fs]); FromSeg(ref s.Gs, c.Segs[(int)Seg.Gs]);
        FromSeg(ref s.Ldt, c.Ldtr);
        FromSeg(ref s.Tr, c.Tr);
        s.Gdt.Base = c.Gdtr.Base; s.Gdt.Limit = (ushort)c.Gdtr.Limit;
        s.Idt.Base = c.Idtr.Base; s.Idt.Limit = (ushort)c.Idtr.Limit;
        s.Cr0 = c.Cr0; s.Cr2 = c.Cr2; s.Cr3 = c.Cr3; s.Cr4 = c.Cr4; s.Cr8 = c.Cr8; s.Efer = c.Efer;
        var fx = c.Fx.AsSpan();
        fx[..4].CopyTo(new Span<byte>(fpu + 128, 4));
        fpu[132] = fx[4];
        fx.Slice(6, 2).CopyTo(new Span<byte>(fpu + 134, 2));
        fx.Slice(8, 8).CopyTo(new Span<byte>(fpu + 136, 8));
        fx.Slice(16, 8).CopyTo(new Span<byte>(fpu + 144, 8));
        fx.Slice(24, 4).CopyTo(new Span<byte>(fpu + 408, 4));
        fx.Slice(32, 128).CopyTo(new Span<byte>(fpu, 128));
        fx.Slice(160, 256).CopyTo(new Span<byte>(fpu + 152, 256));
        fixed (KvmRegs* pr = &r)
        fixed (KvmSregs* ps = &s)
        {
            if (Libc.Ioctl(_fd, KvmApi.SetSregs, ps) < 0 || Libc.Ioctl(_fd, KvmApi.SetRegs, pr) < 0 || Libc.Ioctl(_fd, KvmApi.SetFpu, fpu) < 0)
            {
                error = $"cannot write vCPU state after the fallback: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}";
                return false;
            }
        }
        error = "";
        return true;
    }

    private static SegmentRegister ToSeg(in KvmSegment k) => new(k.Selector, k.ToDescriptor());

    private static void FromSeg(ref KvmSegment k, in SegmentRegister r)
    {
        k.Selector = r.Selector;
        k.SetDescriptor(r.Descriptor);
    }
}
