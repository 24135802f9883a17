// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Numerics;
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // Control transfer, conditional moves, multiply/divide, rotates, and a few bit-manipulation ops:
    // beyond the MMIO set, these start the software CPU's coverage and share the same operand helpers.

    /// <summary>Evaluates a condition code against RFLAGS (SDM Vol. 1 Table B-1).</summary>
    internal static bool Condition(ConditionCode cc, ulong f) => cc switch
    {
        ConditionCode.o => (f & OF) != 0,
        ConditionCode.no => (f & OF) == 0,
        ConditionCode.b => (f & CF) != 0,
        ConditionCode.ae => (f & CF) == 0,
        ConditionCode.e => (f & ZF) != 0,
        ConditionCode.ne => (f & ZF) == 0,
        ConditionCode.be => (f & (CF | ZF)) != 0,
        ConditionCode.a => (f & (CF | ZF)) == 0,
        ConditionCode.s => (f & SF) != 0,
        ConditionCode.ns => (f & SF) == 0,
        ConditionCode.p => (f & PF) != 0,
        ConditionCode.np => (f & PF) == 0,
        ConditionCode.l => ((f & SF) != 0) != ((f & OF) != 0),
        ConditionCode.ge => ((f & SF) != 0) == ((f & OF) != 0),
        ConditionCode.le => (f & ZF) != 0 || ((f & SF) != 0) != ((f & OF) != 0),
        ConditionCode.g => (f & ZF) == 0 && ((f & SF) != 0) == ((f & OF) != 0),
        _ => true,
    };

    /// <summary>Sets RIP to a branch target after the checks a branch makes: canonical in 64-bit mode, CS limit otherwise.</summary>
    private bool BranchTo(ulong target)
    {
        var c = _cpu;
        if (_bitness == 64) { if (!Segmentation.IsCanonical(c, target)) { Raise(PendingException.Gp0); return false; } }
        else if (target > c.Segs[(int)Seg.Cs].Descriptor.Limit) { Raise(PendingException.Gp0); return false; }
        c.Rip = target;
        return true;
    }

    /// <summary>Target of a near branch operand: immediate (Iced resolves it) or register/memory, truncated to the operand size.</summary>
    private bool BranchTarget(ref Instruction i, int size, out ulong target)
    {
        var k = i.Op0Kind;
        if (k is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64) { target = i.NearBranchTarget; return true; }
        if (k is OpKind.FarBranch16 or OpKind.FarBranch32) { target = 0; return false; }
        if (k == OpKind.Memory && i.MemorySize is MemorySize.SegPtr16 or MemorySize.SegPtr32 or MemorySize.SegPtr64) { target = 0; return false; }
        if (!ReadOp(ref i, 0, size, out target)) { target = ulong.MaxValue; return false; }
        return true;
    }

    private int BranchSize(ref Instruction i) => i.Op0Kind switch
    {
        OpKind.NearBranch16 => 2,
        OpKind.NearBranch32 => 4,
        OpKind.NearBranch64 => 8,
        _ => OpSize(ref i, 0),
    };

    private static Exec Jcc(InstructionEngine e, ref Instruction i)
    {
        if (!Condition(i.ConditionCode, e._cpu.Rflags)) return Exec.Next;
        return e.BranchTo(i.NearBranchTarget) ? Exec.Branch : Exec.Fault;
    }

    private static Exec Jmp(InstructionEngine e, ref Instruction i)
    {
        if (!e.BranchTarget(ref i, e.BranchSize(ref i), out ulong t)) return t == ulong.MaxValue ? Exec.Fault : Exec.Unsupported;
        return e.BranchTo(t) ? Exec.Branch : Exec.Fault;
    }

    private static Exec Call(InstructionEngine e, ref Instruction i)
    {
        int size = e.BranchSize(ref i);
        if (!e.BranchTarget(ref i, size, out ulong t)) return t == ulong.MaxValue ? Exec.Fault : Exec.Unsupported;
        var c = e._cpu;
        ulong rsp = c.Gpr[4], rip = c.Rip;
        if (!e.PushValue(i.NextIP & Mask(size), size)) return Exec.Fault;
        if (!e.BranchTo(t)) { c.Gpr[4] = rsp; c.Rip = rip; return Exec.Fault; }
        return Exec.Branch;
    }

    private static Exec Ret(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code switch
        {
            Code.Retnw or Code.Retnw_imm16 => 2,
            Code.Retnd or Code.Retnd_imm16 => 4,
            Code.Retnq or Code.Retnq_imm16 => 8,
            _ => 0,
        };
        if (size == 0) return Exec.Unsupported; // far returns change CS
        int ss = e.StackAddrSize();
        ulong sp = c.Gpr[4] & Mask(ss);
        if (!e.Resolve(Seg.Ss, sp, size, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out ulong t)) return Exec.Fault;
        ulong extra = i.OpCount > 0 ? i.GetImmediate(0) : 0;
        if (!e.BranchTo(t)) return Exec.Fault;
        SetGprSized(c, 4, ss, sp + (ulong)size + extra);
        return Exec.Branch;
    }

    private static Exec Cmovcc(InstructionEngine e, ref Instruction i)
    {
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 1, size, out ulong v)) return Exec.Fault; // the source is read even when the move does not happen
        var c = e._cpu;
        if (Condition(i.ConditionCode, c.Rflags)) SetGpr(c, i.Op0Register, v);
        else if (size == 4) SetGpr(c, i.Op0Register, GetGpr(c, i.Op0Register)); // a 32-bit destination is zero-extended regardless
        return Exec.Next;
    }

    private static Exec Setcc(InstructionEngine e, ref Instruction i)
        => e.WriteOp(ref i, 0, 1, Condition(i.ConditionCode, e._cpu.Rflags) ? 1ul : 0) ? Exec.Next : Exec.Fault;

    private static Exec SignExtendAcc(InstructionEngine e, ref Instruction i)
    {
        var g = e._cpu.Gpr;
        switch (i.Mnemonic)
        {
            case Mnemonic.Cbw: SetGprSized(e._cpu, 0, 2, (ulong)(long)(sbyte)g[0]); break;
            case Mnemonic.Cwde: SetGprSized(e._cpu, 0, 4, (ulong)(long)(short)g[0]); break;
            case Mnemonic.Cdqe: g[0] = (ulong)(long)(int)g[0]; break;
            case Mnemonic.Cwd: SetGprSized(e._cpu, 2, 2, (short)g[0] < 0 ? 0xffffu : 0); break;
            case Mnemonic.Cdq: SetGprSized(e._cpu, 2, 4, (int)g[0] < 0 ? 0xffffffffu : 0); break;
            default: g[2] = (long)g[0] < 0 ? ulong.MaxValue : 0; break; // Cqo
        }
        return Exec.Next;
    }

    private static Exec Xadd(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0);
        ulong src = GetGpr(c, i.Op1Register), flags;
        if (i.Op0Kind == OpKind.Register)
        {
            ulong d = GetGpr(c, i.Op0Register);
            ulong sum = AddWithFlags(d, src, 0, size, out flags);
            SetGpr(c, i.Op1Register, d);
            SetGpr(c, i.Op0Register, sum);
            e.SetFlags(CpuState.StatusFlags, flags);
            return Exec.Next;
        }
        if (!e.ResolveModrm(ref i, size, PageAccess.Write, out var loc)) return Exec.Fault;
        ulong old;
        while (true)
        {
            if (!e.ReadLoc(loc, out old)) return Exec.Fault;
            ulong sum = AddWithFlags(old, src, 0, size, out flags);
            if (!e.Commit(loc, old, sum, i.HasLockPrefix, out bool ok)) return Exec.Fault;
            if (ok) break;
        }
        SetGpr(c, i.Op1Register, old);
        e.SetFlags(CpuState.StatusFlags, flags);
        return Exec.Next;
    }

    private static Exec Bswap(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var r = i.Op0Register;
        int size = r.GetSize();
        // BSWAP r16 is undefined in the SDM; Intel and AMD processors clear the low word (the upper bits are kept).
        if (size == 2) { SetGpr(c, r, 0); return Exec.Next; }
        ulong v = GetGpr(c, r);
        SetGpr(c, r, size == 8 ? BinaryPrimitives.ReverseEndianness(v) : BinaryPrimitives.ReverseEndianness((uint)v));
        return Exec.Next;
    }

    // F3 0F BC / F3 0F BD on a processor without BMI1 / LZCNT: the F3 prefix is ignored and the instruction is BSF / BSR
    // (SDM Vol. 2 TZCNT, LZCNT: "on processors that do not support ... the instruction byte encoding is executed as BSF/BSR").
    private static Exec TzcntAsBsf(InstructionEngine e, ref Instruction i) => BitScanAs(e, ref i, Mnemonic.Bsf);
    private static Exec LzcntAsBsr(InstructionEngine e, ref Instruction i) => BitScanAs(e, ref i, Mnemonic.Bsr);

    private static Exec BitScanAs(InstructionEngine e, ref Instruction i, Mnemonic m)
    {
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 1, size, out ulong v)) return Exec.Fault;
        if (v == 0) { e.SetFlags(ZF, ZF); return Exec.Next; }
        SetGpr(e._cpu, i.Op0Register, m == Mnemonic.Bsf ? (ulong)BitOperations.TrailingZeroCount(v) : (ulong)(63 - BitOperations.LeadingZeroCount(v)));
        e.SetFlags(ZF, 0);
        return Exec.Next;
    }

    private static Exec BitScan(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 1, size, out ulong v)) return Exec.Fault;
        var m = i.Mnemonic;
        int bits = 8 * size;
        switch (m)
        {
            case Mnemonic.Bsf:
            case Mnemonic.Bsr:
                // Source zero: ZF=1 and the destination is left unchanged (AMD documents it; Intel CPUs behave so).
                if (v == 0) { e.SetFlags(ZF, ZF); return Exec.Next; }
                SetGpr(c, i.Op0Register, m == Mnemonic.Bsf ? (ulong)BitOperations.TrailingZeroCount(v) : (ulong)(63 - BitOperations.LeadingZeroCount(v)));
                e.SetFlags(ZF, 0);
                return Exec.Next;
            case Mnemonic.Tzcnt:
            {
                ulong r = v == 0 ? (ulong)bits : (ulong)BitOperations.TrailingZeroCount(v);
                SetGpr(c, i.Op0Register, r);
                e.SetFlags(CF | ZF, (v == 0 ? CF : 0) | (r == 0 ? ZF : 0));
                return Exec.Next;
            }
            case Mnemonic.Lzcnt:
            {
                ulong r = v == 0 ? (ulong)bits : (ulong)(BitOperations.LeadingZeroCount(v) - (64 - bits));
                SetGpr(c, i.Op0Register, r);
                e.SetFlags(CF | ZF, (v == 0 ? CF : 0) | (r == 0 ? ZF : 0));
                return Exec.Next;
            }
            default: // Popcnt
                SetGpr(c, i.Op0Register, (ulong)BitOperations.PopCount(v));
                e.SetFlags(CpuState.StatusFlags, v == 0 ? ZF : 0);
                return Exec.Next;
        }
    }

    private static Exec Mul(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var m = i.Mnemonic;
        bool signed = m == Mnemonic.Imul;
        if (signed && i.OpCount > 1)
        {
            // Two- and three-operand IMUL: truncated product, CF=OF=1 when it does not fit.
            int sz = OpSize(ref i, 0);
            ulong a, b;
            if (i.OpCount == 2) { a = GetGpr(c, i.Op0Register); if (!e.ReadOp(ref i, 1, sz, out b)) return Exec.Fault; }
            else { if (!e.ReadOp(ref i, 1, sz, out a)) return Exec.Fault; b = i.GetImmediate(2); }
            Int128 p = (Int128)SignExtend(a, sz) * SignExtend(b, sz);
            ulong lo = (ulong)p & Mask(sz);
            bool of = p != (Int128)SignExtend(lo, sz);
            SetGpr(c, i.Op0Register, lo);
            e.SetFlags(CpuState.StatusFlags, Szp(lo, sz) | (of ? CF | OF : 0));
            return Exec.Next;
        }
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 0, size, out ulong src)) return Exec.Fault;
        ulong acc = c.Gpr[0] & Mask(size);
        ulong low, high;
        bool overflow;
        if (signed)
        {
            Int128 p = (Int128)SignExtend(acc, size) * SignExtend(src, size);
            low = (ulong)p & Mask(size);
            high = (ulong)(p >> (8 * size)) & Mask(size);
            overflow = p != (Int128)SignExtend(low, size);
        }
        else
        {
            UInt128 p = (UInt128)acc * src;
            low = (ulong)p & Mask(size);
            high = (ulong)(p >> (8 * size)) & Mask(size);
            overflow = high != 0;
        }
        if (size == 1) SetGprSized(c, 0, 2, low | (high << 8));
        else { SetGprSized(c, 0, size, low); SetGprSized(c, 2, size, high); }
        // SF, ZF, AF and PF are undefined: computed from the low half here.
        e.SetFlags(CpuState.StatusFlags, Szp(low, size) | (overflow ? CF | OF : 0));
        return Exec.Next;
    }

    private static long SignExtend(ulong v, int size) => size switch
    {
        1 => (sbyte)v,
        2 => (short)v,
        4 => (int)v,
        _ => (long)v,
    };

    private static Exec Div(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0);
        if (!e.ReadOp(ref i, 0, size, out ulong divisor)) return Exec.Fault;
        var de = new PendingException(Vector.DE, false, 0, 0);
        if (divisor == 0) return e.Raise(de);
        int bits = 8 * size;
        UInt128 dividend = size == 1 ? (UInt128)(c.Gpr[0] & 0xffff)
            : ((UInt128)(c.Gpr[2] & Mask(size)) << bits) | (c.Gpr[0] & Mask(size));
        ulong q, r;
        if (i.Mnemonic == Mnemonic.Div)
        {
            UInt128 qq = dividend / divisor;
            if (qq > Mask(size)) return e.Raise(de);
            q = (ulong)qq; r = (ulong)(dividend % divisor);
        }
        else
        {
            // Sign-extend the 2n-bit dividend to 128 bits.
            Int128 sd = (Int128)(dividend << (128 - 2 * bits)) >> (128 - 2 * bits);
            Int128 sv = SignExtend(divisor, size);
            if (sd == Int128.MinValue && sv == -1) return e.Raise(de);
            Int128 qq = sd / sv;
            long lim = size == 8 ? long.MaxValue : (1L << (bits - 1)) - 1;
            if (qq > lim || qq < -lim - 1) return e.Raise(de);
            q = (ulong)qq & Mask(size); r = (ulong)(sd % sv) & Mask(size);
        }
        if (size == 1) SetGprSized(c, 0, 2, q | (r << 8));
        else { SetGprSized(c, 0, size, q); SetGprSized(c, 2, size, r); }
        return Exec.Next; // all arithmetic flags undefined: left unchanged
    }

    /// <summary>The destination and masked count of a shift or rotate (count operand <paramref name="countOp"/>: 5 bits,
    /// 6 with a 64-bit operand). A zero count changes nothing but still zero-extends a 32-bit register destination.</summary>
    private bool ShiftOperands(ref Instruction i, int size, int countOp, out int count, out bool mem, out MemLoc loc, out ulong a)
    {
        var c = _cpu;
        ulong cnt = i.GetOpKind(countOp) == OpKind.Register ? GetGpr(c, i.GetOpRegister(countOp)) : i.GetImmediate(countOp);
        count = (int)(cnt & (size == 8 ? 0x3fu : 0x1fu));
        mem = i.Op0Kind == OpKind.Memory;
        loc = default;
        a = 0;
        if (mem && !ResolveModrm(ref i, size, PageAccess.Write, out loc)) return false;
        if (mem) { if (!ReadLoc(loc, out a)) return false; }
        else a = GetGpr(c, i.Op0Register);
        a &= Mask(size);
        if (count == 0 && !mem) SetGpr(c, i.Op0Register, a);
        return true;
    }

    private static Exec Rotate(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var m = i.Mnemonic;
        int size = OpSize(ref i, 0);
        int bits = 8 * size;
        ulong msk = Mask(size);
        if (!e.ShiftOperands(ref i, size, 1, out int count, out bool mem, out var loc, out ulong a)) return Exec.Fault;
        if (count == 0) return Exec.Next;
        ulong r, f = c.Rflags;
        ulong top = 1ul << (bits - 1);
        switch (m)
        {
            case Mnemonic.Rol:
            {
                int n = count % bits;
                r = n == 0 ? a : ((a << n) | (a >> (bits - n))) & msk;
                bool cf = (r & 1) != 0;
                f = (f & ~(CF | OF)) | (cf ? CF : 0) | ((((r & top) != 0) ^ cf) ? OF : 0);
                break;
            }
            case Mnemonic.Ror:
            {
                int n = count % bits;
                r = n == 0 ? a : ((a >> n) | (a << (bits - n))) & msk;
                bool msb = (r & top) != 0, next = (r & (top >> 1)) != 0;
                f = (f & ~(CF | OF)) | (msb ? CF : 0) | ((msb ^ next) ? OF : 0);
                break;
            }
            case Mnemonic.Rcl:
            {
                int n = count % (bits + 1);
                r = a;
                ulong cf = f & CF;
                for (int k = 0; k < n; k++) { ulong outBit = (r & top) != 0 ? 1ul : 0; r = ((r << 1) | cf) & msk; cf = outBit; }
                f = (f & ~(CF | OF)) | cf | ((((r & top) != 0) ^ (cf != 0)) ? OF : 0);
                break;
            }
            default: // Rcr
            {
                int n = count % (bits + 1);
                r = a;
                ulong cf = f & CF;
                bool of = ((a & top) != 0) ^ (cf != 0);
                for (int k = 0; k < n; k++) { ulong outBit = r & 1; r = (r >> 1) | (cf != 0 ? top : 0); cf = outBit; }
                f = (f & ~(CF | OF)) | cf | (of ? OF : 0);
                break;
            }
        }
        if (mem) { if (!e.WriteLoc(loc, r)) return Exec.Fault; }
        else SetGpr(c, i.Op0Register, r);
        c.Rflags = f;
        return Exec.Next;
    }

    private static Exec Pushf(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = e.StackOperandSize(ref i);
        if ((c.Rflags & CpuState.FlagVm) != 0 && ((c.Rflags >> 12) & 3) != 3)
        {
            // Virtual-8086 with IOPL < 3: only a 16-bit PUSHF under CR4.VME, which shows VIF as IF and IOPL as 3.
            if ((c.Cr4 & CpuState.Cr4Vme) == 0 || size != 2) return e.Raise(PendingException.Gp0);
            ulong f = (c.Rflags & 0xffff & ~CpuState.FlagIf) | CpuState.FlagIopl | ((c.Rflags & CpuState.FlagVif) != 0 ? CpuState.FlagIf : 0);
            return e.PushValue(f, 2) ? Exec.Next : Exec.Fault;
        }
        // VM and RF are stored as 0.
        return e.PushValue(c.Rflags & ~(CpuState.FlagVm | (1ul << 16)) & Mask(size), size) ? Exec.Next : Exec.Fault;
    }
}
