// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // CMPXCHG16B (SDM Vol. 2A): compare RDX:RAX with the 16-byte memory operand; equal: ZF=1 and the memory takes
    // RCX:RBX; different: ZF=0 and RDX:RAX take the memory value. Only ZF changes. The operand must be 16-byte
    // aligned (#GP(0)); its two halves are compared and written in turn, which is atomic only against this vCPU.
    // (CMPXCHG8B, one compare-and-swap, is in Semantics.Misc.cs.)
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
