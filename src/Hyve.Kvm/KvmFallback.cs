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
    private readonly FallbackMemory _phys;

    public KvmFallback(KvmBackend backend, int vcpuFd, int vcpuId)
    {
        _fd = vcpuFd;
        backend.CountFallbackEngine();
        _phys = new FallbackMemory(new VmPhysicalMemory(backend.Vm), new KvmLapicWindow(backend, backend.Vm, vcpuFd, vcpuId));
        _engine = new InstructionEngine(_phys);
    }

    /// <summary>The VM's memory, ports and devices, with the in-kernel local APIC's page in front.</summary>
    private sealed class FallbackMemory(VmPhysicalMemory vm, KvmLapicWindow lapic) : IGuestPhysicalMemory, IGuestPorts
    {
        public KvmLapicWindow Lapic => lapic;

        public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
        {
            span = default;
            return !OnApicPage(gpa, length) && vm.TryGetSpan(gpa, length, out span);
        }

        public bool TryGetReadSpan(ulong gpa, int length, out ReadOnlySpan<byte> span)
        {
            span = default;
            return !OnApicPage(gpa, length) && vm.TryGetReadSpan(gpa, length, out span);
        }

        // The APIC page shadows whatever RAM lies under it (SDM Vol. 3 11.4.1): no span may cover it.
        private bool OnApicPage(ulong gpa, int length) => lapic.Contains(gpa) || lapic.Contains(gpa + (ulong)length - 1);

        public bool TryReadMmio(ulong gpa, int size, out ulong value)
        {
            if (lapic.Contains(gpa))
            {
                value = lapic.Read(gpa, size);
                return true;
            }
            return vm.TryReadMmio(gpa, size, out value);
        }

        public bool TryWriteMmio(ulong gpa, int size, ulong value)
        {
            if (lapic.Contains(gpa))
            {
                lapic.Write(gpa, size, value);
                return true;
            }
            return vm.TryWriteMmio(gpa, size, value);
        }

        public uint In(ushort port, int size) => vm.In(port, size);

        public void Out(ushort port, int size, uint value) => vm.Out(port, size, value);
    }

    /// <summary>What happened to the instruction.</summary>
    public enum Outcome { Done, Halted, Injected, Failed }

    /// <summary>Emulates the instruction at CS:RIP. <paramref name="bytes"/> are the instruction bytes KVM reported (may be empty).</summary>
    public Outcome Emulate(ReadOnlySpan<byte> bytes, out string error)
    {
        error = "";
        KvmRegs regs;
        KvmSregs sregs;
        // The XSAVE image rather than struct kvm_fpu: KVM_SET_FPU does not take MXCSR.
        byte* fpu = stackalloc byte[4096];
        if (Libc.Ioctl(_fd, KvmApi.GetRegs, &regs) < 0 || Libc.Ioctl(_fd, KvmApi.GetSregs, &sregs) < 0 || Libc.Ioctl(_fd, KvmApi.GetXsave, fpu) < 0)
        {
            error = $"cannot read vCPU state for the fallback: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}";
            return Outcome.Failed;
        }
        Load(in regs, in sregs, fpu);
        _phys.Lapic.SetApicBase(sregs.ApicBase);
        _phys.Lapic.WrittenTpr = -1;
        var r = bytes.IsEmpty ? _engine.Step(_cpu, _phys) : _engine.Step(_cpu, _phys, bytes);
        if (_phys.Lapic.WrittenTpr >= 0) _cpu.Cr8 = (ulong)_phys.Lapic.WrittenTpr >> 4;
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
        // The XSAVE image's legacy region is the FXSAVE layout CpuState keeps.
        new ReadOnlySpan<byte>(fpu, 512).CopyTo(c.Fx.AsSpan());
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
        c.Fx.AsSpan(0, 512).CopyTo(new Span<byte>(fpu, 512));
        // XSTATE_BV: the x87 and SSE state (MXCSR included) in the legacy region are the state to load.
        *(ulong*)(fpu + 512) |= 3;
        fixed (KvmRegs* pr = &r)
        fixed (KvmSregs* ps = &s)
        {
            if (Libc.Ioctl(_fd, KvmApi.SetSregs, ps) < 0 || Libc.Ioctl(_fd, KvmApi.SetRegs, pr) < 0 || Libc.Ioctl(_fd, KvmApi.SetXsave, fpu) < 0)
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
