// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // x87 data and arithmetic instructions (SDM Vol. 1 chapter 8): loads, stores, integer conversions, the four
    // operations with their reverse and popping forms, compares into C0/C2/C3 or EFLAGS, constants, sign and
    // stack management. The registers hold the 80-bit format in CpuState.Fx (FXSAVE layout: ST(i) at 32+16*i, in
    // stack order; TOP in FSW bits 13:11; the abridged tag byte per physical register). Arithmetic is carried out in
    // double precision, so results are exact for values a double holds and rounded to 53 bits otherwise (a real
    // x87 rounds to the precision control, 64 bits by default). Stack faults are not modelled: an empty register
    // reads as whatever it last held.

    private static delegate*<InstructionEngine, ref Instruction, Exec> SelectX87(Code c)
    {
        switch (c.Mnemonic())
        {
            case Mnemonic.Fld: case Mnemonic.Fild: case Mnemonic.Fldz: case Mnemonic.Fld1: case Mnemonic.Fldpi:
            case Mnemonic.Fldl2e: case Mnemonic.Fldl2t: case Mnemonic.Fldlg2: case Mnemonic.Fldln2:
                return &X87Load;
            case Mnemonic.Fst: case Mnemonic.Fstp: case Mnemonic.Fist: case Mnemonic.Fistp: case Mnemonic.Fisttp:
                return c is Code.Fstpnce_sti ? null : &X87Store;
            case Mnemonic.Fadd: case Mnemonic.Faddp: case Mnemonic.Fiadd: case Mnemonic.Fsub: case Mnemonic.Fsubp:
            case Mnemonic.Fisub: case Mnemonic.Fsubr: case Mnemonic.Fsubrp: case Mnemonic.Fisubr: case Mnemonic.Fmul:
            case Mnemonic.Fmulp: case Mnemonic.Fimul: case Mnemonic.Fdiv: case Mnemonic.Fdivp: case Mnemonic.Fidiv:
            case Mnemonic.Fdivr: case Mnemonic.Fdivrp: case Mnemonic.Fidivr:
                return &X87Arith;
            case Mnemonic.Fcom: case Mnemonic.Fcomp: case Mnemonic.Fcompp: case Mnemonic.Fucom: case Mnemonic.Fucomp:
            case Mnemonic.Fucompp: case Mnemonic.Fcomi: case Mnemonic.Fcomip: case Mnemonic.Fucomi: case Mnemonic.Fucomip:
            case Mnemonic.Ftst: case Mnemonic.Fxam:
                return c is Code.Ftstp ? null : &X87Compare;
            case Mnemonic.Fcmovb: case Mnemonic.Fcmove: case Mnemonic.Fcmovbe: case Mnemonic.Fcmovu:
            case Mnemonic.Fcmovnb: case Mnemonic.Fcmovne: case Mnemonic.Fcmovnbe: case Mnemonic.Fcmovnu:
                return &Fcmov;
            case Mnemonic.Fchs: case Mnemonic.Fabs: case Mnemonic.Fsqrt: case Mnemonic.Frndint: case Mnemonic.Fxch:
            case Mnemonic.Ffree: case Mnemonic.Ffreep: case Mnemonic.Fincstp: case Mnemonic.Fdecstp: case Mnemonic.Fnop:
                return &X87Misc;
        }
        return null;
    }

    // The "real indefinite" QNaN an invalid operation returns: negative, quiet, payload zero.
    private static readonly double RealIndefinite = BitConverter.UInt64BitsToDouble(0xfff8000000000000);

    private int X87Top => (_cpu.Fsw >> 11) & 7;

    private void SetTop(int top) => _cpu.Fsw = (ushort)((_cpu.Fsw & ~0x3800) | ((top & 7) << 11));

    private static double ExtToDouble(ReadOnlySpan<byte> b)
    {
        ulong mant = BinaryPrimitives.ReadUInt64LittleEndian(b);
        int se = BinaryPrimitives.ReadUInt16LittleEndian(b[8..]);
        bool neg = (se & 0x8000) != 0;
        int exp = se & 0x7fff;
        double v;
        if (exp == 0x7fff)
            v = (mant << 1) == 0 ? double.PositiveInfinity : BitConverter.UInt64BitsToDouble(0x7ff8000000000000 | ((mant << 1) >> 12));
        else if (mant == 0) v = 0;
        else v = Math.ScaleB((double)mant, exp - 16383 - 63);
        return neg ? -v : v;
    }

    private static void DoubleToExt(double d, Span<byte> b)
    {
        ulong bits = BitConverter.DoubleToUInt64Bits(d);
        int sign = (int)(bits >> 63) << 15;
        int e = (int)(bits >> 52) & 0x7ff;
        ulong frac = bits & 0xfffffffffffff;
        ulong mant;
        int exp;
        if (e == 0x7ff) { exp = 0x7fff; mant = frac == 0 ? 1ul << 63 : 0xc000000000000000 | (frac << 11); }
        else if (e == 0) { if (frac == 0) { exp = 0; mant = 0; } else { int lz = System.Numerics.BitOperations.LeadingZeroCount(frac); mant = frac << lz; exp = -1074 - lz + 16383 + 63; } }
        else { exp = e - 1023 + 16383; mant = (1ul << 63) | (frac << 11); }
        BinaryPrimitives.WriteUInt64LittleEndian(b, mant);
        BinaryPrimitives.WriteUInt16LittleEndian(b[8..], (ushort)(sign | exp));
    }

    private double St(int i) => ExtToDouble(_cpu.St(i));

    private void SetSt(int i, double v) => DoubleToExt(v, _cpu.St(i));

    private void X87Push(double v)
    {
        var fx = _cpu.Fx.AsSpan(32, 128);
        fx[..112].CopyTo(fx[16..]);
        int top = (X87Top - 1) & 7;
        SetTop(top);
        _cpu.FtwAbridged |= (byte)(1 << top);
        SetSt(0, v);
    }

    private void X87Pop()
    {
        var fx = _cpu.Fx.AsSpan(32, 128);
        Span<byte> st0 = stackalloc byte[16];
        fx[..16].CopyTo(st0);
        fx[16..].CopyTo(fx);
        st0.CopyTo(fx[112..]); // the physical register keeps its contents, now as ST(7)
        int top = X87Top;
        _cpu.FtwAbridged &= (byte)~(1 << top);
        SetTop(top + 1);
    }

    /// <summary>The condition codes C0 (bit 8), C1 (9), C2 (10), C3 (14) of FSW.</summary>
    private void SetConditionCodes(bool c0, bool c1, bool c2, bool c3)
        => _cpu.Fsw = (ushort)((_cpu.Fsw & ~0x4700) | (c0 ? 0x100 : 0) | (c1 ? 0x200 : 0) | (c2 ? 0x400 : 0) | (c3 ? 0x4000 : 0));

    /// <summary>Reads a memory operand as a number: m16/m32/m64 integer or m32/m64/m80 real.</summary>
    private bool ReadX87Memory(ref Instruction i, bool integer, out double v)
    {
        v = 0;
        int size = i.MemorySize.GetSize();
        if (size == 10)
        {
            Span<byte> b = stackalloc byte[10];
            if (!VecMemory(ref i, b, false, PageAccess.Read)) return false;
            v = ExtToDouble(b);
            return true;
        }
        if (!ReadOp(ref i, i.Op0Kind == OpKind.Memory ? 0 : 1, size, out ulong raw)) return false;
        if (integer) v = size switch { 2 => (short)raw, 4 => (int)raw, _ => (long)raw };
        else v = size == 4 ? BitConverter.UInt32BitsToSingle((uint)raw) : BitConverter.UInt64BitsToDouble(raw);
        return true;
    }

    private bool X87Ready() => X87Available() && NoPendingX87();

    private static Exec X87Load(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        double v;
        switch (i.Mnemonic)
        {
            case Mnemonic.Fldz: v = 0; break;
            case Mnemonic.Fld1: v = 1; break;
            case Mnemonic.Fldpi: v = Math.PI; break;
            case Mnemonic.Fldl2e: v = 1.4426950408889634; break;
            case Mnemonic.Fldl2t: v = 3.3219280948873622; break;
            case Mnemonic.Fldlg2: v = 0.3010299956639812; break;
            case Mnemonic.Fldln2: v = 0.6931471805599453; break;
            default:
                if (i.Op0Kind == OpKind.Register)
                {
                    // FLD ST(i) copies the register bit for bit.
                    Span<byte> raw = stackalloc byte[10];
                    e._cpu.St(i.Op0Register - Register.ST0).CopyTo(raw);
                    e.X87Push(0);
                    raw.CopyTo(e._cpu.St(0));
                    return Exec.Next;
                }
                if (i.MemorySize.GetSize() == 10)
                {
                    Span<byte> raw = stackalloc byte[10];
                    if (!e.VecMemory(ref i, raw, false, PageAccess.Read)) return Exec.Fault;
                    e.X87Push(0);
                    raw.CopyTo(e._cpu.St(0));
                    return Exec.Next;
                }
                if (!e.ReadX87Memory(ref i, i.Mnemonic == Mnemonic.Fild, out v)) return Exec.Fault;
                break;
        }
        e.X87Push(v);
        return Exec.Next;
    }

    private static Exec X87Store(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        var m = i.Mnemonic;
        bool pop = m is Mnemonic.Fstp or Mnemonic.Fistp or Mnemonic.Fisttp;
        if (i.Op0Kind == OpKind.Register)
        {
            e._cpu.St(0).CopyTo(e._cpu.St(i.Op0Register - Register.ST0));
            e._cpu.FtwAbridged |= (byte)(1 << ((e.X87Top + (i.Op0Register - Register.ST0)) & 7));
        }
        else
        {
            int size = i.MemorySize.GetSize();
            double v = e.St(0);
            if (m is Mnemonic.Fist or Mnemonic.Fistp or Mnemonic.Fisttp)
            {
                int rc = m == Mnemonic.Fisttp ? 3 : (e._cpu.Fcw >> 10) & 3;
                double r = rc switch { 0 => Math.Round(v, MidpointRounding.ToEven), 1 => Math.Floor(v), 2 => Math.Ceiling(v), _ => Math.Truncate(v) };
                double lim = size == 2 ? 32768.0 : size == 4 ? 2147483648.0 : 9223372036854775808.0;
                // NaN or out of range: the integer indefinite (the invalid-operation exception is masked by default).
                ulong bits = double.IsNaN(r) || r >= lim || r < -lim ? 1ul << (8 * size - 1) : (ulong)(long)r;
                if (!e.WriteOp(ref i, 0, size, bits & Mask(size))) return Exec.Fault;
            }
            else if (size == 10)
            {
                Span<byte> raw = stackalloc byte[10];
                e._cpu.St(0).CopyTo(raw);
                if (!e.VecMemory(ref i, raw, false, PageAccess.Write)) return Exec.Fault;
            }
            else
            {
                ulong bits = size == 4 ? BitConverter.SingleToUInt32Bits((float)v) : BitConverter.DoubleToUInt64Bits(v);
                if (!e.WriteOp(ref i, 0, size, bits)) return Exec.Fault;
            }
        }
        if (pop) e.X87Pop();
        return Exec.Next;
    }

    private static Exec X87Arith(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        var m = i.Mnemonic;
        int dest;
        double a, b;
        if (i.Op0Kind == OpKind.Memory)
        {
            dest = 0;
            a = e.St(0);
            if (!e.ReadX87Memory(ref i, m is Mnemonic.Fiadd or Mnemonic.Fisub or Mnemonic.Fisubr or Mnemonic.Fimul or Mnemonic.Fidiv or Mnemonic.Fidivr, out b)) return Exec.Fault;
        }
        else
        {
            dest = i.Op0Register - Register.ST0;
            a = e.St(dest);
            b = e.St(i.Op1Register - Register.ST0);
        }
        double r = m switch
        {
            Mnemonic.Fadd or Mnemonic.Faddp or Mnemonic.Fiadd => a + b,
            Mnemonic.Fsub or Mnemonic.Fsubp or Mnemonic.Fisub => a - b,
            Mnemonic.Fsubr or Mnemonic.Fsubrp or Mnemonic.Fisubr => b - a,
            Mnemonic.Fmul or Mnemonic.Fmulp or Mnemonic.Fimul => a * b,
            Mnemonic.Fdiv or Mnemonic.Fdivp or Mnemonic.Fidiv => a / b,
            _ => b / a,
        };
        if (double.IsNaN(r) && !double.IsNaN(a) && !double.IsNaN(b)) r = RealIndefinite;
        e.SetSt(dest, r);
        e.SetConditionCodes(false, false, false, false);
        if (m is Mnemonic.Faddp or Mnemonic.Fsubp or Mnemonic.Fsubrp or Mnemonic.Fmulp or Mnemonic.Fdivp or Mnemonic.Fdivrp) e.X87Pop();
        return Exec.Next;
    }

    private static Exec X87Compare(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        var m = i.Mnemonic;
        double a = e.St(0);
        if (m == Mnemonic.Fxam)
        {
            // Class in C3,C2,C0; sign in C1.
            bool empty = (e._cpu.FtwAbridged & (1 << e.X87Top)) == 0;
            bool sign = (e._cpu.St(0)[9] & 0x80) != 0;
            if (empty) e.SetConditionCodes(true, sign, false, true);
            else if (double.IsNaN(a)) e.SetConditionCodes(true, sign, false, false);
            else if (double.IsInfinity(a)) e.SetConditionCodes(true, sign, true, false);
            else if (a == 0) e.SetConditionCodes(false, sign, false, true);
            else if (double.IsSubnormal(a)) e.SetConditionCodes(false, sign, true, true);
            else e.SetConditionCodes(false, sign, true, false);
            return Exec.Next;
        }
        double b;
        if (m == Mnemonic.Ftst) b = 0;
        else if (i.Op0Kind == OpKind.Memory) { if (!e.ReadX87Memory(ref i, false, out b)) return Exec.Fault; }
        else if (m is Mnemonic.Fcompp or Mnemonic.Fucompp) b = e.St(1);
        else b = e.St((i.OpCount > 1 ? i.Op1Register : i.Op0Register) - Register.ST0);
        bool un = double.IsNaN(a) || double.IsNaN(b);
        bool less = !un && a < b, equal = !un && a == b;
        if (m is Mnemonic.Fcomi or Mnemonic.Fcomip or Mnemonic.Fucomi or Mnemonic.Fucomip)
        {
            e.SetFlags(CpuState.StatusFlags, un ? ZF | PF | CF : less ? CF : equal ? ZF : 0);
            e.SetConditionCodes(false, false, false, false);
        }
        else
        {
            e.SetConditionCodes(un || less, false, un, un || equal);
        }
        if (m is Mnemonic.Fcomp or Mnemonic.Fucomp or Mnemonic.Fcomip or Mnemonic.Fucomip) e.X87Pop();
        else if (m is Mnemonic.Fcompp or Mnemonic.Fucompp) { e.X87Pop(); e.X87Pop(); }
        return Exec.Next;
    }

    // FCMOVcc ST(0), ST(i): copies ST(i) when the EFLAGS condition (B: CF, E: ZF, BE: CF|ZF, U: PF, or their negations) holds.
    private static Exec Fcmov(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        ulong f = e._cpu.Rflags;
        bool cond = i.Mnemonic switch
        {
            Mnemonic.Fcmovb => (f & CF) != 0,
            Mnemonic.Fcmove => (f & ZF) != 0,
            Mnemonic.Fcmovbe => (f & (CF | ZF)) != 0,
            Mnemonic.Fcmovu => (f & PF) != 0,
            Mnemonic.Fcmovnb => (f & CF) == 0,
            Mnemonic.Fcmovne => (f & ZF) == 0,
            Mnemonic.Fcmovnbe => (f & (CF | ZF)) == 0,
            _ => (f & PF) == 0,
        };
        if (cond) e._cpu.St(i.Op1Register - Register.ST0).CopyTo(e._cpu.St(0));
        e._cpu.Fsw &= unchecked((ushort)~0x200);
        return Exec.Next;
    }

    private static Exec X87Misc(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        var c = e._cpu;
        switch (i.Mnemonic)
        {
            case Mnemonic.Fchs: c.St(0)[9] ^= 0x80; break;
            case Mnemonic.Fabs: c.St(0)[9] &= 0x7f; break;
            case Mnemonic.Fsqrt: { double a = e.St(0); e.SetSt(0, a < 0 ? RealIndefinite : Math.Sqrt(a)); break; }
            case Mnemonic.Frndint:
            {
                double a = e.St(0);
                int rc = (c.Fcw >> 10) & 3;
                e.SetSt(0, rc switch { 0 => Math.Round(a, MidpointRounding.ToEven), 1 => Math.Floor(a), 2 => Math.Ceiling(a), _ => Math.Truncate(a) });
                break;
            }
            case Mnemonic.Fxch:
            {
                int k = (i.OpCount > 1 ? i.Op1Register : i.Op0Register) - Register.ST0;
                Span<byte> t = stackalloc byte[10];
                c.St(0).CopyTo(t);
                c.St(k).CopyTo(c.St(0));
                t.CopyTo(c.St(k));
                break;
            }
            case Mnemonic.Ffree: case Mnemonic.Ffreep:
                c.FtwAbridged &= (byte)~(1 << ((e.X87Top + (i.Op0Register - Register.ST0)) & 7));
                if (i.Mnemonic == Mnemonic.Ffreep) e.X87Pop();
                break;
            case Mnemonic.Fincstp: case Mnemonic.Fdecstp:
            {
                // TOP moves; the registers keep their physical places, so the stack-ordered image rotates.
                var fx = c.Fx.AsSpan(32, 128);
                Span<byte> t = stackalloc byte[128];
                fx.CopyTo(t);
                int shift = i.Mnemonic == Mnemonic.Fincstp ? 1 : 7;
                for (int k = 0; k < 8; k++) t.Slice(16 * ((k + shift) & 7), 16).CopyTo(fx.Slice(16 * k, 16));
                e.SetTop(e.X87Top + (i.Mnemonic == Mnemonic.Fincstp ? 1 : -1));
                break;
            }
        }
        c.Fsw &= unchecked((ushort)~0x200); // C1 = 0: no stack fault, nothing rounded up
        return Exec.Next;
    }
}
