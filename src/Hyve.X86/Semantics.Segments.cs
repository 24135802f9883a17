// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // Segment-register loads and far control transfers (SDM Vol. 3 5.5-5.8, Vol. 2 MOV/POP/LDS/JMP/CALL/RET).
    // Every load goes through one descriptor fetch and one set of checks; nothing is committed until all
    // checks (including the target's limit) pass, so a fault leaves the state as it was.

    private const uint TypeCode = 8, TypeConforming = 4, TypeReadWrite = 2, TypeAccessed = 1, DescS = 0x10;

    private bool RaiseFalse(PendingException e) { Raise(e); return false; }

    private static PendingException GpSel(ushort sel) => new(Vector.GP, true, (uint)(sel & 0xfffc), 0);
    private static PendingException NpSel(ushort sel) => new(Vector.NP, true, (uint)(sel & 0xfffc), 0);
    private static PendingException SsSel(ushort sel) => new(Vector.SS, true, (uint)(sel & 0xfffc), 0);

    /// <summary>
    /// Reads the 8-byte descriptor a non-null selector names, from the GDT or (TI=1) the LDT, as an implicit supervisor
    /// access; #GP(selector) when it lies beyond the table limit.
    /// </summary>
    private bool ReadDescriptor(ushort sel, out ulong raw, out ulong address)
    {
        var c = _cpu;
        raw = 0; address = 0;
        ulong tableBase; uint tableLimit;
        if ((sel & 4) != 0)
        {
            var ldt = c.Ldtr.Descriptor;
            // A null or unusable LDTR has no table to index.
            if ((ldt.Access & SegmentDescriptor.Unusable) != 0 || (c.Ldtr.Selector & 0xfffc) == 0) return RaiseFalse(GpSel(sel));
            tableBase = ldt.Base; tableLimit = ldt.Limit;
        }
        else { tableBase = c.Gdtr.Base; tableLimit = c.Gdtr.Limit; }
        ulong off = (ulong)(sel & 0xfff8);
        if (off + 7 > tableLimit) { Raise(GpSel(sel)); return false; }
        address = tableBase + off;
        var r = _mem.Read(c, address, 8, PageAccess.Implicit, out raw);
        if (!r.IsOk) { _fault = r; return false; }
        return true;
    }

    /// <summary>Sets the accessed bit of a code/data descriptor in memory (a locked write in hardware) if it is clear.</summary>
    private bool SetAccessed(ulong address, ulong raw)
    {
        byte acc = (byte)(raw >> 40);
        if ((acc & TypeAccessed) != 0) return true;
        var r = _mem.TranslateSpan(_cpu, address + 5, 1, PageAccess.Write | PageAccess.Implicit, out ulong g0, out int l0, out ulong g1);
        if (r.IsOk) r = _mem.WriteTranslated(g0, l0, g1, 1, (byte)(acc | TypeAccessed));
        if (!r.IsOk) { _fault = r; return false; }
        return true;
    }

    /// <summary>
    /// Checks a load of <paramref name="sel"/> into data/stack segment register <paramref name="seg"/> and computes the
    /// new register value (SDM MOV, POP, LDS: protected-mode checks). <paramref name="address"/> is 0 when no descriptor
    /// is to be marked accessed.
    /// </summary>
    private bool CheckDataSegment(Seg seg, ushort sel, out SegmentRegister value, out ulong address, out ulong raw)
    {
        var c = _cpu;
        value = default; address = 0; raw = 0;
        var mode = c.Mode;
        if (mode == CpuMode.Real)
        {
            // Real mode changes the selector and base only; limit and attributes stay ("unreal" mode relies on it).
            var old = c.Segs[(int)seg].Descriptor;
            value = new SegmentRegister(sel, old with { Base = (ulong)sel << 4 });
            return true;
        }
        if (mode == CpuMode.Virtual8086)
        {
            value = new SegmentRegister(sel, new SegmentDescriptor((ulong)sel << 4, 0xffff, 0xf3));
            return true;
        }
        int cpl = c.Cpl, rpl = sel & 3;
        if ((sel & 0xfffc) == 0)
        {
            if (seg == Seg.Ss)
            {
                // A null SS is allowed only in 64-bit mode below CPL 3 with RPL = CPL (SDM MOV, POP, LSS).
                if (mode != CpuMode.Long64 || cpl == 3 || rpl != cpl) return RaiseFalse(PendingException.Gp0);
                value = new SegmentRegister(sel, new SegmentDescriptor(0, 0, SegmentDescriptor.Unusable | (uint)(cpl << 5) | DescS | 3));
                return true;
            }
            // In 64-bit mode FS/GS keep their base (it is programmed through MSRs and not discarded by a null load).
            ulong keep = mode == CpuMode.Long64 && seg is Seg.Fs or Seg.Gs ? c.Segs[(int)seg].Descriptor.Base : 0;
            value = new SegmentRegister(sel, new SegmentDescriptor(keep, 0, SegmentDescriptor.Unusable));
            return true;
        }
        if (!ReadDescriptor(sel, out raw, out address)) return false;
        var d = Segmentation.FromRaw(raw);
        uint type = d.Access & 0xf;
        if ((d.Access & DescS) == 0) return RaiseFalse(GpSel(sel));
        if (seg == Seg.Ss)
        {
            if (rpl != cpl || (type & TypeCode) != 0 || (type & TypeReadWrite) == 0 || d.Dpl != cpl) return RaiseFalse(GpSel(sel));
            if (!d.Present) return RaiseFalse(SsSel(sel));
        }
        else
        {
            bool code = (type & TypeCode) != 0;
            if (code && (type & TypeReadWrite) == 0) return RaiseFalse(GpSel(sel)); // execute-only code
            bool conforming = code && (type & TypeConforming) != 0;
            if (!conforming && (rpl > d.Dpl || cpl > d.Dpl)) return RaiseFalse(GpSel(sel));
            if (!d.Present) return RaiseFalse(NpSel(sel));
        }
        value = new SegmentRegister(sel, d with { Access = d.Access | TypeAccessed });
        return true;
    }

    /// <summary>Loads a data or stack segment register with every check; false with the fault pending.</summary>
    private bool LoadSegment(Seg seg, ushort sel)
    {
        if (!CheckDataSegment(seg, sel, out var v, out ulong addr, out ulong raw)) return false;
        if (addr != 0 || raw != 0) { if (!SetAccessed(addr, raw)) return false; }
        _cpu.Segs[(int)seg] = v;
        if (seg == Seg.Ss) _cpu.InterruptShadow |= CpuState.ShadowMovSs;
        return true;
    }

    /// <summary>
    /// Checks a direct far JMP/CALL target selector and computes the new CS. Exec.Next = go ahead; Exec.Restart = a call
    /// gate, task gate or TSS descriptor (cs holds its selector and descriptor).
    /// </summary>
    private Exec CheckFarCode(ushort sel, out SegmentRegister cs, out ulong address, out ulong raw)
    {
        var c = _cpu;
        cs = default; address = 0; raw = 0;
        var mode = c.Mode;
        if (mode == CpuMode.Real)
        {
            cs = new SegmentRegister(sel, c.Segs[(int)Seg.Cs].Descriptor with { Base = (ulong)sel << 4 });
            return Exec.Next;
        }
        if (mode == CpuMode.Virtual8086)
        {
            cs = new SegmentRegister(sel, new SegmentDescriptor((ulong)sel << 4, 0xffff, 0xf3));
            return Exec.Next;
        }
        if ((sel & 0xfffc) == 0) return Raise(PendingException.Gp0);
        if (!ReadDescriptor(sel, out raw, out address)) return Exec.Fault;
        var d = Segmentation.FromRaw(raw);
        if ((d.Access & DescS) == 0)
        {
            uint st = d.Access & 0xf;
            // Call gates (4, or 0xC: 32-bit, 64-bit in IA-32e mode) are followed by FarViaCallGate; task gates (5) and
            // TSSs (1, 9; busy ones fail FarToTask's checks) by FarToTask.
            bool longMode = (c.Efer & CpuState.EferLma) != 0;
            if (st == 0xc || (!longMode && st == 4)) { cs = new SegmentRegister(sel, d); return Exec.Restart; }
            if (!longMode && st is 1 or 5 or 9) { cs = new SegmentRegister(sel, d); return Exec.Restart; } // a task switch
            return Raise(GpSel(sel));
        }
        return CheckCodeDescriptor(sel, d, c.Cpl, false, out cs);
    }

    /// <summary>
    /// Code-segment checks shared by far JMP/CALL (<paramref name="ret"/> false: conforming DPL ≤ CPL, non-conforming
    /// RPL ≤ CPL and DPL = CPL) and far RET (<paramref name="ret"/> true, <paramref name="cpl"/> = RPL: conforming DPL ≤ RPL,
    /// non-conforming DPL = RPL), then presence and the IA-32e L/D combination.
    /// </summary>
    private Exec CheckCodeDescriptor(ushort sel, SegmentDescriptor d, int cpl, bool ret, out SegmentRegister cs)
    {
        cs = default;
        uint type = d.Access & 0xf;
        if ((type & TypeCode) == 0) return Raise(GpSel(sel));
        int rpl = sel & 3;
        if ((type & TypeConforming) != 0) { if (d.Dpl > cpl) return Raise(GpSel(sel)); }
        else if (ret ? d.Dpl != cpl : rpl > cpl || d.Dpl != cpl) return Raise(GpSel(sel));
        if (!d.Present) return Raise(NpSel(sel));
        if ((_cpu.Efer & CpuState.EferLma) != 0 && d.Long && d.Default32) return Raise(GpSel(sel));
        cs = new SegmentRegister((ushort)((sel & 0xfffc) | cpl), d with { Access = d.Access | TypeAccessed });
        return Exec.Next;
    }

    /// <summary>Checks a far target offset against the new CS: canonical for a 64-bit CS, within the limit otherwise (#GP(0)).</summary>
    private bool FarTargetOk(in SegmentRegister cs, ulong target)
    {
        var c = _cpu;
        bool to64 = (c.Efer & CpuState.EferLma) != 0 && (c.Cr0 & CpuState.Cr0Pe) != 0 && cs.Descriptor.Long;
        if (to64 ? !Segmentation.IsCanonical(c, target) : target > cs.Descriptor.Limit) { Raise(PendingException.Gp0); return false; }
        return true;
    }

    /// <summary>Reads the far pointer (offset then selector) of a m16:16/m16:32/m16:64 operand.</summary>
    private bool ReadFarPointer(ref Instruction i, int offSize, out ulong offset, out ushort sel)
    {
        offset = 0; sel = 0;
        ulong ea = EffectiveAddress(ref i, out int asz);
        var seg = SegOf(i.MemorySegment);
        if (!Resolve(seg, ea, offSize, PageAccess.Read, out var lo) || !ReadLoc(lo, out offset)) return false;
        if (!Resolve(seg, (ea + (ulong)offSize) & Mask(asz), 2, PageAccess.Read, out var hi) || !ReadLoc(hi, out ulong s)) return false;
        sel = (ushort)s;
        return true;
    }

    private static int FarPointerOffsetSize(ref Instruction i) => i.MemorySize switch
    {
        MemorySize.SegPtr16 => 2,
        MemorySize.SegPtr32 => 4,
        _ => 8,
    };

    /// <summary>JMP ptr16:16/ptr16:32 and JMP m16:16/m16:32/m16:64.</summary>
    private static Exec FarJmpCall(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        ulong offset; ushort sel; int size;
        switch (i.Op0Kind)
        {
            case OpKind.FarBranch16: offset = i.FarBranch16; sel = i.FarBranchSelector; size = 2; break;
            case OpKind.FarBranch32: offset = i.FarBranch32; sel = i.FarBranchSelector; size = 4; break;
            case OpKind.Memory:
                size = FarPointerOffsetSize(ref i);
                if (!e.ReadFarPointer(ref i, size, out offset, out sel)) return Exec.Fault;
                break;
            default: return Exec.Unsupported;
        }
        var x = e.CheckFarCode(sel, out var cs, out ulong addr, out ulong raw);
        if (x == Exec.Restart) return ((raw >> 40) & 0xf) is 1 or 5 or 9 ? e.FarToTask(ref i, sel, raw) : e.FarViaCallGate(ref i, sel, raw, addr);
        if (x != Exec.Next) return x;
        if (!e.FarTargetOk(cs, offset)) return Exec.Fault;
        ulong rsp = c.Gpr[4];
        if (i.Mnemonic == Mnemonic.Call)
        {
            // The return CS and offset are pushed with the operand size; a fault on either push undoes both.
            if (!e.PushValue(c.Segs[(int)Seg.Cs].Selector, size) || !e.PushValue(i.NextIP & Mask(size), size)) { c.Gpr[4] = rsp; return Exec.Fault; }
        }
        if (addr != 0 || raw != 0) { if (!e.SetAccessed(addr, raw)) { c.Gpr[4] = rsp; return Exec.Fault; } }
        c.Segs[(int)Seg.Cs] = cs;
        c.Rip = offset;
        return Exec.Branch;
    }

    /// <summary>
    /// Far JMP/CALL through a call gate (SDM Vol. 3 5.8.4-5.8.6): gate DPL ≥ max(CPL, RPL); JMP keeps the privilege level,
    /// CALL to a more privileged non-conforming segment switches to the TSS stack and copies the gate's parameter count.
    /// </summary>
    private Exec FarViaCallGate(ref Instruction i, ushort gateSel, ulong gateRaw, ulong gateAddr)
    {
        var c = _cpu;
        bool call = i.Mnemonic == Mnemonic.Call;
        bool ia32e = (c.Efer & CpuState.EferLma) != 0;
        int cpl = c.Cpl;
        var g = Segmentation.FromRaw(gateRaw);
        if (g.Dpl < cpl || g.Dpl < (gateSel & 3)) return Raise(GpSel(gateSel));
        if (!g.Present) return Raise(NpSel(gateSel));
        ulong hi = 0;
        if (ia32e)
        {
            // A 64-bit call gate takes 16 bytes; its upper type field must be 0.
            if ((ulong)(gateSel & 0xfff8) + 15 > ((gateSel & 4) != 0 ? c.Ldtr.Descriptor.Limit : c.Gdtr.Limit)) return Raise(GpSel(gateSel));
            var r = _mem.Read(c, gateAddr + 8, 8, PageAccess.Implicit, out hi);
            if (!r.IsOk) return Fail(r);
            if (((hi >> 40) & 0x1f) != 0) return Raise(GpSel(gateSel));
        }
        int gsize = ia32e ? 8 : (gateRaw >> 40 & 0xf) == 0xc ? 4 : 2;
        ulong offset = (gateRaw & 0xffff) | ((gateRaw >> 32) & 0xffff0000) | (ia32e ? hi << 32 : 0);
        if (gsize == 2) offset &= 0xffff;
        int paramCount = ia32e ? 0 : (int)(gateRaw >> 32) & 0x1f;
        ushort sel = (ushort)(gateRaw >> 16);
        if ((sel & 0xfffc) == 0) return Raise(PendingException.Gp0);
        if (!ReadDescriptor(sel, out ulong raw, out ulong addr)) return Exec.Fault;
        var d = Segmentation.FromRaw(raw);
        if ((d.Access & DescS) == 0 || (d.Access & TypeCode) == 0) return Raise(GpSel(sel));
        bool conforming = (d.Access & TypeConforming) != 0;
        if (conforming || call ? d.Dpl > cpl : d.Dpl != cpl) return Raise(GpSel(sel));
        if (!d.Present) return Raise(NpSel(sel));
        if (ia32e && (!d.Long || d.Default32)) return Raise(GpSel(sel));
        int newCpl = call && !conforming ? d.Dpl : cpl;
        var cs = new SegmentRegister((ushort)((sel & 0xfffc) | newCpl), d with { Access = d.Access | TypeAccessed });
        if (!FarTargetOk(cs, offset)) return Exec.Fault;
        var oldCs = c.Segs[(int)Seg.Cs];
        var oldSs = c.Segs[(int)Seg.Ss];
        ulong oldRsp = c.Gpr[4];
        if (call)
        {
            ulong ret = i.NextIP & Mask(_bitness / 8);
            if (newCpl < cpl)
            {
                if (!TssStack(newCpl, 0, ia32e, 0, out var newSs, out ulong newRsp)) return Exec.Fault;
                // Parameters are read from the caller's stack before the switch, then pushed in the same order.
                Span<ulong> args = stackalloc ulong[32];
                int oss = StackAddrSize();
                ulong osp = oldRsp & Mask(oss);
                for (int k = 0; k < paramCount; k++)
                    if (!StackRead((osp + (ulong)(k * gsize)) & Mask(oss), gsize, out args[k])) return Exec.Fault;
                c.Segs[(int)Seg.Ss] = newSs;
                c.Gpr[4] = newRsp;
                bool ok = FramePush(ia32e, oldSs.Selector, gsize) && FramePush(ia32e, oldRsp & Mask(gsize), gsize);
                for (int k = paramCount - 1; ok && k >= 0; k--) ok = FramePush(ia32e, args[k], gsize);
                ok = ok && FramePush(ia32e, oldCs.Selector, gsize) && FramePush(ia32e, ret, gsize);
                if (!ok) { c.Segs[(int)Seg.Ss] = oldSs; c.Gpr[4] = oldRsp; return Exec.Fault; }
            }
            else if (!FramePush(ia32e, oldCs.Selector, gsize) || !FramePush(ia32e, ret, gsize)) { c.Gpr[4] = oldRsp; return Exec.Fault; }
        }
        if (!SetAccessed(addr, raw)) { c.Segs[(int)Seg.Ss] = oldSs; c.Gpr[4] = oldRsp; return Exec.Fault; }
        c.Segs[(int)Seg.Cs] = cs;
        c.Rip = offset;
        return Exec.Branch;
    }

    /// <summary>RETF / RETF imm16 to the same or an outer privilege level (SS:rSP popped for the outer return).</summary>
    private static Exec FarRet(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code switch
        {
            Code.Retfw or Code.Retfw_imm16 => 2,
            Code.Retfd or Code.Retfd_imm16 => 4,
            _ => 8,
        };
        int ss = e.StackAddrSize();
        ulong sm = Mask(ss);
        ulong sp = c.Gpr[4] & sm;
        if (!e.Resolve(Seg.Ss, sp, size, PageAccess.Read, out var l0) || !e.ReadLoc(l0, out ulong ip)) return Exec.Fault;
        if (!e.Resolve(Seg.Ss, (sp + (ulong)size) & sm, size, PageAccess.Read, out var l1) || !e.ReadLoc(l1, out ulong csv)) return Exec.Fault;
        ushort sel = (ushort)csv;
        var mode = c.Mode;
        SegmentRegister cs;
        ulong addr = 0, raw = 0;
        if (mode == CpuMode.Real)
            cs = new SegmentRegister(sel, c.Segs[(int)Seg.Cs].Descriptor with { Base = (ulong)sel << 4 });
        else if (mode == CpuMode.Virtual8086)
            cs = new SegmentRegister(sel, new SegmentDescriptor((ulong)sel << 4, 0xffff, 0xf3));
        else
        {
            if ((sel & 0xfffc) == 0) return e.Raise(PendingException.Gp0);
            int rpl = sel & 3, cpl = c.Cpl;
            if (!e.ReadDescriptor(sel, out raw, out addr)) return Exec.Fault;
            if (rpl < cpl) return e.Raise(GpSel(sel));
            var d = Segmentation.FromRaw(raw);
            if ((d.Access & DescS) == 0) return e.Raise(GpSel(sel));
            var x = e.CheckCodeDescriptor(sel, d, rpl, true, out cs);
            if (x != Exec.Next) return x;
        }
        ulong target = ip & Mask(size);
        if (!e.FarTargetOk(cs, target)) return Exec.Fault;
        ulong extra = i.OpCount > 0 ? i.GetImmediate(0) : 0;
        bool outer = mode is not (CpuMode.Real or CpuMode.Virtual8086) && (sel & 3) > c.Cpl;
        if (outer)
        {
            // Return to an outer level: SS:rSP follow the parameters on the callee's stack; imm16 is released on both stacks.
            ulong at = (sp + 2 * (ulong)size + extra) & sm;
            if (!e.StackRead(at, size, out ulong rspv) || !e.StackRead((at + (ulong)size) & sm, size, out ulong ssv)) return Exec.Fault;
            bool to64 = (c.Efer & CpuState.EferLma) != 0 && cs.Descriptor.Long;
            if (!e.CheckReturnStack((ushort)ssv, sel & 3, to64, out var newSs, out ulong ssAddr, out ulong ssRaw)) return Exec.Fault;
            if (!e.SetAccessed(addr, raw) || (ssRaw != 0 && !e.SetAccessed(ssAddr, ssRaw))) return Exec.Fault;
            c.Segs[(int)Seg.Cs] = cs;
            c.Segs[(int)Seg.Ss] = newSs;
            c.Rip = target;
            ulong nsp = (rspv & Mask(size)) + extra;
            if (to64) c.Gpr[4] = nsp;
            else SetGprSized(c, 4, newSs.Descriptor.Default32 ? 4 : 2, nsp);
            e.NullInaccessibleDataSegments(sel & 3);
            return Exec.Branch;
        }
        if (addr != 0 || raw != 0) { if (!e.SetAccessed(addr, raw)) return Exec.Fault; }
        c.Segs[(int)Seg.Cs] = cs;
        c.Rip = target;
        SetGprSized(c, 4, ss, sp + 2 * (ulong)size + extra);
        return Exec.Branch;
    }

    /// <summary>MOV Sreg, r/m16 (MOV to CS is #UD) and MOV r/m, Sreg.</summary>
    private static Exec MovSreg(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        if (i.Op0Kind == OpKind.Register && i.Op0Register.IsSegmentRegister())
        {
            var seg = SegOf(i.Op0Register);
            if (seg == Seg.Cs) return e.Raise(PendingException.Ud);
            if (!e.ReadOp(ref i, 1, 2, out ulong v)) return Exec.Fault;
            return e.LoadSegment(seg, (ushort)v) ? Exec.Next : Exec.Fault;
        }
        ulong sel = c.Segs[(int)SegOf(i.Op1Register)].Selector;
        // A register destination gets the selector zero-extended; a memory destination is always 16 bits.
        if (i.Op0Kind == OpKind.Register) { SetGpr(c, i.Op0Register, sel); return Exec.Next; }
        return e.WriteOp(ref i, 0, 2, sel) ? Exec.Next : Exec.Fault;
    }

    /// <summary>POP DS/ES/SS/FS/GS: the segment load happens before RSP moves, so a faulting load leaves RSP unchanged.</summary>
    private static Exec PopSreg(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = e.StackOperandSizePop(ref i);
        int ss = e.StackAddrSize();
        ulong sp = c.Gpr[4] & Mask(ss);
        if (!e.Resolve(Seg.Ss, sp, size, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out ulong v)) return Exec.Fault;
        if (!e.LoadSegment(SegOf(i.Op0Register), (ushort)v)) return Exec.Fault;
        SetGprSized(c, 4, ss, sp + (ulong)size);
        return Exec.Next;
    }

    /// <summary>PUSH ES/CS/SS/DS/FS/GS: the selector zero-extended to the operand size.</summary>
    private static Exec PushSreg(InstructionEngine e, ref Instruction i)
    {
        int size = e.StackOperandSize(ref i);
        return e.PushValue(e._cpu.Segs[(int)SegOf(i.Op0Register)].Selector, size) ? Exec.Next : Exec.Fault;
    }

    private int StackOperandSizePop(ref Instruction i) => i.StackPointerIncrement is int inc && inc > 0 ? inc : _bitness / 8;

    /// <summary>LDS/LES/LFS/LGS/LSS r, m16:xx: the segment is loaded (with all checks) before the register is written.</summary>
    private static Exec LoadFarPointer(InstructionEngine e, ref Instruction i)
    {
        int size = OpSize(ref i, 0);
        if (!e.ReadFarPointer(ref i, size, out ulong offset, out ushort sel)) return Exec.Fault;
        var seg = i.Mnemonic switch
        {
            Mnemonic.Lds => Seg.Ds,
            Mnemonic.Les => Seg.Es,
            Mnemonic.Lfs => Seg.Fs,
            Mnemonic.Lgs => Seg.Gs,
            _ => Seg.Ss,
        };
        if (!e.LoadSegment(seg, sel)) return Exec.Fault;
        if (seg == Seg.Ss) e._cpu.InterruptShadow &= unchecked((byte)~CpuState.ShadowMovSs); // only MOV SS and POP SS block interrupts, not LSS
        SetGpr(e._cpu, i.Op0Register, offset);
        return Exec.Next;
    }
}

