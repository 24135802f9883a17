// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // The rest of the x87 (SDM Vol. 1 chapter 8, Vol. 2 instruction pages): the environment and state images
    // (FNSTENV/FLDENV 14 and 28 bytes, FNSAVE/FRSTOR 94 and 108 bytes, real-mode and protected-mode layouts of SDM Vol. 1
    // figures 8-9 to 8-12), packed BCD (FBLD/FBSTP, exact: 18 digits fit the 64-bit significand), FICOM/FICOMP, the
    // transcendental and scaling instructions (carried out in double precision like the rest of the x87 here), the
    // 8087/287 control forms a 387 and later execute as FNOP, and the SSE reciprocal estimates. The last instruction and
    // operand pointers are those of the FXSAVE image (the engine does not track them: zero unless software loaded them).

    private static delegate*<InstructionEngine, ref Instruction, Exec> SelectX87Env(Code c)
    {
        switch (c)
        {
            case Code.Fnstenv_m14byte: case Code.Fnstenv_m28byte: case Code.Fstenv_m14byte: case Code.Fstenv_m28byte:
            case Code.Fnsave_m94byte: case Code.Fnsave_m108byte: case Code.Fsave_m94byte: case Code.Fsave_m108byte:
                return &X87StoreEnv;
            case Code.Fldenv_m14byte: case Code.Fldenv_m28byte: case Code.Frstor_m94byte: case Code.Frstor_m108byte:
                return &X87LoadEnv;
            case Code.Fbld_m80bcd: return &Fbld;
            case Code.Fbstp_m80bcd: return &Fbstp;
            case Code.Ficom_m16int: case Code.Ficom_m32int: case Code.Ficomp_m16int: case Code.Ficomp_m32int: return &Ficom;
            // FENI/FDISI (8087) and FSETPM (287) are FNOP on a 387 and later (SDM Vol. 1 8.3.13 and appendix).
            case Code.Fneni: case Code.Fndisi: case Code.Fnsetpm: return &X87Nop;
            case Code.Feni: case Code.Fdisi: case Code.Fsetpm: return &X87WaitNop;
            case Code.Fstpnce_sti: return &Fstpnce; // D9 D8+i: FSTP ST(i)'s alias
            case Code.F2xm1: case Code.Fyl2x: case Code.Fyl2xp1: case Code.Fptan: case Code.Fpatan: case Code.Fsin: case Code.Fcos:
            case Code.Fsincos: case Code.Fscale: case Code.Fxtract: case Code.Fprem: case Code.Fprem1:
                return &X87Transcendental;
            case Code.Rcpps_xmm_xmmm128: case Code.Rcpss_xmm_xmmm32: case Code.Rsqrtps_xmm_xmmm128: case Code.Rsqrtss_xmm_xmmm32:
                return &ReciprocalEstimate;
        }
        return null;
    }

    private static Exec X87Nop(InstructionEngine e, ref Instruction i) => e.X87Available() ? Exec.Next : Exec.Fault;
    private static Exec X87WaitNop(InstructionEngine e, ref Instruction i) => e.X87Ready() ? Exec.Next : Exec.Fault;

    private static Exec Fstpnce(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        var c = e._cpu;
        c.St(0).CopyTo(c.St(i.Op0Register - Register.ST0));
        c.FtwAbridged |= (byte)(1 << ((e.X87Top + (i.Op0Register - Register.ST0)) & 7));
        e.X87Pop();
        return Exec.Next;
    }

    // ---- environment and state ---------------------------------------------------------------------------------

    /// <summary>The full two-bit tag of physical register <paramref name="phys"/>: 0 valid, 1 zero, 2 special, 3 empty.</summary>
    private int FullTag(int phys)
    {
        if ((_cpu.FtwAbridged & (1 << phys)) == 0) return 3;
        var r = _cpu.St((phys - X87Top) & 7);
        ulong mant = BinaryPrimitives.ReadUInt64LittleEndian(r);
        int exp = BinaryPrimitives.ReadUInt16LittleEndian(r[8..]) & 0x7fff;
        if (exp == 0x7fff) return 2;
        if (exp == 0) return mant == 0 ? 1 : 2;
        return (mant >> 63) == 0 ? 2 : 0; // an unnormal is special
    }

    /// <summary>Sets TOP, keeping each physical register's contents (the image is in stack order, so it rotates).</summary>
    private void SetTopKeepingRegisters(int top)
    {
        int old = X87Top;
        if (top == old) return;
        var fx = _cpu.Fx.AsSpan(32, 128);
        Span<byte> t = stackalloc byte[128];
        fx.CopyTo(t);
        for (int k = 0; k < 8; k++) t.Slice(16 * ((k + top - old) & 7), 16).CopyTo(fx.Slice(16 * k, 16));
        SetTop(top);
    }

    /// <summary>Writes the 14- or 28-byte environment of the current mode (SDM Vol. 1 figures 8-9 to 8-12) into <paramref name="env"/>.</summary>
    private void BuildEnvironment(Span<byte> env)
    {
        var c = _cpu;
        env.Clear();
        int ftw = 0;
        for (int p = 0; p < 8; p++) ftw |= FullTag(p) << (2 * p);
        uint fip = BinaryPrimitives.ReadUInt32LittleEndian(c.Fx.AsSpan(8));
        ushort fcs = BinaryPrimitives.ReadUInt16LittleEndian(c.Fx.AsSpan(12));
        uint fdp = BinaryPrimitives.ReadUInt32LittleEndian(c.Fx.AsSpan(16));
        ushort fds = BinaryPrimitives.ReadUInt16LittleEndian(c.Fx.AsSpan(20));
        uint fop = BinaryPrimitives.ReadUInt16LittleEndian(c.Fx.AsSpan(6)) & 0x7ffu;
        bool real = c.Mode is CpuMode.Real or CpuMode.Virtual8086;
        if (env.Length == 28)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(env, 0xffff0000u | c.Fcw);
            BinaryPrimitives.WriteUInt32LittleEndian(env[4..], 0xffff0000u | c.Fsw);
            BinaryPrimitives.WriteUInt32LittleEndian(env[8..], 0xffff0000u | (uint)ftw);
            if (real)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(env[12..], 0xffff0000u | (fip & 0xffff));
                BinaryPrimitives.WriteUInt32LittleEndian(env[16..], (fip >> 16) << 12 | fop);
                BinaryPrimitives.WriteUInt32LittleEndian(env[20..], 0xffff0000u | (fdp & 0xffff));
                BinaryPrimitives.WriteUInt32LittleEndian(env[24..], (fdp >> 16) << 12);
            }
            else
            {
                BinaryPrimitives.WriteUInt32LittleEndian(env[12..], fip);
                BinaryPrimitives.WriteUInt32LittleEndian(env[16..], fop << 16 | fcs);
                BinaryPrimitives.WriteUInt32LittleEndian(env[20..], fdp);
                BinaryPrimitives.WriteUInt32LittleEndian(env[24..], 0xffff0000u | fds);
            }
            return;
        }
        BinaryPrimitives.WriteUInt16LittleEndian(env, c.Fcw);
        BinaryPrimitives.WriteUInt16LittleEndian(env[2..], c.Fsw);
        BinaryPrimitives.WriteUInt16LittleEndian(env[4..], (ushort)ftw);
        if (real)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(env[6..], (ushort)fip);
            BinaryPrimitives.WriteUInt16LittleEndian(env[8..], (ushort)(((fip >> 16) & 0xf) << 12 | fop));
            BinaryPrimitives.WriteUInt16LittleEndian(env[10..], (ushort)fdp);
            BinaryPrimitives.WriteUInt16LittleEndian(env[12..], (ushort)(((fdp >> 16) & 0xf) << 12));
        }
        else
        {
            BinaryPrimitives.WriteUInt16LittleEndian(env[6..], (ushort)fip);
            BinaryPrimitives.WriteUInt16LittleEndian(env[8..], fcs);
            BinaryPrimitives.WriteUInt16LittleEndian(env[10..], (ushort)fdp);
            BinaryPrimitives.WriteUInt16LittleEndian(env[12..], fds);
        }
    }

    /// <summary>Loads an environment image: FCW, FSW (TOP with the registers kept in place), the tags and the pointers.</summary>
    private void LoadEnvironment(ReadOnlySpan<byte> env)
    {
        var c = _cpu;
        bool big = env.Length == 28;
        bool real = c.Mode is CpuMode.Real or CpuMode.Virtual8086;
        ushort fcw = BinaryPrimitives.ReadUInt16LittleEndian(env);
        ushort fsw = BinaryPrimitives.ReadUInt16LittleEndian(env[(big ? 4 : 2)..]);
        ushort ftw = BinaryPrimitives.ReadUInt16LittleEndian(env[(big ? 8 : 4)..]);
        uint fip, fdp, fop = 0;
        ushort fcs = 0, fds = 0;
        if (big)
        {
            uint w3 = BinaryPrimitives.ReadUInt32LittleEndian(env[12..]), w4 = BinaryPrimitives.ReadUInt32LittleEndian(env[16..]);
            uint w5 = BinaryPrimitives.ReadUInt32LittleEndian(env[20..]), w6 = BinaryPrimitives.ReadUInt32LittleEndian(env[24..]);
            if (real) { fip = (w3 & 0xffff) | (w4 >> 12 & 0xffff) << 16; fop = w4 & 0x7ff; fdp = (w5 & 0xffff) | (w6 >> 12 & 0xffff) << 16; }
            else { fip = w3; fcs = (ushort)w4; fop = w4 >> 16 & 0x7ff; fdp = w5; fds = (ushort)w6; }
        }
        else
        {
            ushort w3 = BinaryPrimitives.ReadUInt16LittleEndian(env[6..]), w4 = BinaryPrimitives.ReadUInt16LittleEndian(env[8..]);
            ushort w5 = BinaryPrimitives.ReadUInt16LittleEndian(env[10..]), w6 = BinaryPrimitives.ReadUInt16LittleEndian(env[12..]);
            if (real) { fip = w3 | (uint)(w4 >> 12) << 16; fop = w4 & 0x7ffu; fdp = w5 | (uint)(w6 >> 12) << 16; }
            else { fip = w3; fcs = w4; fdp = w5; fds = w6; }
        }
        c.Fcw = (ushort)(fcw | 0x40);
        SetTopKeepingRegisters((fsw >> 11) & 7);
        c.Fsw = fsw;
        byte abridged = 0;
        for (int p = 0; p < 8; p++) if (((ftw >> (2 * p)) & 3) != 3) abridged |= (byte)(1 << p);
        c.FtwAbridged = abridged;
        BinaryPrimitives.WriteUInt16LittleEndian(c.Fx.AsSpan(6), (ushort)fop);
        BinaryPrimitives.WriteUInt32LittleEndian(c.Fx.AsSpan(8), fip);
        BinaryPrimitives.WriteUInt16LittleEndian(c.Fx.AsSpan(12), fcs);
        BinaryPrimitives.WriteUInt32LittleEndian(c.Fx.AsSpan(16), fdp);
        BinaryPrimitives.WriteUInt16LittleEndian(c.Fx.AsSpan(20), fds);
    }

    // FNSTENV/FSTENV: the environment, then every exception masked. FNSAVE/FSAVE: the environment and ST(0)-ST(7), then FNINIT.
    private static Exec X87StoreEnv(InstructionEngine e, ref Instruction i)
    {
        bool wait = i.Code is Code.Fstenv_m14byte or Code.Fstenv_m28byte or Code.Fsave_m94byte or Code.Fsave_m108byte;
        if (!e.X87Available() || wait && !e.NoPendingX87()) return Exec.Fault;
        bool save = i.Mnemonic is Mnemonic.Fnsave or Mnemonic.Fsave;
        int envSize = i.Code is Code.Fnstenv_m14byte or Code.Fstenv_m14byte or Code.Fnsave_m94byte or Code.Fsave_m94byte ? 14 : 28;
        Span<byte> img = stackalloc byte[108];
        var data = img[..(envSize + (save ? 80 : 0))];
        e.BuildEnvironment(data[..envSize]);
        if (save) for (int k = 0; k < 8; k++) e._cpu.St(k).CopyTo(data.Slice(envSize + 10 * k, 10));
        if (!e.VecMemory(ref i, data, false, PageAccess.Write)) return Exec.Fault;
        if (save) e._cpu.FxInit();
        else e._cpu.Fcw |= 0x3f;
        return Exec.Next;
    }

    private static Exec X87LoadEnv(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Available()) return Exec.Fault;
        bool restore = i.Mnemonic == Mnemonic.Frstor;
        int envSize = i.Code is Code.Fldenv_m14byte or Code.Frstor_m94byte ? 14 : 28;
        Span<byte> img = stackalloc byte[108];
        var data = img[..(envSize + (restore ? 80 : 0))];
        if (!e.VecMemory(ref i, data, false, PageAccess.Read)) return Exec.Fault;
        e.LoadEnvironment(data[..envSize]);
        if (restore)
            for (int k = 0; k < 8; k++)
            {
                var st = e._cpu.St(k);
                data.Slice(envSize + 10 * k, 10).CopyTo(st);
            }
        return Exec.Next;
    }

    // ---- packed BCD --------------------------------------------------------------------------------------------

    private static void IntegerToExt(ulong v, bool negative, Span<byte> b)
    {
        int exp = 0;
        if (v != 0)
        {
            int lz = System.Numerics.BitOperations.LeadingZeroCount(v);
            v <<= lz;
            exp = 16383 + 63 - lz;
        }
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        BinaryPrimitives.WriteUInt16LittleEndian(b[8..], (ushort)((negative ? 0x8000 : 0) | exp));
    }

    private static Exec Fbld(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        Span<byte> m = stackalloc byte[10];
        if (!e.VecMemory(ref i, m, false, PageAccess.Read)) return Exec.Fault;
        ulong v = 0;
        for (int k = 8; k >= 0; k--) v = v * 100 + (ulong)(m[k] >> 4) * 10 + (ulong)(m[k] & 15); // digits above 9 are undefined
        e.X87Push(0);
        IntegerToExt(v, (m[9] & 0x80) != 0, e._cpu.St(0));
        return Exec.Next;
    }

    // FBSTP: ST(0) rounded to an integer by FCW.RC, as 18 BCD digits and a sign; NaN, infinity or a value past 18 digits
    // stores the packed BCD indefinite (FFFF C000 0000 0000 0000) with the invalid-operation exception masked.
    private static Exec Fbstp(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        var st = e._cpu.St(0);
        ulong mant = BinaryPrimitives.ReadUInt64LittleEndian(st);
        int se = BinaryPrimitives.ReadUInt16LittleEndian(st[8..]);
        bool neg = (se & 0x8000) != 0;
        int exp = (se & 0x7fff) - 16383;
        int rc = (e._cpu.Fcw >> 10) & 3;
        Span<byte> m = stackalloc byte[10];
        m.Clear();
        bool invalid = (se & 0x7fff) == 0x7fff || exp > 63;
        ulong v = 0;
        if (!invalid && mant != 0)
        {
            // The bits below the binary point, left-aligned; below one half only a sticky bit is kept.
            ulong frac;
            if (exp < 0) { v = 0; frac = exp == -1 ? mant : 1; }
            else { v = exp == 63 ? mant : mant >> (63 - exp); frac = exp == 63 ? 0 : mant << (exp + 1); }
            bool up = rc switch
            {
                0 => frac > 0x8000000000000000 || frac == 0x8000000000000000 && (v & 1) != 0,
                1 => neg && frac != 0,
                2 => !neg && frac != 0,
                _ => false,
            };
            if (up) v++;
            invalid = v > 999_999_999_999_999_999;
        }
        if (invalid)
        {
            m[9] = 0xff; m[8] = 0xff; m[7] = 0xc0;
        }
        else
        {
            for (int k = 0; k < 9; k++) { int lo = (int)(v % 10); v /= 10; int hi = (int)(v % 10); v /= 10; m[k] = (byte)(hi << 4 | lo); }
            m[9] = neg ? (byte)0x80 : (byte)0;
        }
        if (!e.VecMemory(ref i, m, false, PageAccess.Write)) return Exec.Fault;
        e.X87Pop();
        return Exec.Next;
    }

    // FICOM/FICOMP m16int/m32int: ST(0) against the integer; C3,C2,C0 = 000 greater, 001 less, 100 equal, 111 unordered.
    private static Exec Ficom(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        if (!e.ReadX87Memory(ref i, true, out double b)) return Exec.Fault;
        double a = e.St(0);
        bool un = double.IsNaN(a);
        e.SetConditionCodes(un || a < b, false, un, un || a == b);
        if (i.Mnemonic == Mnemonic.Ficomp) e.X87Pop();
        return Exec.Next;
    }

    // ---- transcendental and scaling ----------------------------------------------------------------------------

    private static Exec X87Transcendental(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Ready()) return Exec.Fault;
        double a = e.St(0);
        bool c0 = false, c1 = false, c2 = false, c3 = false;
        const double TrigLimit = 9223372036854775808.0; // |x| >= 2^63: out of range, C2 set and ST(0) unchanged
        switch (i.Code)
        {
            case Code.F2xm1: e.SetSt(0, Math.Pow(2, a) - 1); break;
            case Code.Fyl2x: { double b = e.St(1); e.SetSt(1, a < 0 ? RealIndefinite : b * Math.Log2(a)); e.X87Pop(); break; }
            case Code.Fyl2xp1: { double b = e.St(1); e.SetSt(1, b * Math.Log2(1 + a)); e.X87Pop(); break; }
            case Code.Fpatan: { double b = e.St(1); e.SetSt(1, Math.Atan2(b, a)); e.X87Pop(); break; }
            case Code.Fsin: case Code.Fcos: case Code.Fptan: case Code.Fsincos:
                if (Math.Abs(a) >= TrigLimit) { c2 = true; break; }
                if (i.Code == Code.Fsin) e.SetSt(0, Math.Sin(a));
                else if (i.Code == Code.Fcos) e.SetSt(0, Math.Cos(a));
                else if (i.Code == Code.Fptan) { e.SetSt(0, Math.Tan(a)); e.X87Push(1.0); }
                else { e.SetSt(0, Math.Sin(a)); e.X87Push(Math.Cos(a)); }
                break;
            case Code.Fscale:
            {
                double b = Math.Truncate(e.St(1));
                int n = double.IsNaN(b) ? 0 : (int)Math.Clamp(b, -100000, 100000);
                e.SetSt(0, double.IsNaN(b) ? b : Math.ScaleB(a, n));
                break;
            }
            case Code.Fxtract:
                if (a == 0) { e.SetSt(0, double.NegativeInfinity); e.X87Push(a); }
                else if (double.IsInfinity(a) || double.IsNaN(a)) { e.SetSt(0, double.IsNaN(a) ? a : double.PositiveInfinity); e.X87Push(a); }
                else
                {
                    int x = Math.ILogB(a);
                    e.SetSt(0, x);
                    e.X87Push(Math.ScaleB(a, -x));
                }
                break;
            default: // FPREM (truncating quotient) and FPREM1 (IEEE, nearest quotient); the quotient's low bits in C0, C3, C1
            {
                double b = e.St(1);
                if (double.IsNaN(a) || double.IsNaN(b) || double.IsInfinity(a) || b == 0) { e.SetSt(0, double.IsNaN(a) ? a : double.IsNaN(b) ? b : RealIndefinite); break; }
                double r = i.Code == Code.Fprem ? a % b : Math.IEEERemainder(a, b);
                double q = Math.Abs(Math.Round((a - r) / b));
                ulong qb = q < 18446744073709551615.0 ? (ulong)q : 0;
                c0 = (qb & 4) != 0; c3 = (qb & 2) != 0; c1 = (qb & 1) != 0;
                e.SetSt(0, r);
                break;
            }
        }
        e.SetConditionCodes(c0, c1, c2, c3);
        return Exec.Next;
    }

    // ---- SSE reciprocal estimates ------------------------------------------------------------------------------

    // RCPPS/RCPSS/RSQRTPS/RSQRTSS: the SDM allows a relative error up to 1.5 * 2^-12; the exact value rounded to single
    // is within it. A denormal input counts as zero (giving a signed infinity) and a denormal result flushes to a signed
    // zero, as the hardware does; RSQRT of a negative number is the default NaN.
    private static Exec ReciprocalEstimate(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        bool packed = i.Code is Code.Rcpps_xmm_xmmm128 or Code.Rsqrtps_xmm_xmmm128;
        bool sqrt = i.Code is Code.Rsqrtps_xmm_xmmm128 or Code.Rsqrtss_xmm_xmmm32;
        Span<byte> s = stackalloc byte[16];
        if (!e.ReadVec(ref i, 1, packed ? 16 : 4, packed, s)) return Exec.Fault;
        var d = MemoryMarshal.Cast<byte, float>(e.XmmOf(i.Op0Register));
        var sf = MemoryMarshal.Cast<byte, float>(s);
        for (int k = 0; k < (packed ? 4 : 1); k++)
        {
            float x = sf[k];
            if (float.IsSubnormal(x)) x = float.IsNegative(x) ? -0f : 0f;
            float r;
            if (float.IsNaN(x)) r = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(x) | QuietF);
            else if (sqrt) r = x < 0 ? DefaultNanF : x == 0 ? (float.IsNegative(x) ? float.NegativeInfinity : float.PositiveInfinity) : (float)(1.0 / Math.Sqrt(x));
            else r = (float)(1.0 / x);
            if (float.IsSubnormal(r)) r = float.IsNegative(r) ? -0f : 0f;
            d[k] = r;
        }
        return Exec.Next;
    }
}
