// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // Hardware task switches (SDM Vol. 3 chapter 7, Vol. 2 JMP/CALL/INT n/IRET TASK-GATE and TASK-RETURN): JMP/CALL far to a
    // TSS descriptor or a task gate, interrupts and exceptions through an IDT task gate, and IRET with NT set. 32-bit and
    // 16-bit TSSs in legacy protected mode (IA-32e mode has no task switching: those paths raise #GP before getting here).
    // Everything that can fault before the switch commits (descriptor checks, reading the new TSS, writing the old one) is
    // done first; faults while loading the new task's segments happen in the new task's context, as the SDM says.

    private enum TaskSource { Jmp, Call, Iret, Interrupt }

    // 32-bit TSS offsets (SDM Vol. 3 Figure 7-2) and 16-bit TSS offsets (Figure 7-11).
    private static ReadOnlySpan<byte> Tss32Gpr => [0x28, 0x2c, 0x30, 0x34, 0x38, 0x3c, 0x40, 0x44];
    private static ReadOnlySpan<byte> Tss16Gpr => [0x12, 0x14, 0x16, 0x18, 0x1a, 0x1c, 0x1e, 0x20];

    /// <summary>Offset of segment register <paramref name="s"/> (ES..GS order) in a 32-bit or 16-bit TSS.</summary>
    private static uint TssSegOffset(bool tss32, int s) => tss32 ? 0x48u + 4 * (uint)s : 0x22u + 2 * (uint)s;

    /// <summary>
    /// JMP/CALL far whose selector names an available TSS (type 1/9) or a task gate (type 5), SDM JMP/CALL TASK-GATE and
    /// TASK-STATE-SEGMENT: the descriptor's DPL must be ≥ CPL and ≥ RPL (#GP(selector)), it must be present (#NP(selector)).
    /// </summary>
    private Exec FarToTask(ref Instruction i, ushort sel, ulong raw)
    {
        var c = _cpu;
        var d = Segmentation.FromRaw(raw);
        int cpl = c.Cpl;
        if (d.Dpl < cpl || d.Dpl < (sel & 3)) return Raise(GpSel(sel));
        if (!d.Present) return Raise(NpSel(sel));
        if ((d.Access & 0x1f) == 5)
        {
            // A task gate names the TSS in its selector field; the TSS must be in the GDT.
            sel = (ushort)(raw >> 16);
            if ((sel & 4) != 0 || (ulong)(sel & 0xfff8) + 7 > c.Gdtr.Limit) return Raise(GpSel(sel));
            if (!ReadDescriptor(sel, out raw, out _)) return Exec.Fault;
            uint t = (uint)(raw >> 40) & 0x1f;
            if (t is not (1 or 9)) return Raise(GpSel(sel)); // busy or not a TSS
            if (((raw >> 47) & 1) == 0) return Raise(NpSel(sel));
        }
        else if ((sel & 4) != 0) return Raise(GpSel(sel));
        var src = i.Mnemonic == Mnemonic.Call ? TaskSource.Call : TaskSource.Jmp;
        return SwitchTask(sel, raw, src, i.NextIP & Mask(_bitness / 8), 0, false, 0);
    }

    /// <summary>An interrupt or exception through an IDT task gate (SDM INT n TASK-GATE): the TSS must be in the GDT and available.</summary>
    private Exec DeliverThroughTaskGate(ulong gate, uint extBit, bool hasError, uint error, ulong returnIp)
    {
        var c = _cpu;
        ushort sel = (ushort)(gate >> 16);
        if ((sel & 4) != 0 || (ulong)(sel & 0xfff8) + 7 > c.Gdtr.Limit) return Raise(new PendingException(Vector.GP, true, (uint)(sel & 0xfffc) | extBit, 0));
        if (!ReadDescriptor(sel, out ulong raw, out _)) return Exec.Fault;
        uint t = (uint)(raw >> 40) & 0x1f;
        if (t is not (1 or 9)) return Raise(new PendingException(Vector.GP, true, (uint)(sel & 0xfffc) | extBit, 0));
        if (((raw >> 47) & 1) == 0) return Raise(new PendingException(Vector.NP, true, (uint)(sel & 0xfffc) | extBit, 0));
        return SwitchTask(sel, raw, TaskSource.Interrupt, returnIp, extBit, hasError, error);
    }

    /// <summary>IRET with NT set (SDM IRET TASK-RETURN): back to the task named by the current TSS's link field, which must be busy.</summary>
    private Exec TaskReturn(ulong returnIp)
    {
        var c = _cpu;
        if (!ReadTss(0, 2, 0, out ulong link)) return Exec.Fault;
        ushort sel = (ushort)link;
        if ((sel & 4) != 0 || (sel & 0xfffc) == 0 || (ulong)(sel & 0xfff8) + 7 > c.Gdtr.Limit) return Raise(new PendingException(Vector.TS, true, (uint)(sel & 0xfffc), 0));
        if (!ReadDescriptor(sel, out ulong raw, out _)) return Exec.Fault;
        uint t = (uint)(raw >> 40) & 0x1f;
        if (t is not (3 or 0xb)) return Raise(new PendingException(Vector.TS, true, (uint)(sel & 0xfffc), 0));
        if (((raw >> 47) & 1) == 0) return Raise(new PendingException(Vector.NP, true, (uint)(sel & 0xfffc), 0));
        return SwitchTask(sel, raw, TaskSource.Iret, returnIp, 0, false, 0);
    }

    /// <summary>
    /// The task switch proper (SDM Vol. 3 7.3, steps 3-13) to the TSS descriptor <paramref name="raw"/> of GDT selector
    /// <paramref name="sel"/>: limit check, the outgoing state saved into the current TSS, busy bits, link and NT for a
    /// nested switch, TR, CR0.TS, CR3, LDTR and the new registers; an exception's error code is pushed on the new stack.
    /// </summary>
    private Exec SwitchTask(ushort sel, ulong raw, TaskSource src, ulong returnIp, uint extBit, bool hasError, uint error)
    {
        var c = _cpu;
        var nd = Segmentation.FromRaw(raw);
        bool new32 = (nd.Access & 8) != 0;
        var ts = new PendingException(Vector.TS, true, (uint)(sel & 0xfffc) | extBit, 0);
        if (nd.Limit < (new32 ? 0x67u : 0x2bu)) return Raise(ts);
        var cur = c.Tr;
        bool cur32 = (cur.Descriptor.Access & 8) != 0;
        if (cur.Descriptor.Limit < (cur32 ? 0x5fu : 0x29u)) return Raise(new PendingException(Vector.TS, true, (uint)(cur.Selector & 0xfffc) | extBit, 0));

        // Read everything the new task needs before changing anything.
        ulong nb = nd.Base;
        int w = new32 ? 4 : 2;
        Span<ulong> gpr = stackalloc ulong[8];
        Span<ushort> segs = stackalloc ushort[6];
        ulong cr3 = 0, eip, fl, ldt;
        if (!TssRead(nb + (new32 ? 0x20u : 0xeu), w, out eip) || !TssRead(nb + (new32 ? 0x24u : 0x10u), w, out fl)
            || !TssRead(nb + (new32 ? 0x60u : 0x2au), 2, out ldt)) return Exec.Fault;
        ulong tFlag = 0;
        if (new32 && (!TssRead(nb + 0x1c, 4, out cr3) || !TssRead(nb + 0x64, 2, out tFlag))) return Exec.Fault;
        for (int r = 0; r < 8; r++) if (!TssRead(nb + (new32 ? Tss32Gpr[r] : Tss16Gpr[r]), w, out gpr[r])) return Exec.Fault;
        for (int s = 0; s < 6; s++) { if (!TssRead(nb + TssSegOffset(new32, s), 2, out ulong v)) return Exec.Fault; segs[s] = (ushort)v; }

        // Save the outgoing task (EIP, EFLAGS, general and segment registers; not CR3 or LDTR). IRET saves NT clear.
        ulong outFlags = c.Rflags | (_pushRf ? CpuState.FlagRf : 0);
        if (src == TaskSource.Iret) outFlags &= ~CpuState.FlagNt;
        ulong ob = cur.Descriptor.Base;
        int ow = cur32 ? 4 : 2;
        if (!TssWrite(ob + (cur32 ? 0x20u : 0xeu), ow, returnIp) || !TssWrite(ob + (cur32 ? 0x24u : 0x10u), ow, outFlags)) return Exec.Fault;
        for (int r = 0; r < 8; r++) if (!TssWrite(ob + (cur32 ? Tss32Gpr[r] : Tss16Gpr[r]), ow, c.Gpr[r])) return Exec.Fault;
        for (int s = 0; s < 6; s++) if (!TssWrite(ob + TssSegOffset(cur32, s), 2, c.Segs[s].Selector)) return Exec.Fault;

        // Busy bits: JMP and IRET leave the old task; CALL and interrupts nest (old stays busy, new gets the link and NT).
        bool nest = src is TaskSource.Call or TaskSource.Interrupt;
        if (src is TaskSource.Jmp or TaskSource.Iret && !SetTssBusy(cur.Selector, false)) return Exec.Fault;
        if (nest)
        {
            if (!TssWrite(nb, 2, cur.Selector)) return Exec.Fault;
            fl |= CpuState.FlagNt;
        }
        if (src != TaskSource.Iret && !SetTssBusy(sel, true)) return Exec.Fault;

        // Commit: TR, CR0.TS, CR3, the registers; DR7's local enables are cleared on every task switch (SDM 18.2.4).
        c.Tr = new SegmentRegister(sel, nd with { Access = nd.Access | 2 });
        c.Cr0 |= CpuState.Cr0Ts;
        if (new32 && (c.Cr0 & CpuState.Cr0Pg) != 0)
        {
            if (c.Paging == PagingMode.Pae && !PdptesValid((uint)cr3)) return Exec.Fault;
            c.Cr3 = (uint)cr3;
            _mem.Walker.Tlb?.MovToCr3(c, false);
        }
        ulong defined = new32 ? 0x3f7fd5ul : 0x7fd5ul;
        c.Rflags = (new32 ? fl & defined : (c.Rflags & ~0xfffful & ~CpuState.FlagVm) | (fl & defined)) | 2;
        for (int r = 0; r < 8; r++) c.Gpr[r] = new32 ? (uint)gpr[r] : (c.Gpr[r] & ~0xfffful) | (ushort)gpr[r];
        c.Rip = new32 ? (uint)eip : (ushort)eip;
        c.Dr[7] &= ~0x155ul;
        c.InterruptShadow = 0;

        // The new task's LDTR and segment registers; faults from here on belong to the new task.
        for (int s = 0; s < 6; s++) c.Segs[s] = new SegmentRegister(segs[s], new SegmentDescriptor(0, 0, SegmentDescriptor.Unusable));
        c.Ldtr = new SegmentRegister((ushort)ldt, new SegmentDescriptor(0, 0, SegmentDescriptor.Unusable));
        if (!TaskLoadLdt((ushort)ldt, extBit)) return Exec.Fault;
        if ((c.Rflags & CpuState.FlagVm) != 0)
        {
            for (int s = 0; s < 6; s++) SetV86Segment((Seg)s, segs[s]);
        }
        else
        {
            int cpl = segs[(int)Seg.Cs] & 3;
            if (!TaskLoadSegment(Seg.Cs, segs[(int)Seg.Cs], cpl, extBit) || !TaskLoadSegment(Seg.Ss, segs[(int)Seg.Ss], cpl, extBit)) return Exec.Fault;
            foreach (var s in (ReadOnlySpan<Seg>)[Seg.Ds, Seg.Es, Seg.Fs, Seg.Gs])
                if (!TaskLoadSegment(s, segs[(int)s], cpl, extBit)) return Exec.Fault;
        }
        if (hasError && !PushValueSized(error, new32 ? 4 : 2)) return Exec.Fault;
        if (c.Rip > c.Segs[(int)Seg.Cs].Descriptor.Limit) return Raise(new PendingException(Vector.GP, true, extBit, 0));
        if ((tFlag & 1) != 0)
        {
            // The new TSS's T flag: a debug trap once the switch is done, taken in the new task with DR6.BT set
            // (SDM Vol. 3 7.2.1 and 17.2.3).
            c.Dr[6] |= 1ul << 15;
            return Raise(new PendingException(Vector.DB, false, 0, 0));
        }
        return Exec.Branch;
    }

    private bool TssRead(ulong la, int size, out ulong v)
    {
        var r = _mem.Read(_cpu, la, size, PageAccess.Implicit, out v);
        if (!r.IsOk) { _fault = r; return false; }
        return true;
    }

    private bool TssWrite(ulong la, int size, ulong v)
    {
        var r = _mem.TranslateSpan(_cpu, la, size, PageAccess.Write | PageAccess.Implicit, out ulong g0, out int l0, out ulong g1);
        if (r.IsOk) r = _mem.WriteTranslated(g0, l0, g1, size, v);
        if (!r.IsOk) { _fault = r; return false; }
        return true;
    }

    /// <summary>Sets or clears the busy bit (type bit 1) of the GDT TSS descriptor <paramref name="sel"/>.</summary>
    private bool SetTssBusy(ushort sel, bool busy)
    {
        var c = _cpu;
        ulong at = c.Gdtr.Base + (ulong)(sel & 0xfff8) + 5;
        var r = _mem.Read(c, at, 1, PageAccess.Implicit, out ulong b);
        if (!r.IsOk) { _fault = r; return false; }
        return TssWrite(at, 1, busy ? b | 2 : b & ~2ul);
    }

    /// <summary>The new task's LDTR: null leaves it unusable; otherwise a present LDT descriptor in the GDT, else #TS(selector).</summary>
    private bool TaskLoadLdt(ushort sel, uint extBit)
    {
        var c = _cpu;
        if ((sel & 0xfffc) == 0) return true;
        var ts = new PendingException(Vector.TS, true, (uint)(sel & 0xfffc) | extBit, 0);
        if ((sel & 4) != 0 || (ulong)(sel & 0xfff8) + 7 > c.Gdtr.Limit) return RaiseFalse(ts);
        if (!ReadDescriptor(sel, out ulong raw, out _)) return false;
        var d = Segmentation.FromRaw(raw);
        if ((d.Access & 0x1f) != 2 || !d.Present) return RaiseFalse(ts);
        c.Ldtr = new SegmentRegister(sel, d);
        return true;
    }

    /// <summary>
    /// Loads one segment register of the new task with the SDM's task-switch checks (Vol. 3 Table 7-1): #TS(selector) for a
    /// wrong type or privilege, #NP(selector) (#SS for SS) when not present; null is allowed only for data segments.
    /// </summary>
    private bool TaskLoadSegment(Seg s, ushort sel, int cpl, uint extBit)
    {
        var c = _cpu;
        var ts = new PendingException(Vector.TS, true, (uint)(sel & 0xfffc) | extBit, 0);
        if ((sel & 0xfffc) == 0)
        {
            if (s is Seg.Cs or Seg.Ss) return RaiseFalse(ts);
            return true; // stays null and unusable
        }
        ulong tableLimit = (sel & 4) != 0 ? ((c.Ldtr.Descriptor.Access & SegmentDescriptor.Unusable) != 0 ? 0 : c.Ldtr.Descriptor.Limit + 1ul) : c.Gdtr.Limit + 1ul;
        if ((ulong)(sel & 0xfff8) + 8 > tableLimit) return RaiseFalse(ts);
        if (!ReadDescriptor(sel, out ulong raw, out ulong addr)) return false;
        var d = Segmentation.FromRaw(raw);
        uint type = d.Access & 0xf;
        bool code = (type & TypeCode) != 0, conforming = code && (type & TypeConforming) != 0;
        int rpl = sel & 3;
        if ((d.Access & DescS) == 0) return RaiseFalse(ts);
        var np = new PendingException(s == Seg.Ss ? Vector.SS : Vector.NP, true, (uint)(sel & 0xfffc) | extBit, 0);
        switch (s)
        {
            case Seg.Cs:
                if (!code || (conforming ? d.Dpl > rpl : d.Dpl != rpl)) return RaiseFalse(ts);
                break;
            case Seg.Ss:
                if (code || (type & TypeReadWrite) == 0 || rpl != cpl || d.Dpl != cpl) return RaiseFalse(ts);
                break;
            default:
                if (code && (type & TypeReadWrite) == 0) return RaiseFalse(ts);
                if (!conforming && (d.Dpl < cpl || d.Dpl < rpl)) return RaiseFalse(ts);
                break;
        }
        if (!d.Present) return RaiseFalse(np);
        if (!SetAccessed(addr, raw)) return false;
        c.Segs[(int)s] = new SegmentRegister(sel, d with { Access = d.Access | TypeAccessed });
        return true;
    }
}