public sealed unsafe partial class InstructionEngine
{
    /// <summary>
    /// LAR/LSL/VERR/VERW: probe a selector without faulting on it (ZF reports the outcome); only the descriptor
    /// read itself may fault (#PF). #UD in real and virtual-8086 mode.
    /// </summary>
    private static Exec ProbeSelector(InstructionEngine e, ref Instruction i)
    {
        if (e.IsRealOrV86) return e.Raise(PendingException.Ud);
        var c = e._cpu;
        var m = i.Mnemonic;
        int src = m is Mnemonic.Lar or Mnemonic.Lsl ? 1 : 0;
        if (!e.ReadOp(ref i, src, 2, out ulong v)) return Exec.Fault;
        ushort sel = (ushort)v;
        bool ok = false;
        ulong raw = 0;
        if ((sel & 0xfffc) != 0)
        {
            // Beyond the table limit (or no LDT) is "not accessible", not a fault.
            ulong tableLimit = (sel & 4) != 0 ? ((c.Ldtr.Descriptor.Access & SegmentDescriptor.Unusable) != 0 || (c.Ldtr.Selector & 0xfffc) == 0 ? 0 : c.Ldtr.Descriptor.Limit + 1ul) : c.Gdtr.Limit + 1ul;
            if ((ulong)(sel & 0xfff8) + 8 <= tableLimit)
            {
                if (!e.ReadDescriptor(sel, out raw, out _)) return Exec.Fault;
                ok = e.SelectorVisible(m, sel, Segmentation.FromRaw(raw));
            }
        }
        e.SetFlags(ZF, ok ? ZF : 0);
        if (ok && src == 1)
        {
            var d = Segmentation.FromRaw(raw);
            ulong r = m == Mnemonic.Lar ? (raw >> 32) & 0x00f0ff00 : d.Limit;
            SetGpr(c, i.Op0Register, OpSize(ref i, 0) == 2 ? r & 0xffff : r);
        }
        return Exec.Next;
    }

