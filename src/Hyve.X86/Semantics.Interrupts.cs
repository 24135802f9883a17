// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // Interrupt and exception delivery through the IVT (real mode) or the IDT (protected and IA-32e mode), and IRET
    // (SDM Vol. 3 6.10-6.14 and Vol. 2 INT n / IRET). Same-privilege and inner-privilege (stack switch through the TSS,
    // IST in IA-32e mode) interrupt and trap gates, task gates (Semantics.Tasks.cs), virtual-8086 mode entry (IRETD) and
    // exit (interrupts and exceptions to ring 0) with its IOPL and VME rules are modelled. Nothing changes in the CPU state unless delivery completes.

    /// <summary>
    /// Delivers an event to the guest with the current RIP as the return address: an exception or external interrupt
    /// (<paramref name="software"/> false: no gate-DPL check, EXT=1 in error codes) or a software interrupt. A fault during
    /// delivery is returned as <see cref="StepStatus.Exception"/> with nothing changed (the caller escalates, e.g. to #DF);
    /// CR2 is written for a #PF.
    /// </summary>
    public StepResult Deliver(CpuState cpu, in PendingException e, bool software = false)
    {
        _cpu = cpu;
        _bitness = cpu.CodeBitness;
        _fault = default;
        if (e.Vector == Vector.PF) cpu.Cr2 = e.Cr2;
        return DeliverCore(e.Vector, software, e.HasErrorCode, e.ErrorCode, cpu.Rip) switch
        {
            Exec.Branch => new StepResult(StepStatus.Ok, default, 0, Code.INVALID),
            Exec.Unsupported => new StepResult(StepStatus.Unsupported, PendingException.Ud, 0, Code.INVALID),
            _ => FromAccess(_fault, Code.INVALID),
        };
    }

    /// <summary>
    /// Delivers an exception raised by an instruction (or injected as one): as <see cref="Deliver"/>, and the RFLAGS image
    /// pushed for a fault-class exception has RF set, so that the instruction restarted by IRET does not hit an
    /// instruction breakpoint again (SDM Vol. 3 17.3.1.1: "for any fault-class exception except a debug exception
    /// generated in response to an instruction breakpoint, the value pushed for RF is 1").
    /// </summary>
    public StepResult DeliverException(CpuState cpu, in PendingException e)
    {
        _pushRf = IsFaultClass(e.Vector);
        try
        {
            return Deliver(cpu, e);
        }
        finally
        {
            _pushRf = false;
        }
    }

    private bool _pushRf;

    // #DE, #BR, #UD, #NM, #TS, #NP, #SS, #GP, #PF, #MF, #AC, #XM, #VE, #CP (SDM Vol. 3 Table 6-1). #DB is a trap or an
    // instruction-breakpoint fault here, both of which push RF as it is.
    private static bool IsFaultClass(byte vector) => vector is 0 or 5 or 6 or 7 or 10 or 11 or 12 or 13 or 14 or 16 or 17 or 19 or 20 or 21;

    private static Exec IntN(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        byte vector = i.Code switch { Code.Int3 => 3, Code.Into => 4, _ => i.Immediate8 };
        if (i.Code == Code.Into && (c.Rflags & OF) == 0) return Exec.Next;
        if (c.Mode == CpuMode.Virtual8086 && i.Code == Code.Int_imm8)
        {
            // INT n (CD ib) in virtual-8086 mode (SDM Vol. 3 20.3.3, Table 20-2). INT3, INTO and INT1 are not
            // IOPL-sensitive and are never redirected: they go to the protected-mode handler.
            bool vme = (c.Cr4 & CpuState.Cr4Vme) != 0;
            if (vme)
            {
                if (!e.RedirectedInV86(vector, out bool redirect)) return Exec.Fault;
                if (redirect) return e.DeliverV86Redirected(vector, i.NextIP & 0xffff);
            }
            if (e.IopL != 3) return e.Raise(PendingException.Gp0);
        }
        return e.DeliverCore(vector, true, false, 0, i.NextIP & Mask(e._bitness / 8));
    }

    /// <summary>
    /// Reads bit <paramref name="vector"/> of the TSS's software interrupt redirection bitmap, the 32 bytes just below the
    /// I/O map base (SDM Vol. 3 20.3.3.5); a clear bit redirects INT n to the 8086 handler. Outside a 32-bit TSS or its limit: #GP(0).
    /// </summary>
    private bool RedirectedInV86(byte vector, out bool redirect)
    {
        var c = _cpu;
        redirect = false;
        var tr = c.Tr.Descriptor;
        if ((tr.Access & 0xf) is not (9 or 0xb) || tr.Limit < 0x67) return RaiseFalse(PendingException.Gp0);
        var r = _mem.Read(c, tr.Base + 0x66, 2, PageAccess.Implicit, out ulong ioBase);
        if (!r.IsOk) { _fault = r; return false; }
        ulong at = ioBase - 32 + (ulong)(vector >> 3);
        if (ioBase < 32 || at > tr.Limit) return RaiseFalse(PendingException.Gp0);
        r = _mem.Read(c, tr.Base + at, 1, PageAccess.Implicit, out ulong b);
        if (!r.IsOk) { _fault = r; return false; }
        redirect = ((b >> (vector & 7)) & 1) == 0;
        return true;
    }

    /// <summary>
    /// INT n redirected to the virtual-8086 program's own handler through the IVT at linear 0 (VME methods 5 and 6):
    /// FLAGS, CS, IP pushed on the 8086 stack; with IOPL &lt; 3 the FLAGS image shows IOPL 3 and VIF as IF and VIF is
    /// cleared instead of IF. TF and RF are cleared.
    /// </summary>
    private Exec DeliverV86Redirected(byte vector, ulong returnIp)
    {
        var c = _cpu;
        var r = _mem.Read(c, (ulong)vector * 4, 4, PageAccess.Read, out ulong ivt);
        if (!r.IsOk) return Fail(r);
        bool iopl3 = IopL == 3;
        ulong flags = c.Rflags & 0xffff;
        if (!iopl3) flags = (flags & ~CpuState.FlagIf) | CpuState.FlagIopl | ((c.Rflags & CpuState.FlagVif) != 0 ? CpuState.FlagIf : 0);
        ulong rsp = c.Gpr[4];
        if (!PushValueSized(flags, 2) || !PushValueSized(c.Segs[(int)Seg.Cs].Selector, 2) || !PushValueSized(returnIp, 2))
        { c.Gpr[4] = rsp; return Exec.Fault; }
        ushort sel = (ushort)(ivt >> 16);
        c.Segs[(int)Seg.Cs] = new SegmentRegister(sel, new SegmentDescriptor((ulong)sel << 4, 0xffff, 0xf3));
        c.Rip = ivt & 0xffff;
        c.Rflags &= ~(CpuState.FlagTf | CpuState.FlagRf | (iopl3 ? CpuState.FlagIf : CpuState.FlagVif));
        return Exec.Branch;
    }

    private static PendingException IdtFault(byte vector, bool ext) => new(Vector.GP, true, (uint)(vector * 8 + 2 + (ext ? 1 : 0)), 0);

    private Exec DeliverCore(byte vector, bool software, bool hasError, uint error, ulong returnIp)
    {
        var c = _cpu;
        bool ext = !software;
        uint extBit = ext ? 1u : 0;
        var mode = c.Mode;
        if (mode == CpuMode.Real) return DeliverReal(vector, returnIp);
        bool v86 = mode == CpuMode.Virtual8086;
        bool ia32e = (c.Efer & CpuState.EferLma) != 0;
        int entry = ia32e ? 16 : 8;
        if ((ulong)(vector * entry + entry - 1) > c.Idtr.Limit) return Raise(IdtFault(vector, ext));
        ulong ga = c.Idtr.Base + (ulong)(vector * entry);
        var r = _mem.Read(c, ga, 8, PageAccess.Implicit, out ulong gate);
        ulong gateHi = 0;
        if (r.IsOk && ia32e) r = _mem.Read(c, ga + 8, 8, PageAccess.Implicit, out gateHi);
        if (!r.IsOk) return Fail(r);
        uint type = (uint)(gate >> 40) & 0x1f;
        int gateDpl = (int)(gate >> 45) & 3;
        bool present = ((gate >> 47) & 1) != 0;
        bool is32, trap;
        if (ia32e)
        {
            if (type is not (0xe or 0xf)) return Raise(IdtFault(vector, ext));
            is32 = true; trap = type == 0xf;
        }
        else
        {
            if (type is not (5 or 6 or 7 or 0xe or 0xf)) return Raise(IdtFault(vector, ext));
            if (type == 5)
            {
                // A task gate: the gate's DPL and presence are checked as for other gates, then the task switch.
                if (software && gateDpl < c.Cpl) return Raise(IdtFault(vector, false));
                if (!present) return Raise(new PendingException(Vector.NP, true, (uint)(vector * 8 + 2) + extBit, 0));
                return DeliverThroughTaskGate(gate, extBit, hasError, error, returnIp);
            }
            is32 = (type & 8) != 0; trap = (type & 1) != 0;
        }
        int cpl = c.Cpl;
        if (software && gateDpl < cpl) return Raise(IdtFault(vector, false));
        if (!present) return Raise(new PendingException(Vector.NP, true, (uint)(vector * 8 + 2) + extBit, 0));
        ushort sel = (ushort)(gate >> 16);
        ulong offset = (gate & 0xffff) | ((gate >> 32) & 0xffff0000);
        if (ia32e) offset |= gateHi << 32;
        if (!is32) offset &= 0xffff;

        // Target code segment (SDM Vol. 3 6.12.1.1).
        if ((sel & 0xfffc) == 0) return Raise(new PendingException(Vector.GP, true, extBit, 0));
        if (!ReadDescriptor(sel, out ulong raw, out ulong csAddr))
        {
            if (_fault.Exception.Vector == Vector.GP) _fault = AccessResult.Fault(new PendingException(Vector.GP, true, (uint)(sel & 0xfffc) | extBit, 0));
            return Exec.Fault;
        }
        var cd = Segmentation.FromRaw(raw);
        var selFault = new PendingException(Vector.GP, true, (uint)(sel & 0xfffc) | extBit, 0);
        if ((cd.Access & DescS) == 0 || (cd.Access & TypeCode) == 0 || cd.Dpl > cpl) return Raise(selFault);
        bool conforming = (cd.Access & TypeConforming) != 0;
        // From virtual-8086 mode only a ring-0 non-conforming handler can be reached (SDM INT n: "IF VM = 1 and new
        // code-segment DPL ≠ 0, or conforming: #GP(new code-segment selector)").
        if (v86 && (conforming || cd.Dpl != 0)) return Raise(selFault);
        if (!cd.Present) return Raise(new PendingException(Vector.NP, true, (uint)(sel & 0xfffc) | extBit, 0));
        if (ia32e && (!cd.Long || cd.Default32)) return Raise(selFault);
        int newCpl = conforming ? cpl : cd.Dpl;
        var newCs = new SegmentRegister((ushort)((sel & 0xfffc) | newCpl), cd with { Access = cd.Access | TypeAccessed });
        if (ia32e ? !Segmentation.IsCanonical(c, offset) : offset > cd.Limit) return Raise(new PendingException(Vector.GP, true, extBit, 0));

        // The stack: switched through the TSS on a privilege change (or an IST slot in IA-32e mode).
        var oldSs = c.Segs[(int)Seg.Ss];
        ulong oldRsp = c.Gpr[4];
        var newSs = oldSs;
        ulong newRsp = oldRsp;
        int ist = ia32e ? (int)(gate >> 32) & 7 : 0; // IST index in gate bits 34:32
        bool switchStack = newCpl < cpl;
        if (switchStack || ist != 0)
        {
            if (!TssStack(newCpl, ist, ia32e, extBit, out newSs, out newRsp)) return Exec.Fault;
            if (!switchStack) newSs = oldSs; // an IST switch alone keeps SS
        }
        if (ia32e) newRsp &= ~0xful; // the 64-bit frame is 16-byte aligned
        // Build the frame on the new stack; undo everything if a push faults.
        var oldCs = c.Segs[(int)Seg.Cs];
        ulong savedFlags = c.Rflags;
        ulong oldFlags = c.Rflags | (_pushRf ? CpuState.FlagRf : 0);
        int size = ia32e ? 8 : is32 ? 4 : 2;
        c.Segs[(int)Seg.Ss] = newSs;
        c.Gpr[4] = newRsp;
        bool ok = true;
        if (v86)
        {
            // Leaving virtual-8086 mode: the frame is written at CPL 0 (VM clear), and GS, FS, DS, ES come first
            // (SDM INT n, INTERRUPT-FROM-VIRTUAL-8086-MODE), each as a zero-extended gate-size slot.
            c.Rflags &= ~CpuState.FlagVm;
            ok = FramePush(false, c.Segs[(int)Seg.Gs].Selector, size) && FramePush(false, c.Segs[(int)Seg.Fs].Selector, size)
                && FramePush(false, c.Segs[(int)Seg.Ds].Selector, size) && FramePush(false, c.Segs[(int)Seg.Es].Selector, size);
        }
        if (ok && (ia32e || switchStack))
        {
            ok = FramePush(ia32e, oldSs.Selector, size) && FramePush(ia32e, oldRsp, size);
        }
        ok = ok && FramePush(ia32e, oldFlags, size) && FramePush(ia32e, oldCs.Selector, size) && FramePush(ia32e, returnIp, size);
        if (ok && hasError) ok = FramePush(ia32e, error, size);
        if (!ok)
        {
            c.Segs[(int)Seg.Ss] = oldSs;
            c.Gpr[4] = oldRsp;
            c.Rflags = savedFlags;
            if (switchStack && !ia32e && _fault.Exception.Vector == Vector.SS)
                _fault = AccessResult.Fault(new PendingException(Vector.SS, true, (uint)(newSs.Selector & 0xfffc) | extBit, 0));
            return Exec.Fault;
        }
        c.Segs[(int)Seg.Cs] = newCs;
        c.Rip = offset;
        c.Rflags &= ~(CpuState.FlagTf | CpuState.FlagNt | CpuState.FlagRf | CpuState.FlagVm | (trap ? 0 : CpuState.FlagIf));
        if (v86)
        {
            // The data segment registers are loaded with null selectors.
            for (int s = 0; s < 6; s++)
                if (s is not ((int)Seg.Cs or (int)Seg.Ss)) c.Segs[s] = new SegmentRegister(0, new SegmentDescriptor(0, 0, SegmentDescriptor.Unusable));
        }
        return Exec.Branch;
    }

    /// <summary>
    /// The stack for privilege level <paramref name="newCpl"/> from the current TSS (SDM Vol. 3 6.12.1, 5.8.5): SS:ESP from a
    /// 16/32-bit TSS with the #TS/#SS checks, or RSPn / ISTn from a 64-bit TSS with a null SS.
    /// </summary>
    private bool TssStack(int newCpl, int ist, bool ia32e, uint extBit, out SegmentRegister ss, out ulong rsp)
    {
        var c = _cpu;
        ss = default; rsp = 0;
        if (ia32e)
        {
            uint slot = ist != 0 ? 0x24 + 8 * (uint)(ist - 1) : 4 + 8 * (uint)newCpl;
            if (!ReadTss(slot, 8, extBit, out rsp)) return false;
            if (!Segmentation.IsCanonical(c, rsp)) return RaiseFalse(new PendingException(Vector.SS, true, extBit, 0));
            ss = new SegmentRegister((ushort)newCpl, new SegmentDescriptor(0, 0, SegmentDescriptor.Unusable | (uint)(newCpl << 5) | DescS | 3));
            return true;
        }
        bool tss32 = (c.Tr.Descriptor.Access & 0xf) is 9 or 0xb;
        ulong ssv, spv;
        if (tss32) { if (!ReadTss(8 + 8 * (uint)newCpl, 2, extBit, out ssv) || !ReadTss(4 + 8 * (uint)newCpl, 4, extBit, out spv)) return false; }
        else { if (!ReadTss(4 + 4 * (uint)newCpl, 2, extBit, out ssv) || !ReadTss(2 + 4 * (uint)newCpl, 2, extBit, out spv)) return false; }
        ushort ssSel = (ushort)ssv;
        var ts = new PendingException(Vector.TS, true, (uint)(ssSel & 0xfffc) | extBit, 0);
        if ((ssSel & 0xfffc) == 0) return RaiseFalse(new PendingException(Vector.TS, true, extBit, 0));
        if ((ssSel & 3) != newCpl) return RaiseFalse(ts);
        if (!ReadDescriptor(ssSel, out ulong ssRaw, out _)) { if (_fault.Status == AccessStatus.GuestFault && _fault.Exception.Vector == Vector.GP) _fault = AccessResult.Fault(ts); return false; }
        var sd = Segmentation.FromRaw(ssRaw);
        if ((sd.Access & DescS) == 0 || (sd.Access & TypeCode) != 0 || (sd.Access & TypeReadWrite) == 0 || sd.Dpl != newCpl) return RaiseFalse(ts);
        if (!sd.Present) return RaiseFalse(new PendingException(Vector.SS, true, (uint)(ssSel & 0xfffc) | extBit, 0));
        ss = new SegmentRegister(ssSel, sd with { Access = sd.Access | TypeAccessed });
        rsp = sd.Default32 ? (uint)spv : (c.Gpr[4] & ~0xfffful) | (ushort)spv;
        return true;
    }

    /// <summary>Reads a field of the current TSS; beyond the TSS limit is #TS(TSS selector).</summary>
    private bool ReadTss(uint offset, int size, uint extBit, out ulong value)
    {
        var c = _cpu;
        value = 0;
        if (offset + (uint)size - 1 > c.Tr.Descriptor.Limit) return RaiseFalse(new PendingException(Vector.TS, true, (uint)(c.Tr.Selector & 0xfffc) | extBit, 0));
        var r = _mem.Read(c, c.Tr.Descriptor.Base + offset, size, PageAccess.Implicit, out value);
        if (!r.IsOk) { _fault = r; return false; }
        return true;
    }

    /// <summary>Pushes one frame slot: in IA-32e mode straight to RSP (canonical check, no segmentation), otherwise through SS.</summary>
    private bool FramePush(bool ia32e, ulong v, int size)
    {
        var c = _cpu;
        if (!ia32e) return PushValueSized(v, size);
        ulong sp = c.Gpr[4] - (ulong)size;
        if (!Segmentation.IsCanonical(c, sp)) return RaiseFalse(PendingException.Ss0);
        var r = _mem.Write(c, sp, size, v);
        if (!r.IsOk) { _fault = r; return false; }
        c.Gpr[4] = sp;
        return true;
    }

    /// <summary>A push with the stack-address size from the current SS (B bit), independent of the code segment's mode.</summary>
    private bool PushValueSized(ulong v, int size)
    {
        var c = _cpu;
        int ss = c.Segs[(int)Seg.Ss].Descriptor.Default32 ? 4 : 2;
        ulong sp = (c.Gpr[4] - (ulong)size) & Mask(ss);
        if (!Resolve(Seg.Ss, sp, size, PageAccess.Write, out var loc) || !WriteLoc(loc, v)) return false;
        if (ss == 2) c.Gpr[4] = (c.Gpr[4] & ~0xfffful) | sp;
        else c.Gpr[4] = sp;
        return true;
    }

    /// <summary>Real-mode delivery through the IVT: push FLAGS, CS, IP; clear IF, TF, AC; CS:IP from the vector.</summary>
    private Exec DeliverReal(byte vector, ulong returnIp)
    {
        var c = _cpu;
        if ((ulong)(vector * 4 + 3) > c.Idtr.Limit) return Raise(IdtFault(vector, false));
        var r = _mem.Read(c, c.Idtr.Base + (ulong)(vector * 4), 4, PageAccess.Implicit, out ulong ivt);
        if (!r.IsOk) return Fail(r);
        ulong rsp = c.Gpr[4];
        if (!PushValue(c.Rflags & 0xffff, 2) || !PushValue(c.Segs[(int)Seg.Cs].Selector, 2) || !PushValue(returnIp & 0xffff, 2))
        { c.Gpr[4] = rsp; return Exec.Fault; }
        ushort sel = (ushort)(ivt >> 16);
        ref var cs = ref c.Segs[(int)Seg.Cs];
        cs = new SegmentRegister(sel, cs.Descriptor with { Base = (ulong)sel << 4 });
        c.Rip = ivt & 0xffff;
        c.Rflags &= ~(CpuState.FlagIf | CpuState.FlagTf | CpuState.FlagAc);
        return Exec.Branch;
    }

    /// <summary>IRET/IRETD/IRETQ: real mode, and protected/IA-32e returns to the same or an outer privilege level.</summary>
    private static Exec Iret(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code switch { Code.Iretw => 2, Code.Iretd => 4, _ => 8 };
        var mode = c.Mode;
        ulong old = c.Rflags;
        bool vmeIret = false;
        if (mode == CpuMode.Virtual8086 && e.IopL != 3)
        {
            // Only a 16-bit IRET under CR4.VME is allowed (SDM IRET, virtual-8086 mode with VME).
            if ((c.Cr4 & CpuState.Cr4Vme) == 0 || size != 2) return e.Raise(PendingException.Gp0);
            vmeIret = true;
        }
        if (mode != CpuMode.Real && mode != CpuMode.Virtual8086 && (old & CpuState.FlagNt) != 0)
            return (c.Efer & CpuState.EferLma) != 0 ? e.Raise(PendingException.Gp0) : e.TaskReturn(i.NextIP & Mask(e._bitness / 8));
        int ss = e.StackAddrSize();
        ulong sm = Mask(ss);
        ulong sp = c.Gpr[4] & sm;
        if (!e.StackRead(sp, size, out ulong ip) || !e.StackRead((sp + (ulong)size) & sm, size, out ulong csv)
            || !e.StackRead((sp + 2 * (ulong)size) & sm, size, out ulong fl)) return Exec.Fault;
        ushort sel = (ushort)csv;
        if (mode is CpuMode.Real or CpuMode.Virtual8086)
        {
            ulong target = ip & Mask(size);
            ref var cs = ref c.Segs[(int)Seg.Cs];
            var ncs = mode == CpuMode.Real ? new SegmentRegister(sel, cs.Descriptor with { Base = (ulong)sel << 4 })
                : new SegmentRegister(sel, new SegmentDescriptor((ulong)sel << 4, 0xffff, 0xf3));
            if (target > ncs.Descriptor.Limit) return e.Raise(PendingException.Gp0);
            if (vmeIret)
            {
                // IF goes to VIF; IOPL and IF stay. A set IF with VIP pending, or a set TF, is #GP(0).
                if (((fl & CpuState.FlagIf) != 0 && (old & CpuState.FlagVip) != 0) || (fl & CpuState.FlagTf) != 0) return e.Raise(PendingException.Gp0);
                ulong m = 0xfffful & ~(CpuState.FlagIf | CpuState.FlagIopl);
                c.Rflags = (old & ~(m | CpuState.FlagVif)) | (fl & m) | ((fl & CpuState.FlagIf) != 0 ? CpuState.FlagVif : 0) | 2;
                cs = ncs;
                c.Rip = target;
                SetGprSized(c, 4, ss, sp + 6);
                return Exec.Branch;
            }
            // VM, VIF and VIP never change here; virtual-8086 mode keeps IOPL too.
            ulong keep = CpuState.FlagVm | CpuState.FlagVif | CpuState.FlagVip | (mode == CpuMode.Virtual8086 ? CpuState.FlagIopl : 0);
            ulong mask = size == 2 ? 0xfffful : 0x257fd5ul; // SDM IRET: real-address mode EFLAGS mask
            mask &= ~keep;
            c.Rflags = (old & ~mask) | (fl & mask) | 2;
            cs = ncs;
            c.Rip = target;
            SetGprSized(c, 4, ss, sp + 3 * (ulong)size);
            return Exec.Branch;
        }
        int cpl = c.Cpl;
        bool ia32e = (c.Efer & CpuState.EferLma) != 0;
        if (!ia32e && size == 4 && (fl & CpuState.FlagVm) != 0 && cpl == 0) return e.IretToV86(sp, sm, ip, sel, fl);
        if ((sel & 0xfffc) == 0) return e.Raise(PendingException.Gp0);
        if (!e.ReadDescriptor(sel, out ulong raw, out ulong csAddr)) return Exec.Fault;
        int rpl = sel & 3;
        if (rpl < cpl) return e.Raise(GpSel(sel));
        var d = Segmentation.FromRaw(raw);
        if ((d.Access & DescS) == 0) return e.Raise(GpSel(sel));
        var x = e.CheckCodeDescriptor(sel, d, rpl, true, out var newCs);
        if (x != Exec.Next) return x;
        ulong rip = ip & Mask(size);
        if (!e.FarTargetOk(newCs, rip)) return Exec.Fault;
        bool outer = rpl > cpl;
        ulong newSp = sp + 3 * (ulong)size;
        SegmentRegister newSs = c.Segs[(int)Seg.Ss];
        ulong ssAddr = 0, ssRaw = 0;
        if (outer || c.Mode == CpuMode.Long64)
        {
            // An outer return (and every IRET in 64-bit mode) also pops SS:RSP.
            if (!e.StackRead((sp + 3 * (ulong)size) & sm, size, out ulong rspv) || !e.StackRead((sp + 4 * (ulong)size) & sm, size, out ulong ssv)) return Exec.Fault;
            bool to64 = ia32e && newCs.Descriptor.Long;
            if (!e.CheckReturnStack((ushort)ssv, rpl, to64, out newSs, out ssAddr, out ssRaw)) return Exec.Fault;
            newSp = to64 ? rspv : newSs.Descriptor.Default32 ? (uint)rspv : (c.Gpr[4] & ~0xfffful) | (ushort)rspv;
        }
        if (!e.SetAccessed(csAddr, raw)) return Exec.Fault;
        if (ssRaw != 0 && !e.SetAccessed(ssAddr, ssRaw)) return Exec.Fault;
        // RFLAGS: IOPL only at CPL 0, IF only when CPL ≤ IOPL; VIF/VIP only at CPL 0; VM is never set here.
        ulong changeable = CpuState.StatusFlags | CpuState.FlagTf | CpuState.FlagDf | CpuState.FlagNt | CpuState.FlagRf
            | CpuState.FlagAc | CpuState.FlagId | CpuState.FlagIf | CpuState.FlagIopl | CpuState.FlagVif | CpuState.FlagVip;
        if (size == 2) changeable &= 0xffff;
        if (cpl > 0) changeable &= ~(CpuState.FlagIopl | CpuState.FlagVif | CpuState.FlagVip);
        if (cpl > e.IopL) changeable &= ~CpuState.FlagIf;
        c.Rflags = (old & ~changeable) | (fl & changeable) | 2;
        c.Segs[(int)Seg.Cs] = newCs;
        c.Rip = rip;
        if (outer || mode == CpuMode.Long64) c.Segs[(int)Seg.Ss] = newSs;
        if (outer || mode == CpuMode.Long64)
        {
            if (ia32e && newCs.Descriptor.Long) c.Gpr[4] = newSp;
            else SetGprSized(c, 4, newSs.Descriptor.Default32 ? 4 : 2, newSp);
        }
        else SetGprSized(c, 4, ss, newSp);
        if (outer) e.NullInaccessibleDataSegments(rpl);
        return Exec.Branch;
    }

    /// <summary>
    /// IRETD from CPL 0 with VM set in the popped EFLAGS (SDM IRET, RETURN-TO-VIRTUAL-8086-MODE): after EIP, CS and EFLAGS
    /// come ESP, SS, ES, DS, FS, GS (32-bit slots, upper halves ignored); every segment becomes real-mode style
    /// (base = selector × 16, limit 0xFFFF, DPL 3) and the whole EFLAGS image is loaded. Nothing changes if a pop faults.
    /// </summary>
    private Exec IretToV86(ulong sp, ulong sm, ulong ip, ushort cs, ulong fl)
    {
        var c = _cpu;
        Span<ulong> v = stackalloc ulong[6];
        for (int k = 0; k < 6; k++)
            if (!StackRead((sp + 12 + 4 * (ulong)k) & sm, 4, out v[k])) return Exec.Fault;
        c.Rflags = (fl & 0x3f7fd5) | 2;
        c.Gpr[4] = (uint)v[0];
        SetV86Segment(Seg.Ss, (ushort)v[1]);
        SetV86Segment(Seg.Es, (ushort)v[2]);
        SetV86Segment(Seg.Ds, (ushort)v[3]);
        SetV86Segment(Seg.Fs, (ushort)v[4]);
        SetV86Segment(Seg.Gs, (ushort)v[5]);
        SetV86Segment(Seg.Cs, cs);
        c.Rip = (uint)ip;
        return Exec.Branch;
    }

    private void SetV86Segment(Seg s, ushort sel) => _cpu.Segs[(int)s] = new SegmentRegister(sel, new SegmentDescriptor((ulong)sel << 4, 0xffff, 0xf3));

    /// <summary>
    /// Checks the SS popped by a return to privilege <paramref name="rpl"/> (IRET, RETF): null only into 64-bit mode below
    /// CPL 3, otherwise RPL = DPL = new CPL and writable data (#GP(selector)), present (#SS(selector)).
    /// </summary>
    private bool CheckReturnStack(ushort ssSel, int rpl, bool to64, out SegmentRegister ss, out ulong addr, out ulong raw)
    {
        ss = default; addr = 0; raw = 0;
        if ((ssSel & 0xfffc) == 0)
        {
            if (!to64 || rpl == 3) return RaiseFalse(PendingException.Gp0);
            ss = new SegmentRegister(ssSel, new SegmentDescriptor(0, 0, SegmentDescriptor.Unusable | (uint)(rpl << 5) | DescS | 3));
            return true;
        }
        if ((ssSel & 3) != rpl) return RaiseFalse(GpSel(ssSel));
        if (!ReadDescriptor(ssSel, out raw, out addr)) return false;
        var sd = Segmentation.FromRaw(raw);
        if ((sd.Access & DescS) == 0 || (sd.Access & TypeCode) != 0 || (sd.Access & TypeReadWrite) == 0 || sd.Dpl != rpl) return RaiseFalse(GpSel(ssSel));
        if (!sd.Present) return RaiseFalse(SsSel(ssSel));
        ss = new SegmentRegister(ssSel, sd with { Access = sd.Access | TypeAccessed });
        return true;
    }

    private bool StackRead(ulong sp, int size, out ulong v)
    {
        v = 0;
        return Resolve(Seg.Ss, sp, size, PageAccess.Read, out var loc) && ReadLoc(loc, out v);
    }

    /// <summary>After a return to an outer level, ES/DS/FS/GS holding data or non-conforming code more privileged than the new CPL become null.</summary>
    private void NullInaccessibleDataSegments(int cpl)
    {
        var c = _cpu;
        for (int s = 0; s < 6; s++)
        {
            if (s is (int)Seg.Cs or (int)Seg.Ss) continue;
            var d = c.Segs[s].Descriptor;
            if ((d.Access & SegmentDescriptor.Unusable) != 0) continue;
            bool conformingCode = (d.Access & (TypeCode | TypeConforming)) == (TypeCode | TypeConforming);
            if (!conformingCode && d.Dpl < cpl)
            {
                // FS/GS keep their base in 64-bit mode; the selector reads 0 afterwards.
                ulong keep = s is (int)Seg.Fs or (int)Seg.Gs && (c.Efer & CpuState.EferLma) != 0 ? d.Base : 0;
                c.Segs[s] = new SegmentRegister(0, new SegmentDescriptor(keep, 0, SegmentDescriptor.Unusable));
            }
        }
    }
}
