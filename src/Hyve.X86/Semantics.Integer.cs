// SPDX-License-Identifier: BSD-2-Clause
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    private const ulong CF = CpuState.FlagCf, PF = CpuState.FlagPf, AF = CpuState.FlagAf, ZF = CpuState.FlagZf,
        SF = CpuState.FlagSf, OF = CpuState.FlagOf, DF = CpuState.FlagDf;

    // ---- flag arithmetic (SDM Vol. 1 Appendix A) -------------------------------------------------------

    /// <summary>SF, ZF and PF of a result of <paramref name="size"/> bytes (PF looks at the low byte only).</summary>
    internal static ulong Szp(ulong r, int size)
    {
        r &= Mask(size);
        ulong f = r == 0 ? ZF : 0;
        if ((r >> (8 * size - 1)) != 0) f |= SF;
        return f | s_parity[(byte)r];
    }

    /// <summary>a + b + carry with all six flags.</summary>
    internal static ulong AddWithFlags(ulong a, ulong b, ulong carry, int size, out ulong flags)
    {
        ulong m = Mask(size);
        a &= m; b &= m;
        ulong r = (a + b + carry) & m;
        bool cf = size == 8 ? (r < a || (carry != 0 && r == a)) : (a + b + carry) > m;
        ulong sb = 1ul << (8 * size - 1);
        flags = Szp(r, size) | (cf ? CF : 0) | (((a ^ r) & (b ^ r) & sb) != 0 ? OF : 0) | ((a ^ b ^ r) & AF);
        return r;
    }

    /// <summary>a - b - borrow with all six flags.</summary>
    internal static ulong SubWithFlags(ulong a, ulong b, ulong borrow, int size, out ulong flags)
    {
        ulong m = Mask(size);
        a &= m; b &= m;
        ulong r = (a - b - borrow) & m;
        bool cf = a < b || (borrow != 0 && a == b);
        ulong sb = 1ul << (8 * size - 1);
        flags = Szp(r, size) | (cf ? CF : 0) | (((a ^ b) & (a ^ r) & sb) != 0 ? OF : 0) | ((a ^ b ^ r) & AF);
        return r;
    }

    private void SetFlags(ulong mask, ulong value) => _cpu.Rflags = (_cpu.Rflags & ~mask) | (value & mask);

    // ---- atomic read-modify-write on guest RAM -----------------------------------------------------------

    /// <summary>
    /// Commits a read-modify-write: with <paramref name="locked"/> and a naturally contained RAM operand the store is a
    /// compare-and-swap against <paramref name="expected"/> (false = another CPU changed it, recompute); otherwise a plain store.
    /// </summary>
    private bool Commit(in MemLoc loc, ulong expected, ulong value, bool locked, out bool swapped)
    {
        swapped = true;
        if (locked) return CommitLocked(loc, expected, value, out swapped);
        return WriteLoc(loc, value);
    }

    private static readonly object s_splitLock = new();

    // LOCK: a naturally aligned RAM operand is swapped with a host compare-and-exchange on the shared guest memory, which
    // is atomic against every other vCPU's; a split or misaligned RAM operand is compared and stored under one global lock
    // (every vCPU's split locked operations serialize on it, as a bus lock would); MMIO is written plainly (no re-read).
    private bool CommitLocked(in MemLoc loc, ulong expected, ulong value, out bool swapped)
    {
        swapped = true;
        bool aligned = loc.Len0 == loc.Size && (loc.Gpa0 & (ulong)(loc.Size - 1)) == 0;
        Span<byte> s = default;
        if (aligned && (loc.Host != null || _mem.Physical.TryGetSpan(loc.Gpa0, loc.Size, out s)))
        {
            ref byte b = ref loc.Host != null ? ref *loc.Host : ref MemoryMarshal.GetReference(s);
            _mem.NoteWrite(loc.Gpa0);
            swapped = loc.Size switch
            {
                1 => Interlocked.CompareExchange(ref b, (byte)value, (byte)expected) == (byte)expected,
                2 => Interlocked.CompareExchange(ref Unsafe.As<byte, ushort>(ref b), (ushort)value, (ushort)expected) == (ushort)expected,
                4 => Interlocked.CompareExchange(ref Unsafe.As<byte, uint>(ref b), (uint)value, (uint)expected) == (uint)expected,
                _ => Interlocked.CompareExchange(ref Unsafe.As<byte, ulong>(ref b), value, expected) == expected,
            };
            return true;
        }
        bool ram = loc.Host != null || (_mem.Physical.TryGetSpan(loc.Gpa0, loc.Len0, out _)
            && (loc.Len0 == loc.Size || _mem.Physical.TryGetSpan(loc.Gpa1, loc.Size - loc.Len0, out _)));
        if (!ram) return WriteLoc(loc, value);
        lock (s_splitLock)
        {
            if (!ReadLoc(loc, out ulong now)) return false;
            if (now != expected) { swapped = false; return true; }
            return WriteLoc(loc, value);
        }
    }

    // ---- data movement -----------------------------------------------------------------------------------

    private static Exec Mov(InstructionEngine e, ref Instruction i)
    {
        if (!GprOperandsOnly(ref i)) return Exec.Unsupported;
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 1, size, out ulong v)) return Exec.Fault;
        return e.WriteOp(ref i, 0, size, v) ? Exec.Next : Exec.Fault;
    }

    private static Exec Movzx(InstructionEngine e, ref Instruction i)
    {
        int src = OpSize(ref i, 1);
        if (!e.ReadOp(ref i, 1, src, out ulong v)) return Exec.Fault;
        SetGpr(e._cpu, i.Op0Register, v);
        return Exec.Next;
    }

    private static Exec Movsx(InstructionEngine e, ref Instruction i)
    {
        int src = OpSize(ref i, 1);
        if (!e.ReadOp(ref i, 1, src, out ulong v)) return Exec.Fault;
        int sh = 64 - 8 * src;
        SetGpr(e._cpu, i.Op0Register, (ulong)((long)(v << sh) >> sh));
        return Exec.Next;
    }

    private static Exec Lea(InstructionEngine e, ref Instruction i)
    {
        if (i.Op1Kind != OpKind.Memory) return Exec.Unsupported;
        SetGpr(e._cpu, i.Op0Register, e.EffectiveAddress(ref i, out _));
        return Exec.Next;
    }

    private static Exec Nop(InstructionEngine e, ref Instruction i) => Exec.Next;

    /// <summary>UD0/UD1/UD2: defined to raise #UD (a real one, unlike an unsupported instruction).</summary>
    private static Exec Undefined(InstructionEngine e, ref Instruction i) => e.Raise(PendingException.Ud);

    private static Exec Hlt(InstructionEngine e, ref Instruction i) => e._cpu.Cpl != 0 ? e.Raise(PendingException.Gp0) : Exec.Halt;

    private static Exec FlagOp(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        switch (i.Mnemonic)
        {
            case Mnemonic.Clc: c.Rflags &= ~CF; break;
            case Mnemonic.Stc: c.Rflags |= CF; break;
            case Mnemonic.Cmc: c.Rflags ^= CF; break;
            case Mnemonic.Cld: c.Rflags &= ~DF; break;
            case Mnemonic.Std: c.Rflags |= DF; break;
        }
        return Exec.Next;
    }

    private static Exec Xchg(InstructionEngine e, ref Instruction i)
    {
        int size = OpSize(ref i, 0);
        if (i.Op0Kind == OpKind.Register && i.Op1Kind == OpKind.Register)
        {
            ulong a = GetGpr(e._cpu, i.Op0Register), b = GetGpr(e._cpu, i.Op1Register);
            SetGpr(e._cpu, i.Op0Register, b);
            SetGpr(e._cpu, i.Op1Register, a);
            return Exec.Next;
        }
        // XCHG with memory is always locked.
        var reg = i.Op0Kind == OpKind.Register ? i.Op0Register : i.Op1Register;
        if (!e.ResolveModrm(ref i, size, PageAccess.Write, out var loc)) return Exec.Fault;
        ulong nv = GetGpr(e._cpu, reg);
        ulong old;
        while (true)
        {
            if (!e.ReadLoc(loc, out old)) return Exec.Fault;
            if (!e.Commit(loc, old, nv, true, out bool ok)) return Exec.Fault;
            if (ok) break;
        }
        SetGpr(e._cpu, reg, old);
        return Exec.Next;
    }

    private static Exec Cmpxchg(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0);
        var acc = size switch { 1 => Register.AL, 2 => Register.AX, 4 => Register.EAX, _ => Register.RAX };
        ulong accv = GetGpr(c, acc);
        ulong src = GetGpr(c, i.Op1Register);
        ulong flags;
        if (i.Op0Kind == OpKind.Register)
        {
            ulong d = GetGpr(c, i.Op0Register);
            SubWithFlags(accv, d, 0, size, out flags);
            if ((flags & ZF) != 0) SetGpr(c, i.Op0Register, src);
            else SetGpr(c, acc, d);
            e.SetFlags(CpuState.StatusFlags, flags);
            return Exec.Next;
        }
        if (!e.ResolveModrm(ref i, size, PageAccess.Write, out var loc)) return Exec.Fault;
        bool locked = i.HasLockPrefix;
        ulong dv;
        while (true)
        {
            if (!e.ReadLoc(loc, out dv)) return Exec.Fault;
            SubWithFlags(accv, dv, 0, size, out flags);
            // The processor always writes the destination: the old value back when the comparison fails.
            ulong nv = (flags & ZF) != 0 ? src : dv;
            if (!e.Commit(loc, dv, nv, locked, out bool ok)) return Exec.Fault;
            if (ok) break;
        }
        if ((flags & ZF) == 0) SetGpr(c, acc, dv);
        e.SetFlags(CpuState.StatusFlags, flags);
        return Exec.Next;
    }

    private static Exec Push(InstructionEngine e, ref Instruction i)
    {
        if (!GprOperandsOnly(ref i)) return Exec.Unsupported;
        int size = i.Op0Kind == OpKind.Register ? OpSize(ref i, 0) : i.Op0Kind == OpKind.Memory ? OpSize(ref i, 0) : e.StackOperandSize(ref i);
        if (!e.ReadOp(ref i, 0, size, out ulong v)) return Exec.Fault;
        return e.PushValue(v, size) ? Exec.Next : Exec.Fault;
    }

    private static Exec Pop(InstructionEngine e, ref Instruction i)
    {
        if (!GprOperandsOnly(ref i)) return Exec.Unsupported;
        var c = e._cpu;
        int size = OpSize(ref i, 0);
        int ss = e.StackAddrSize();
        ulong oldRsp = c.Gpr[4];
        ulong sp = oldRsp & Mask(ss);
        if (!e.Resolve(Seg.Ss, sp, size, PageAccess.Read, out var sl) || !e.ReadLoc(sl, out ulong v)) return Exec.Fault;
        // POP computes a memory destination's address with the incremented RSP (SDM POP), and undoes it on a fault.
        SetGprSized(c, 4, ss == 8 ? 8 : ss, sp + (ulong)size);
        if (ss == 2) c.Gpr[4] = (oldRsp & ~0xfffful) | ((sp + (ulong)size) & 0xffff);
        if (!e.WriteOp(ref i, 0, size, v)) { c.Gpr[4] = oldRsp; return Exec.Fault; }
        return Exec.Next;
    }

    private int StackAddrSize() => _bitness == 64 ? 8 : _cpu.Segs[(int)Seg.Ss].Descriptor.Default32 ? 4 : 2;

    private int StackOperandSize(ref Instruction i) => i.StackPointerIncrement is int inc && inc < 0 ? -inc : _bitness / 8;

    private bool PushValue(ulong v, int size)
    {
        var c = _cpu;
        int ss = StackAddrSize();
        ulong sp = (c.Gpr[4] - (ulong)size) & Mask(ss);
        if (!Resolve(Seg.Ss, sp, size, PageAccess.Write, out var loc) || !WriteLoc(loc, v)) return false;
        if (ss == 2) c.Gpr[4] = (c.Gpr[4] & ~0xfffful) | sp;
        else c.Gpr[4] = sp; // a 32-bit stack in legacy mode: upper half is not architecturally visible
        return true;
    }

    // ---- ALU ---------------------------------------------------------------------------------------------

    /// <summary>Computes a two-operand ALU result and its flags; returns false for CMP/TEST (no write-back).</summary>
    private static bool AluCompute(Mnemonic m, ulong a, ulong b, ulong rflags, int size, out ulong r, out ulong flags)
    {
        switch (m)
        {
            case Mnemonic.Add: r = AddWithFlags(a, b, 0, size, out flags); return true;
            case Mnemonic.Adc: r = AddWithFlags(a, b, rflags & CF, size, out flags); return true;
            case Mnemonic.Sub: r = SubWithFlags(a, b, 0, size, out flags); return true;
            case Mnemonic.Sbb: r = SubWithFlags(a, b, rflags & CF, size, out flags); return true;
            case Mnemonic.Cmp: r = SubWithFlags(a, b, 0, size, out flags); return false;
            case Mnemonic.And: r = a & b & Mask(size); flags = Szp(r, size); return true;
            case Mnemonic.Test: r = a & b & Mask(size); flags = Szp(r, size); return false;
            case Mnemonic.Or: r = (a | b) & Mask(size); flags = Szp(r, size); return true;
            default: r = (a ^ b) & Mask(size); flags = Szp(r, size); return true; // Xor
        }
    }

    private static Exec Alu(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var m = i.Mnemonic;
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 1, size, out ulong b)) return Exec.Fault;
        ulong r, flags;
        if (i.Op0Kind == OpKind.Register)
        {
            ulong a = GetGpr(c, i.Op0Register);
            if (AluCompute(m, a, b, c.Rflags, size, out r, out flags)) SetGpr(c, i.Op0Register, r);
            e.SetFlags(CpuState.StatusFlags, flags);
            return Exec.Next;
        }
        bool writes = m != Mnemonic.Cmp && m != Mnemonic.Test;
        if (!e.ResolveModrm(ref i, size, writes ? PageAccess.Write : PageAccess.Read, out var loc)) return Exec.Fault;
        while (true)
        {
            if (!e.ReadLoc(loc, out ulong a)) return Exec.Fault;
            if (!AluCompute(m, a, b, c.Rflags, size, out r, out flags)) break;
            if (!e.Commit(loc, a, r, i.HasLockPrefix, out bool ok)) return Exec.Fault;
            if (ok) break;
        }
        e.SetFlags(CpuState.StatusFlags, flags);
        return Exec.Next;
    }

    private static Exec Unary(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var m = i.Mnemonic;
        int size = OpSize(ref i, 0);
        MemLoc loc = default;
        bool mem = i.Op0Kind == OpKind.Memory;
        if (mem && !e.ResolveModrm(ref i, size, PageAccess.Write, out loc)) return Exec.Fault;
        while (true)
        {
            ulong a;
            if (mem) { if (!e.ReadLoc(loc, out a)) return Exec.Fault; }
            else a = GetGpr(c, i.Op0Register);
            ulong r, flags, mask;
            switch (m)
            {
                case Mnemonic.Not: r = ~a & Mask(size); flags = 0; mask = 0; break;
                case Mnemonic.Neg:
                    r = SubWithFlags(0, a, 0, size, out flags); mask = CpuState.StatusFlags; break;
                case Mnemonic.Inc:
                    r = AddWithFlags(a, 1, 0, size, out flags); mask = CpuState.StatusFlags & ~CF; break;
                default:
                    r = SubWithFlags(a, 1, 0, size, out flags); mask = CpuState.StatusFlags & ~CF; break;
            }
            if (mem)
            {
                if (!e.Commit(loc, a, r, i.HasLockPrefix, out bool ok)) return Exec.Fault;
                if (!ok) continue;
            }
            else SetGpr(c, i.Op0Register, r);
            e.SetFlags(mask, flags);
            return Exec.Next;
        }
    }

    private static Exec BitTest(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var m = i.Mnemonic;
        int size = OpSize(ref i, 0);
        int bits = 8 * size;
        bool immediate = i.Op1Kind != OpKind.Register;
        ulong off = immediate ? i.GetImmediate(1) : GetGpr(c, i.Op1Register);
        ulong a, r;
        int bit;
        if (i.Op0Kind == OpKind.Register)
        {
            bit = (int)(off & (ulong)(bits - 1));
            a = GetGpr(c, i.Op0Register);
            r = BitResult(m, a, bit);
            if (m != Mnemonic.Bt) SetGpr(c, i.Op0Register, r);
        }
        else
        {
            // A register bit offset is signed and may address outside the operand (SDM BT: bit string addressing).
            ulong ea = e.EffectiveAddress(ref i, out int asz);
            if (immediate) bit = (int)(off & (ulong)(bits - 1));
            else
            {
                long soff = size switch { 2 => (short)off, 4 => (int)off, _ => (long)off };
                bit = (int)(soff & (bits - 1));
                ea = (ea + (ulong)((soff >> BitOperations.Log2((uint)bits)) * size)) & Mask(asz);
            }
            var acc = m == Mnemonic.Bt ? PageAccess.Read : PageAccess.Write;
            if (!e.Resolve(SegOf(i.MemorySegment), ea, size, acc, out var loc)) return Exec.Fault;
            while (true)
            {
                if (!e.ReadLoc(loc, out a)) return Exec.Fault;
                r = BitResult(m, a, bit);
                if (m == Mnemonic.Bt) break;
                if (!e.Commit(loc, a, r, i.HasLockPrefix, out bool ok)) return Exec.Fault;
                if (ok) break;
            }
        }
        // CF = selected bit; OF/SF/AF/PF undefined (left unchanged here), ZF unchanged.
        e.SetFlags(CF, (a >> bit) & 1);
        return Exec.Next;
    }

    private static ulong BitResult(Mnemonic m, ulong a, int bit) => m switch
    {
        Mnemonic.Bts => a | (1ul << bit),
        Mnemonic.Btr => a & ~(1ul << bit),
        Mnemonic.Btc => a ^ (1ul << bit),
        _ => a,
    };

    private static Exec Bextr(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        // A VEX prefix in real-address or virtual-8086 mode is #UD (SDM Vol. 2 2.3.2).
        if (c.Mode is CpuMode.Real or CpuMode.Virtual8086) return e.Raise(PendingException.Ud);
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 1, size, out ulong src)) return Exec.Fault;
        ulong ctl = GetGpr(c, i.Op2Register);
        int start = (int)(ctl & 0xff), len = (int)((ctl >> 8) & 0xff);
        int bits = 8 * size;
        ulong r = start >= bits ? 0 : src >> start;
        if (len < 64) r &= (1ul << len) - 1;
        r &= Mask(size);
        SetGpr(c, i.Op0Register, r);
        // ZF by result, CF=OF=0; AF/SF/PF undefined: cleared here.
        e.SetFlags(CpuState.StatusFlags, r == 0 ? ZF : 0);
        return Exec.Next;
    }

    /// <summary>ANDN, BLSI, BLSMSK, BLSR (BMI1, SDM Vol. 2): OF cleared, AF and PF undefined (cleared here).</summary>
    private static Exec Bmi1(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        if (c.Mode is CpuMode.Real or CpuMode.Virtual8086) return e.Raise(PendingException.Ud); // VEX (SDM Vol. 2 2.3.2)
        int size = OpSize(ref i, 0);
        ulong mask = Mask(size), sign = 1ul << (8 * size - 1);
        bool andn = i.Mnemonic == Mnemonic.Andn;
        if (!e.ReadOp(ref i, andn ? 2 : 1, size, out ulong src)) return Exec.Fault;
        ulong r;
        ulong cf;
        switch (i.Mnemonic)
        {
            case Mnemonic.Andn: r = ~GetGpr(c, i.Op1Register) & src; cf = 0; break;
            case Mnemonic.Blsi: r = (0 - src) & src; cf = src != 0 ? CF : 0; break;
            case Mnemonic.Blsmsk: r = (src - 1) ^ src; cf = src == 0 ? CF : 0; break;
            default: r = (src - 1) & src; cf = src == 0 ? CF : 0; break; // BLSR
        }
        r &= mask;
        SetGpr(c, i.Op0Register, r);
        ulong zf = i.Mnemonic != Mnemonic.Blsmsk && r == 0 ? ZF : 0; // BLSMSK clears ZF
        e.SetFlags(CpuState.StatusFlags, cf | zf | ((r & sign) != 0 ? SF : 0));
        return Exec.Next;
    }

    private static Exec Shift(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var m = i.Mnemonic;
        int size = OpSize(ref i, 0);
        ulong cnt = i.Op1Kind == OpKind.Register ? GetGpr(c, i.Op1Register) : i.GetImmediate(1);
        int count = (int)(cnt & (size == 8 ? 0x3fu : 0x1fu));
        MemLoc loc = default;
        bool mem = i.Op0Kind == OpKind.Memory;
        if (mem && !e.ResolveModrm(ref i, size, PageAccess.Write, out loc)) return Exec.Fault;
        ulong a;
        if (mem) { if (!e.ReadLoc(loc, out a)) return Exec.Fault; }
        else a = GetGpr(c, i.Op0Register);
        if (count == 0)
        {
            // No flags change; a 32-bit register destination is still written (zero-extended), as hardware does.
            if (!mem) SetGpr(c, i.Op0Register, a);
            return Exec.Next;
        }
        int bits = 8 * size;
        ulong msk = Mask(size), sb = 1ul << (bits - 1);
        a &= msk;
        ulong r, f;
        bool cf;
        switch (m)
        {
            case Mnemonic.Shl: case Mnemonic.Sal:
                r = count >= 64 ? 0 : (a << count) & msk;
                cf = count <= bits && ((a >> (bits - count)) & 1) != 0;
                f = Szp(r, size) | (cf ? CF : 0) | ((((r & sb) != 0) ^ cf) ? OF : 0);
                break;
            case Mnemonic.Shr:
                r = count >= 64 ? 0 : a >> count;
                cf = ((a >> (count - 1)) & 1) != 0 && count <= bits;
                f = Szp(r, size) | (cf ? CF : 0) | ((a & sb) != 0 ? OF : 0);
                break;
            default: // Sar
                long sa = (long)(a << (64 - bits)) >> (64 - bits);
                r = (ulong)(sa >> Math.Min(count, 63)) & msk;
                cf = ((sa >> Math.Min(count - 1, 63)) & 1) != 0;
                f = Szp(r, size) | (cf ? CF : 0);
                break;
        }
        if (mem) { if (!e.WriteLoc(loc, r)) return Exec.Fault; }
        else SetGpr(c, i.Op0Register, r);
        // AF undefined (cleared); OF defined only for count 1 but computed the same way for larger counts.
        e.SetFlags(CpuState.StatusFlags, f);
        return Exec.Next;
    }
}