    /// <summary>The type and privilege rules of LAR, LSL, VERR and VERW (SDM Vol. 2).</summary>
    private bool SelectorVisible(Mnemonic m, ushort sel, SegmentDescriptor d)
    {
        int cpl = _cpu.Cpl, rpl = sel & 3;
        uint type = d.Access & 0xf;
        bool ia32e = (_cpu.Efer & CpuState.EferLma) != 0;
        bool system = (d.Access & DescS) == 0;
        bool code = !system && (type & TypeCode) != 0;
        bool conforming = code && (type & TypeConforming) != 0;
        if (system)
        {
            if (m is Mnemonic.Verr or Mnemonic.Verw) return false;
            bool valid = m == Mnemonic.Lar
                ? (ia32e ? type is 2 or 9 or 0xb or 0xc : type is 1 or 2 or 3 or 4 or 5 or 9 or 0xb or 0xc)
                : (ia32e ? type is 2 or 9 or 0xb : type is 1 or 2 or 3 or 9 or 0xb);
            if (!valid) return false;
        }
        else if (m == Mnemonic.Verr && code && (type & TypeReadWrite) == 0) return false;
        else if (m == Mnemonic.Verw && (code || (type & TypeReadWrite) == 0)) return false;
        if (!conforming && (d.Dpl < cpl || d.Dpl < rpl)) return false;
        return true;
    }
}
