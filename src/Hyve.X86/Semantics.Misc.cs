// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // Instructions firmware and kernels use around the system ones: hints and fences (no-ops for a one-instruction-at-a-time
    // engine whose memory accesses are already ordered), CLFLUSH, PUSHA/POPA, XLAT and CMPXCHG8B.

    private static Exec Fence(InstructionEngine e, ref Instruction i)
    {
        Interlocked.MemoryBarrier(); // other vCPUs may share the memory: keep the ordering promise
        return Exec.Next;
    }

    /// <summary>CLFLUSH/CLFLUSHOPT: no cache to flush, but the address is checked as a byte read would be (#GP/#SS/#PF).</summary>
    private static Exec Clflush(InstructionEngine e, ref Instruction i)
        => e.ResolveModrm(ref i, 1, PageAccess.Read, out _) ? Exec.Next : Exec.Fault;

    /// <summary>PUSHA/PUSHAD: AX, CX, DX, BX, the original SP, BP, SI, DI; undone if any push faults.</summary>
    private static Exec Pusha(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code == Code.Pushaw ? 2 : 4;
        ulong rsp = c.Gpr[4];
        for (int r = 0; r < 8; r++)
        {
            ulong v = r == 4 ? rsp : c.Gpr[r];
            if (!e.PushValue(v & Mask(size), size)) { c.Gpr[4] = rsp; return Exec.Fault; }
        }
        return Exec.Next;
    }

    /// <summary>POPA/POPAD: DI, SI, BP, (SP skipped), BX, DX, CX, AX; nothing changes if a read faults.</summary>
    private static Exec Popa(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code == Code.Popaw ? 2 : 4;
        int ss = e.StackAddrSize();
        ulong sp = c.Gpr[4] & Mask(ss);
        Span<ulong> vals = stackalloc ulong[8];
        for (int k = 0; k < 8; k++)
            if (!e.StackRead((sp + (ulong)(k * size)) & Mask(ss), size, out vals[k])) return Exec.Fault;
        for (int k = 0; k < 8; k++)
        {
            int r = 7 - k;
            if (r != 4) SetGprSized(c, r, size, vals[k]);
        }
        SetGprSized(c, 4, ss, sp + 8 * (ulong)size);
        return Exec.Next;
    }

    /// <summary>XLAT: AL ← [seg:rBX + AL] (Iced describes the operand as base rBX, index AL).</summary>
    private static Exec Xlat(InstructionEngine e, ref Instruction i)
    {
        if (!e.ReadOp(ref i, 0, 1, out ulong v)) return Exec.Fault;
        SetGpr(e._cpu, Register.AL, v);
        return Exec.Next;
    }

    /// <summary>CMPXCHG8B m64: EDX:EAX against memory; equal stores ECX:EBX (ZF=1), else loads EDX:EAX (ZF=0). Always a write cycle.</summary>
    private static Exec Cmpxchg8b(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        if (i.Op0Kind != OpKind.Memory) return e.Raise(PendingException.Ud);
        if (!e.ResolveModrm(ref i, 8, PageAccess.Write, out var loc)) return Exec.Fault;
        ulong expect = ((c.Gpr[2] & 0xffffffff) << 32) | (uint)c.Gpr[0];
        ulong repl = ((c.Gpr[1] & 0xffffffff) << 32) | (uint)c.Gpr[3];
        ulong old;
        bool equal;
        while (true)
        {
            if (!e.ReadLoc(loc, out old)) return Exec.Fault;
            equal = old == expect;
            if (!e.Commit(loc, old, equal ? repl : old, i.HasLockPrefix, out bool ok)) return Exec.Fault;
            if (ok) break;
        }
        if (!equal) { SetGprSized(c, 0, 4, (uint)old); SetGprSized(c, 2, 4, old >> 32); }
        e.SetFlags(ZF, equal ? ZF : 0);
        return Exec.Next;
    }
}
