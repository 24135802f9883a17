// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // CMPXCHG8B / CMPXCHG16B (SDM Vol. 2A): compare EDX:EAX (RDX:RAX) with the memory operand; equal: ZF=1 and
    // the memory takes ECX:EBX (RCX:RBX); different: ZF=0 and the accumulator pair takes the memory value. Only ZF
    // changes. The 8-byte form is one compare-and-swap on RAM; the 16-byte form checks 16-byte alignment (#GP(0))
    // and compares and writes its two halves in turn, which is atomic only against this vCPU.
    private static Exec Cmpxchg8b(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var g = c.Gpr;
        ulong expected = (g[2] & 0xffff_ffff) << 32 | (g[0] & 0xffff_ffff);
        ulong value = (g[1] & 0xffff_ffff) << 32 | (g[3] & 0xffff_ffff);
        if (!e.ResolveModrm(ref i, 8, PageAccess.Write, out var loc)) return Exec.Fault;
        ulong current;
        bool equal;
        while (true)
        {
            if (!e.ReadLoc(loc, out current)) return Exec.Fault;
            equal = current == expected;
            if (!e.Commit(loc, current, equal ? value : current, i.HasLockPrefix, out bool ok)) return Exec.Fault;
            if (ok) break;
        }
        if (!equal)
        {
            g[0] = (uint)current;
            g[2] = current >> 32;
        }
        e.SetFlags(ZF, equal ? ZF : 0);
        return Exec.Next;
    }

    private static Exec Cmpxchg16b(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var g = c.Gpr;
        ulong ea = e.EffectiveAddress(ref i, out int addrSize);
        var seg = SegOf(i.MemorySegment);
        if (!e.Resolve(seg, ea, 8, PageAccess.Write, out var lo)) return Exec.Fault;
        if ((lo.Linear & 15) != 0) return e.Raise(PendingException.Gp0);
        if (!e.Resolve(seg, (ea + 8) & Mask(addrSize), 8, PageAccess.Write, out var hi)) return Exec.Fault;
        if (!e.ReadLoc(lo, out ulong low) || !e.ReadLoc(hi, out ulong high)) return Exec.Fault;
        bool equal = low == g[0] && high == g[2];
        if (equal)
        {
            if (!e.WriteLoc(lo, g[3]) || !e.WriteLoc(hi, g[1])) return Exec.Fault;
        }
        else
        {
            // The processor writes the destination back unchanged when the comparison fails.
            if (!e.WriteLoc(lo, low) || !e.WriteLoc(hi, high)) return Exec.Fault;
            g[0] = low;
            g[2] = high;
        }
        e.SetFlags(ZF, equal ? ZF : 0);
        return Exec.Next;
    }
}
