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

public sealed unsafe partial class InstructionEngine
{
    // Smaller system and legacy instructions: SMAP's CLAC/STAC, CET's ENDBR (no-ops), FS/GS base access, RDPID, PKRU,
    // INVPCID/WBNOINVD/SERIALIZE, MOVNTI/MOVBE, ICEBP, and the 16/32-bit-only SALC, ARPL, BOUND and BCD adjustments.

    private static Exec ClacStac(InstructionEngine e, ref Instruction i)
    {
        if (e._cpu.Cpl != 0) return e.Raise(PendingException.Ud); // SDM: #UD (not #GP) outside CPL 0
        e.SetFlags(CpuState.FlagAc, i.Mnemonic == Mnemonic.Stac ? CpuState.FlagAc : 0);
        return Exec.Next;
    }

    private static Exec FsGsBase(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        if (!e.In64BitMode || (c.Cr4 & (1ul << 16)) == 0) return e.Raise(PendingException.Ud);
        var m = i.Mnemonic;
        ref var s = ref c.Segs[m is Mnemonic.Rdfsbase or Mnemonic.Wrfsbase ? (int)Seg.Fs : (int)Seg.Gs];
        if (m is Mnemonic.Rdfsbase or Mnemonic.Rdgsbase) { SetGpr(c, i.Op0Register, s.Descriptor.Base); return Exec.Next; }
        ulong v = GetGpr(c, i.Op0Register);
        if (!Segmentation.IsCanonical(c, v)) return e.Raise(PendingException.Gp0);
        s.Descriptor = s.Descriptor with { Base = v };
        return Exec.Next;
    }

    private static Exec Rdpid(InstructionEngine e, ref Instruction i)
    {
        SetGpr(e._cpu, i.Op0Register, e._cpu.TscAux);
        return Exec.Next;
    }

    private static Exec Pkru(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        if ((c.Cr4 & CpuState.Cr4Pke) == 0) return e.Raise(PendingException.Ud);
        if ((uint)c.Gpr[1] != 0 || (i.Mnemonic == Mnemonic.Wrpkru && (uint)c.Gpr[2] != 0)) return e.Raise(PendingException.Gp0);
        if (i.Mnemonic == Mnemonic.Wrpkru) c.Pkru = (uint)c.Gpr[0];
        else { c.Gpr[0] = c.Pkru; c.Gpr[2] = 0; }
        return Exec.Next;
    }

    /// <summary>INVPCID: CPL 0, a type above 3 is #GP(0); the engine caches no translations, so nothing to invalidate.</summary>
    private static Exec Invpcid(InstructionEngine e, ref Instruction i)
    {
        if (e.IsRealOrV86 && e._cpu.Mode != CpuMode.Real) return e.Raise(PendingException.Ud);
        if (!e.Cpl0()) return Exec.Fault;
        if (GetGpr(e._cpu, i.Op0Register) > 3) return e.Raise(PendingException.Gp0);
        return e.ResolveModrm(ref i, 16, PageAccess.Read, out _) ? Exec.Next : Exec.Fault;
    }

    private static Exec Movnti(InstructionEngine e, ref Instruction i)
    {
        int size = OpSize(ref i, 0);
        return e.WriteOp(ref i, 0, size, GetGpr(e._cpu, i.Op1Register)) ? Exec.Next : Exec.Fault;
    }

