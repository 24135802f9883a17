// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // Instructions firmware and kernels execute that matter only to a whole software CPU (the KVM fallback never sees
    // them): PAUSE and the fences and cache hints (no-ops for a CPU that executes in order and has no cache), PUSHA/POPA,
    // XLAT and CMPXCHG8B. Selected by SelectSoft, which the table consults before its mnemonic cases.

    private static delegate*<InstructionEngine, ref Instruction, Exec> SelectSoft(Code c)
    {
        switch (c)
        {
            case Code.Pause: case Code.Lfence: case Code.Mfence: case Code.Sfence:
            case Code.Clflush_m8: case Code.Clflushopt_m8:
            case Code.Prefetchnta_m8: case Code.Prefetcht0_m8: case Code.Prefetcht1_m8: case Code.Prefetcht2_m8: case Code.Prefetchw_m8:
                return &Nop;
            case Code.Pushaw: case Code.Pushad: return &Pusha;
            case Code.Popaw: case Code.Popad: return &Popa;
            case Code.Xlat_m8: return &Xlat;
            case Code.Cmpxchg8b_m64: return &Cmpxchg8b;
            default: return null;
        }
    }

    /// <summary>PUSHA/PUSHAD: AX, CX, DX, BX, the original SP, BP, SI, DI; on a fault SP is left as it was.</summary>
    private static Exec Pusha(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code == Code.Pushad ? 4 : 2;
        ulong oldRsp = c.Gpr[4];
        for (int r = 0; r < 8; r++)
        {
            ulong v = r == 4 ? oldRsp : c.Gpr[r];
            if (!e.PushValue(v & Mask(size), size)) { c.Gpr[4] = oldRsp; return Exec.Fault; }
        }
        return Exec.Next;
    }

    /// <summary>POPA/POPAD: DI, SI, BP, (SP skipped), BX, DX, CX, AX; registers change only when all eight reads succeed.</summary>
    private static Exec Popa(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code == Code.Popad ? 4 : 2;
        int ss = e.StackAddrSize();
        ulong sp = c.Gpr[4] & Mask(ss);
        Span<ulong> vals = stackalloc ulong[8];
        for (int k = 0; k < 8; k++)
        {
            ulong a = (sp + (ulong)(k * size)) & Mask(ss);
            if (!e.Resolve(Seg.Ss, a, size, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out vals[7 - k])) return Exec.Fault;
        }
        for (int r = 0; r < 8; r++)
            if (r != 4) SetGprSized(c, r, size, vals[r]);
        ulong nsp = (sp + (ulong)(8 * size)) & Mask(ss);
        if (ss == 2) c.Gpr[4] = (c.Gpr[4] & ~0xfffful) | nsp;
        else c.Gpr[4] = nsp;
        return Exec.Next;
    }

    /// <summary>XLAT: AL = [seg:(E/R)BX + zero-extended AL].</summary>
    private static Exec Xlat(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int asz = i.MemoryBase.GetSize();
        ulong ea = (GetGpr(c, i.MemoryBase) + (c.Gpr[0] & 0xff)) & Mask(asz);
        if (!e.Resolve(SegOf(i.MemorySegment), ea, 1, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out ulong v)) return Exec.Fault;
        SetGpr(c, Register.AL, v);
        return Exec.Next;
    }

    /// <summary>CMPXCHG8B: compare EDX:EAX with m64; equal stores ECX:EBX and sets ZF, else loads m64 into EDX:EAX and clears ZF.</summary>
    private static Exec Cmpxchg8b(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        if (!e.ResolveModrm(ref i, 8, PageAccess.Write, out var loc) || !e.ReadLoc(loc, out ulong m)) return Exec.Fault;
        ulong expected = (uint)c.Gpr[0] | (ulong)(uint)c.Gpr[2] << 32;
        if (m == expected)
        {
            if (!e.WriteLoc(loc, (uint)c.Gpr[3] | (ulong)(uint)c.Gpr[1] << 32)) return Exec.Fault;
            c.Rflags |= ZF;
        }
        else
        {
            // The processor writes the old value back (a locked read-modify-write) before loading EDX:EAX.
            if (!e.WriteLoc(loc, m)) return Exec.Fault;
            c.Gpr[0] = (uint)m;
            c.Gpr[2] = m >> 32;
            c.Rflags &= ~ZF;
        }
        return Exec.Next;
    }
}
