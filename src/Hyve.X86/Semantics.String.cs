// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // String instructions (SDM Vol. 2 MOVS/STOS/LODS/CMPS/SCAS/INS/OUTS and REP/REPE/REPNE).
    // Each iteration resolves every operand before any side effect, then updates RSI/RDI/RCX; a fault
    // part-way leaves the registers reflecting the completed iterations and RIP on the instruction.

    private static int StrAddrSize(OpKind k) => k switch
    {
        OpKind.MemorySegSI or OpKind.MemoryESDI => 2,
        OpKind.MemorySegESI or OpKind.MemoryESEDI => 4,
        _ => 8,
    };

    private static bool AnyRep(ref Instruction i) => i.HasRepPrefix || i.HasRepnePrefix;

    /// <summary>Before an iteration of a REP loop: false when the loop is over (count zero) or must pause.</summary>
    private bool RepContinue(bool rep, int asz, ref Exec exit)
    {
        if (!rep) return true;
        if ((_cpu.Gpr[1] & Mask(asz)) == 0) { exit = Exec.Next; return false; }
        if (_repDone >= MaxRepIterations)
        {
            // Stopped between iterations with RIP on the instruction: RF is set, so the RFLAGS image pushed for an
            // interrupt or a trap taken here has RF = 1 ("any iteration ... but the last", SDM Vol. 3 17.3.1.1) and the
            // resumed instruction is not hit by its own instruction breakpoint again. The resumed step clears it.
            _cpu.Rflags |= CpuState.FlagRf;
            exit = Exec.Restart;
            return false;
        }
        return true;
    }

    private void Advance(int reg, int asz, int size)
    {
        ulong v = _cpu.Gpr[reg];
        v = (_cpu.Rflags & DF) != 0 ? v - (ulong)size : v + (ulong)size;
        SetGprSized(_cpu, reg, asz, v & Mask(asz));
    }

    private void CountDown(bool rep, int asz)
    {
        if (!rep) return;
        SetGprSized(_cpu, 1, asz, (_cpu.Gpr[1] - 1) & Mask(asz));
        _repDone++;
    }

    private bool CountExhausted(int asz) => (_cpu.Gpr[1] & Mask(asz)) == 0;

    private static Exec Movs(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0), asz = StrAddrSize(i.Op1Kind);
        bool rep = AnyRep(ref i);
        var seg = SegOf(i.MemorySegment);
        Exec exit = Exec.Next;
        while (e.RepContinue(rep, asz, ref exit))
        {
            if (!e.Resolve(seg, c.Gpr[6] & Mask(asz), size, PageAccess.Read, out var src)) return Exec.Fault;
            if (!e.Resolve(Seg.Es, c.Gpr[7] & Mask(asz), size, PageAccess.Write, out var dst)) return Exec.Fault;
            if (!e.ReadLoc(src, out ulong v) || !e.WriteLoc(dst, v)) return Exec.Fault;
            e.Advance(6, asz, size);
            e.Advance(7, asz, size);
            e.CountDown(rep, asz);
            if (!rep) break;
        }
        return exit;
    }

    private static Exec Stos(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0), asz = StrAddrSize(i.Op0Kind);
        bool rep = AnyRep(ref i);
        ulong v = c.Gpr[0] & Mask(size);
        Exec exit = Exec.Next;
        while (e.RepContinue(rep, asz, ref exit))
        {
            if (!e.Resolve(Seg.Es, c.Gpr[7] & Mask(asz), size, PageAccess.Write, out var dst) || !e.WriteLoc(dst, v)) return Exec.Fault;
            e.Advance(7, asz, size);
            e.CountDown(rep, asz);
            if (!rep) break;
        }
        return exit;
    }

    private static Exec Lods(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 1), asz = StrAddrSize(i.Op1Kind);
        bool rep = AnyRep(ref i);
        var seg = SegOf(i.MemorySegment);
        Exec exit = Exec.Next;
        while (e.RepContinue(rep, asz, ref exit))
        {
            if (!e.Resolve(seg, c.Gpr[6] & Mask(asz), size, PageAccess.Read, out var src) || !e.ReadLoc(src, out ulong v)) return Exec.Fault;
            SetGprSized(c, 0, size, v);
            e.Advance(6, asz, size);
            e.CountDown(rep, asz);
            if (!rep) break;
        }
        return exit;
    }

    private static Exec Cmps(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0), asz = StrAddrSize(i.Op0Kind);
        bool repe = i.HasRepePrefix, repne = i.HasRepnePrefix, rep = repe || repne;
        var seg = SegOf(i.MemorySegment);
        Exec exit = Exec.Next;
        while (e.RepContinue(rep, asz, ref exit))
        {
            if (!e.Resolve(seg, c.Gpr[6] & Mask(asz), size, PageAccess.Read, out var src)) return Exec.Fault;
            if (!e.Resolve(Seg.Es, c.Gpr[7] & Mask(asz), size, PageAccess.Read, out var dst)) return Exec.Fault;
            if (!e.ReadLoc(src, out ulong a) || !e.ReadLoc(dst, out ulong b)) return Exec.Fault;
            SubWithFlags(a, b, 0, size, out ulong f);
            e.SetFlags(CpuState.StatusFlags, f);
            e.Advance(6, asz, size);
            e.Advance(7, asz, size);
            e.CountDown(rep, asz);
            if (!rep || e.CountExhausted(asz) || (repe && (f & ZF) == 0) || (repne && (f & ZF) != 0)) break;
        }
        return exit;
    }

    private static Exec Scas(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 1), asz = StrAddrSize(i.Op1Kind);
        bool repe = i.HasRepePrefix, repne = i.HasRepnePrefix, rep = repe || repne;
        ulong a = c.Gpr[0] & Mask(size);
        Exec exit = Exec.Next;
        while (e.RepContinue(rep, asz, ref exit))
        {
            if (!e.Resolve(Seg.Es, c.Gpr[7] & Mask(asz), size, PageAccess.Read, out var dst) || !e.ReadLoc(dst, out ulong b)) return Exec.Fault;
            SubWithFlags(a, b, 0, size, out ulong f);
            e.SetFlags(CpuState.StatusFlags, f);
            e.Advance(7, asz, size);
            e.CountDown(rep, asz);
            if (!rep || e.CountExhausted(asz) || (repe && (f & ZF) == 0) || (repne && (f & ZF) != 0)) break;
        }
        return exit;
    }

    private static Exec Ins(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0), asz = StrAddrSize(i.Op0Kind);
        bool rep = AnyRep(ref i);
        ushort port = (ushort)c.Gpr[2];
        if (!e.IoAllowed(port, size)) return Exec.Fault;
        Exec exit = Exec.Next;
        while (e.RepContinue(rep, asz, ref exit))
        {
            // Validate the destination before reading the port so a fault does not consume device data.
            if (!e.Resolve(Seg.Es, c.Gpr[7] & Mask(asz), size, PageAccess.Write, out var dst)) return Exec.Fault;
            ulong v = e.PortIn(port, size);
            if (!e.WriteLoc(dst, v)) return Exec.Fault;
            e.Advance(7, asz, size);
            e.CountDown(rep, asz);
            if (!rep) break;
        }
        return exit;
    }

    private static Exec Outs(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 1), asz = StrAddrSize(i.Op1Kind);
        bool rep = AnyRep(ref i);
        ushort port = (ushort)c.Gpr[2];
        var seg = SegOf(i.MemorySegment);
        if (!e.IoAllowed(port, size)) return Exec.Fault;
        Exec exit = Exec.Next;
        while (e.RepContinue(rep, asz, ref exit))
        {
            if (!e.Resolve(seg, c.Gpr[6] & Mask(asz), size, PageAccess.Read, out var src) || !e.ReadLoc(src, out ulong v)) return Exec.Fault;
            e.PortOut(port, size, (uint)v);
            e.Advance(6, asz, size);
            e.CountDown(rep, asz);
            if (!rep) break;
        }
        return exit;
    }

    // ---- port I/O ----------------------------------------------------------------------------------------

    private uint PortIn(ushort port, int size)
        => _ports is null ? (uint)Mask(size) : _ports.In(port, size) & (uint)Mask(size);

    private void PortOut(ushort port, int size, uint v) => _ports?.Out(port, size, v & (uint)Mask(size));

    /// <summary>I/O permission: CPL ≤ IOPL outside virtual-8086 mode, else the TSS I/O bitmap (SDM Vol. 1 19.5).</summary>
    private bool IoAllowed(ushort port, int size)
    {
        var c = _cpu;
        if ((c.Cr0 & CpuState.Cr0Pe) == 0) return true;
        int iopl = (int)((c.Rflags >> 12) & 3);
        if ((c.Rflags & CpuState.FlagVm) == 0 && c.Cpl <= iopl) return true;
        var tr = c.Tr.Descriptor;
        uint type = tr.Access & 0xf;
        if ((type != 9 && type != 0xb) || tr.Limit < 0x67) { Raise(PendingException.Gp0); return false; }
        Span<byte> two = stackalloc byte[2];
        var r = _mem.CopyFromGuest(c, tr.Base + 0x66, two, PageAccess.Read | PageAccess.Implicit);
        if (!r.IsOk) { _fault = r; return false; }
        ulong offset = (ulong)(two[0] | (two[1] << 8)) + (ulong)(port >> 3);
        if (offset + 1 > tr.Limit) { Raise(PendingException.Gp0); return false; }
        r = _mem.CopyFromGuest(c, tr.Base + offset, two, PageAccess.Read | PageAccess.Implicit);
        if (!r.IsOk) { _fault = r; return false; }
        int bitmap = two[0] | (two[1] << 8);
        if (((bitmap >> (port & 7)) & ((1 << size) - 1)) != 0) { Raise(PendingException.Gp0); return false; }
        return true;
    }

    private static Exec In(InstructionEngine e, ref Instruction i)
    {
        int size = OpSize(ref i, 0);
        ushort port = i.Op1Kind == OpKind.Register ? (ushort)e._cpu.Gpr[2] : (ushort)i.GetImmediate(1);
        if (!e.IoAllowed(port, size)) return Exec.Fault;
        SetGprSized(e._cpu, 0, size, e.PortIn(port, size));
        return Exec.Next;
    }

    private static Exec Out(InstructionEngine e, ref Instruction i)
    {
        int size = OpSize(ref i, 1);
        ushort port = i.Op0Kind == OpKind.Register ? (ushort)e._cpu.Gpr[2] : (ushort)i.GetImmediate(0);
        if (!e.IoAllowed(port, size)) return Exec.Fault;
        e.PortOut(port, size, (uint)e._cpu.Gpr[0]);
        return Exec.Next;
    }
}