    private static Exec Movbe(InstructionEngine e, ref Instruction i)
    {
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 1, size, out ulong v)) return Exec.Fault;
        v = size switch
        {
            2 => System.Buffers.Binary.BinaryPrimitives.ReverseEndianness((ushort)v),
            4 => System.Buffers.Binary.BinaryPrimitives.ReverseEndianness((uint)v),
            _ => System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(v),
        };
        return e.WriteOp(ref i, 0, size, v) ? Exec.Next : Exec.Fault;
    }

    /// <summary>ICEBP (INT1): a #DB delivered like a hardware exception (no gate-DPL check), returning past the instruction.</summary>
    private static Exec Icebp(InstructionEngine e, ref Instruction i)
    {
        return e.DeliverCore(Vector.DB, false, false, 0, i.NextIP & Mask(e._bitness / 8));
    }

    private static Exec Salc(InstructionEngine e, ref Instruction i)
    {
        SetGpr(e._cpu, Register.AL, (e._cpu.Rflags & CF) != 0 ? 0xffu : 0);
        return Exec.Next;
    }

    /// <summary>ARPL r/m16, r16: raise the destination selector's RPL to the source's (ZF=1) if lower. #UD in real/virtual-8086 mode.</summary>
    private static Exec Arpl(InstructionEngine e, ref Instruction i)
    {
        if (e.IsRealOrV86) return e.Raise(PendingException.Ud);
        if (!e.ReadOp(ref i, 0, 2, out ulong d)) return Exec.Fault;
        ulong s = GetGpr(e._cpu, i.Op1Register);
        if ((d & 3) < (s & 3))
        {
            if (!e.WriteOp(ref i, 0, 2, (d & ~3ul) | (s & 3))) return Exec.Fault;
            e.SetFlags(ZF, ZF);
        }
        else e.SetFlags(ZF, 0);
        return Exec.Next;
    }

    /// <summary>BOUND r, m: signed bounds check; out of range is #BR (vector 5).</summary>
    private static Exec Bound(InstructionEngine e, ref Instruction i)
    {
        int size = OpSize(ref i, 0);
        ulong ea = e.EffectiveAddress(ref i, out int asz);
        var seg = SegOf(i.MemorySegment);
        if (!e.Resolve(seg, ea, size, PageAccess.Read, out var l0) || !e.ReadLoc(l0, out ulong lo)) return Exec.Fault;
        if (!e.Resolve(seg, (ea + (ulong)size) & Mask(asz), size, PageAccess.Read, out var l1) || !e.ReadLoc(l1, out ulong hi)) return Exec.Fault;
        long v = SignExtend(GetGpr(e._cpu, i.Op0Register), size);
        if (v < SignExtend(lo, size) || v > SignExtend(hi, size)) return e.Raise(new PendingException(5, false, 0, 0));
        return Exec.Next;
    }

    /// <summary>DAA/DAS/AAA/AAS/AAM/AAD (SDM Vol. 2 pseudo-code; flags the SDM leaves undefined are computed from AL).</summary>
    private static Exec Bcd(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        ulong f = c.Rflags;
        uint al = (uint)c.Gpr[0] & 0xff, ah = (uint)(c.Gpr[0] >> 8) & 0xff;
        bool cf = (f & CF) != 0, af = (f & AF) != 0;
        switch (i.Mnemonic)
        {
            case Mnemonic.Daa:
            case Mnemonic.Das:
            {
                bool add = i.Mnemonic == Mnemonic.Daa;
                uint old = al;
                bool ncf = false, naf = false;
                if ((al & 0xf) > 9 || af)
                {
                    ncf = cf || (add ? al + 6 > 0xff : al < 6);
                    al = (add ? al + 6 : al - 6) & 0xff;
                    naf = true;
                }
                if (old > 0x99 || cf) { al = (add ? al + 0x60 : al - 0x60) & 0xff; ncf = true; }
                SetGpr(c, Register.AL, al);
                e.SetFlags(CpuState.StatusFlags & ~OF, Szp(al, 1) | (ncf ? CF : 0) | (naf ? AF : 0));
                return Exec.Next;
            }
            case Mnemonic.Aaa:
            case Mnemonic.Aas:
            {
                bool adj = (al & 0xf) > 9 || af;
                if (adj)
                {
                    if (i.Mnemonic == Mnemonic.Aaa) { uint ax = (ah << 8 | al) + 0x106; al = ax & 0xff; ah = (ax >> 8) & 0xff; }
                    else { uint ax = (ah << 8 | al) - 6; al = ax & 0xff; ah = ((ax >> 8) - 1) & 0xff; }
                }
                al &= 0xf;
                SetGprSized(c, 0, 2, ah << 8 | al);
                e.SetFlags(CF | AF, adj ? CF | AF : 0);
                return Exec.Next;
            }
            case Mnemonic.Aam:
            {
                uint b = i.Immediate8;
                if (b == 0) return e.Raise(new PendingException(Vector.DE, false, 0, 0));
                ah = al / b; al %= b;
                SetGprSized(c, 0, 2, ah << 8 | al);
                e.SetFlags(CpuState.StatusFlags, Szp(al, 1));
                return Exec.Next;
            }
            default: // Aad
            {
                al = (al + ah * i.Immediate8) & 0xff;
                SetGprSized(c, 0, 2, al);
                e.SetFlags(CpuState.StatusFlags, Szp(al, 1));
                return Exec.Next;
            }
        }
    }

    /// <summary>
    /// RDPMC (SDM Vol. 2): #GP(0) at CPL &gt; 0 with CR4.PCE clear, and #GP(0) for an ECX that names no counter. The model's
    /// CPUID reports no performance monitoring (leaf 0xA reads zero), so every counter index is invalid.
    /// </summary>
    private static Exec Rdpmc(InstructionEngine e, ref Instruction i) => e.Raise(PendingException.Gp0);

    /// <summary>
    /// XGETBV/XSETBV (SDM Vol. 2): #UD while CR4.OSXSAVE is clear, which is how kernels probe them. With OSXSAVE set
    /// the extended-state components are not modelled yet, so the instruction stays an honest stop.
    /// </summary>
    private static Exec XcrAccess(InstructionEngine e, ref Instruction i)
    {
        if ((e._cpu.Cr4 & 1ul << 18 /* OSXSAVE */) == 0) return e.Raise(PendingException.Ud);
        return Exec.Unsupported;
    }
}
