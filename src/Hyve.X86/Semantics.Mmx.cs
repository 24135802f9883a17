// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // MMX (SDM Vol. 1 chapter 9) and the SSE-era instructions on MMX registers (PSHUFW, PINSRW/PEXTRW, PMOVMSKB,
    // PMINUB..PSADBW, PMULUDQ, PADDQ/PSUBQ, MASKMOVQ, MOVNTQ, MOVQ2DQ/MOVDQ2Q, CVTPI2PS/PD and CVT(T)PS/PD2PI).
    // MMi is the 64-bit mantissa of physical x87 register Ri (9.5): an instruction that touches an MMX register first
    // makes TOP 0 (so ST(i) in the FXSAVE image is Ri) and marks all eight registers valid (abridged tag 0xFF); a write
    // sets the register's exponent and sign (bits 64-79) to all ones. EMMS marks them all empty. Faults (9.5.1 and the
    // instruction pages): CR0.EM #UD, CR0.TS #NM, then a pending unmasked x87 exception #MF. The element-wise work is
    // the SSE2 code's (IntegerLanes, ShiftLanes) applied to the low eight bytes.

    // MMX form -> the 128-bit SSE2 form whose lanes it shares, built once from Iced's names (Paddb_mm_mmm64 ->
    // Paddb_xmm_xmmm128, Psllw_mm_imm8 -> Psllw_xmm_imm8, Punpcklbw_mm_mmm32 -> Punpcklbw_xmm_xmmm128).
    // Built on first use: the handler table is built from a static initializer too, in no guaranteed order.
    private static Code[]? s_mmxLanesMap;
    private static Code[] s_mmxLanes => s_mmxLanesMap ??= BuildMmxLanes();

    private static Code[] BuildMmxLanes()
    {
        var codes = Enum.GetValues<Code>();
        var map = new Code[codes.Length + 1];
        foreach (var c in codes)
        {
            if ((int)c >= map.Length) continue;
            string n = c.ToString();
            string x = n.EndsWith("_mm_mmm64", StringComparison.Ordinal) ? n[..^9] + "_xmm_xmmm128"
                : n.EndsWith("_mm_mmm32", StringComparison.Ordinal) ? n[..^9] + "_xmm_xmmm128"
                : n.EndsWith("_mm_imm8", StringComparison.Ordinal) ? n[..^8] + "_xmm_imm8" : "";
            // Every such SSE2 form with semantics here is a PackedInteger or PackedShift one (the SSSE3 ones have none).
            if (x.Length != 0 && Enum.TryParse<Code>(x, out var xc) && SelectSse(xc) != null) map[(int)c] = xc;
        }
        return map;
    }

    private static delegate*<InstructionEngine, ref Instruction, Exec> SelectMmx(Code c)
    {
        switch (c)
        {
            case Code.Emms: return &Emms;
            case Code.Movd_mm_rm32: case Code.Movq_mm_rm64: case Code.Movd_rm32_mm: case Code.Movq_rm64_mm:
            case Code.Movq_mm_mmm64: case Code.Movq_mmm64_mm: case Code.Movntq_m64_mm:
                return &MmxMove;
            case Code.Pshufw_mm_mmm64_imm8: return &Pshufw;
            case Code.Pinsrw_mm_r32m16_imm8: case Code.Pinsrw_mm_r64m16_imm8: return &PinsrwMm;
            case Code.Pextrw_r32_mm_imm8: case Code.Pextrw_r64_mm_imm8: return &PextrwMm;
            case Code.Pmovmskb_r32_mm: case Code.Pmovmskb_r64_mm: return &PmovmskbMm;
            case Code.Maskmovq_rDI_mm_mm: return &Maskmovq;
            case Code.Movq2dq_xmm_mm: case Code.Movdq2q_mm_xmm: return &MovqBetween;
            case Code.Cvtpi2ps_xmm_mmm64: case Code.Cvtpi2pd_xmm_mmm64: case Code.Cvtps2pi_mm_xmmm64: case Code.Cvttps2pi_mm_xmmm64:
            case Code.Cvtpd2pi_mm_xmmm128: case Code.Cvttpd2pi_mm_xmmm128:
                return &MmxConvert;
        }
        if ((int)c < s_mmxLanes.Length && s_mmxLanes[(int)c] != Code.INVALID)
            return c.ToString().Contains("_imm8", StringComparison.Ordinal) || IsShiftByRegister(s_mmxLanes[(int)c]) ? &MmxShift : &MmxLanes;
        return null;
    }

    private static bool IsShiftByRegister(Code xmm) => xmm is Code.Psllw_xmm_xmmm128 or Code.Pslld_xmm_xmmm128
        or Code.Psllq_xmm_xmmm128 or Code.Psrlw_xmm_xmmm128 or Code.Psrld_xmm_xmmm128 or Code.Psrlq_xmm_xmmm128
        or Code.Psraw_xmm_xmmm128 or Code.Psrad_xmm_xmmm128;

    // ---- state -------------------------------------------------------------------------------------------------

    /// <summary>The checks every MMX instruction makes: CR0.EM #UD, CR0.TS #NM, a pending unmasked x87 exception #MF.</summary>
    private bool MmxAvailable()
    {
        var c = _cpu;
        if ((c.Cr0 & CpuState.Cr0Em) != 0) { Raise(PendingException.Ud); return false; }
        if ((c.Cr0 & CpuState.Cr0Ts) != 0) { Raise(PendingException.Nm); return false; }
        return NoPendingX87();
    }

    /// <summary>The x87-to-MMX transition (SDM Vol. 1 9.6.2): TOP becomes 0 and every tag valid.</summary>
    private void MmxTransition()
    {
        var c = _cpu;
        int top = (c.Fsw >> 11) & 7;
        if (top != 0)
        {
            // The image holds registers in stack order (ST(i) = R[(TOP+i) & 7]); with TOP 0 it must hold R0..R7.
            Span<byte> old = stackalloc byte[128];
            c.Fx.AsSpan(32, 128).CopyTo(old);
            for (int r = 0; r < 8; r++) old.Slice(16 * ((r - top) & 7), 16).CopyTo(c.Fx.AsSpan(32 + 16 * r, 16));
            c.Fsw = (ushort)(c.Fsw & ~0x3800);
        }
        c.FtwAbridged = 0xff;
    }

    /// <summary>MMi (after the transition).</summary>
    private ulong MmRead(Register r) => BinaryPrimitives.ReadUInt64LittleEndian(_cpu.St(r - Register.MM0));

    /// <summary>Writes MMi and sets its exponent and sign to all ones.</summary>
    private void MmWrite(Register r, ulong v)
    {
        var st = _cpu.St(r - Register.MM0);
        BinaryPrimitives.WriteUInt64LittleEndian(st, v);
        st[8] = 0xff;
        st[9] = 0xff;
    }

    /// <summary>Source operand <paramref name="op"/>: an MMX register or <paramref name="size"/> bytes of memory (no alignment).</summary>
    private bool ReadMmSource(ref Instruction i, int op, int size, out ulong v)
    {
        if (i.GetOpKind(op) == OpKind.Register) { v = MmRead(i.GetOpRegister(op)); return true; }
        return ReadOp(ref i, op, size, out v);
    }

    private static Exec Emms(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable()) return Exec.Fault;
        e._cpu.FtwAbridged = 0; // all empty; TOP is left as it is
        return Exec.Next;
    }

    // ---- moves -------------------------------------------------------------------------------------------------

    // MOVD/MOVQ into an MMX register (MOVD zero-extends), out of one to a general register or memory, and MOVNTQ.
    private static Exec MmxMove(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable()) return Exec.Fault;
        int size = i.Code is Code.Movd_mm_rm32 or Code.Movd_rm32_mm ? 4 : 8;
        ulong v;
        if (i.Op0Kind == OpKind.Register && i.Op0Register.IsMM())
        {
            if (i.Op1Kind == OpKind.Register && i.Op1Register.IsMM()) { e.MmxTransition(); v = e.MmRead(i.Op1Register); }
            else if (!e.ReadOp(ref i, 1, size, out v)) return Exec.Fault;
            e.MmxTransition();
            e.MmWrite(i.Op0Register, size == 4 ? (uint)v : v);
            return Exec.Next;
        }
        e.MmxTransition();
        v = e.MmRead(i.Op1Register);
        if (size == 4) v = (uint)v;
        if (i.Op0Kind == OpKind.Register && i.Op0Register.IsMM()) { e.MmWrite(i.Op0Register, v); return Exec.Next; }
        return e.WriteOp(ref i, 0, size, v) ? Exec.Next : Exec.Fault;
    }

    // MOVQ2DQ xmm, mm (zero-extended to 128 bits) and MOVDQ2Q mm, xmm (the low quadword): SSE2 checks plus the MMX ones.
    private static Exec MovqBetween(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable() || !e.MmxAvailable()) return Exec.Fault;
        e.MmxTransition();
        if (i.Code == Code.Movq2dq_xmm_mm)
        {
            var d = e.XmmOf(i.Op0Register);
            d.Clear();
            BinaryPrimitives.WriteUInt64LittleEndian(d, e.MmRead(i.Op1Register));
        }
        else e.MmWrite(i.Op0Register, BinaryPrimitives.ReadUInt64LittleEndian(e.XmmOf(i.Op1Register)));
        return Exec.Next;
    }

    // ---- lanes -------------------------------------------------------------------------------------------------

    // Element-wise operations, unpacks and packs. The 128-bit lane code works on the low eight bytes, with the
    // operands laid out so that its answer's low half is the MMX answer: for PUNPCKH* the high halves are moved down;
    // for the packs the source goes in the upper half of the destination's buffer, since an MMX pack puts the packed
    // destination elements in the low half of the result and the source's in the high half.
    private static Exec MmxLanes(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable()) return Exec.Fault;
        var code = s_mmxLanes[(int)i.Code];
        int size = i.Code is Code.Punpcklbw_mm_mmm32 or Code.Punpcklwd_mm_mmm32 or Code.Punpckldq_mm_mmm32 ? 4 : 8;
        if (!e.ReadMmSource(ref i, 1, size, out ulong s)) return Exec.Fault;
        e.MmxTransition();
        ulong d = e.MmRead(i.Op0Register);
        Span<byte> db = stackalloc byte[16], sb = stackalloc byte[16], rb = stackalloc byte[16];
        db.Clear(); sb.Clear();
        switch (code)
        {
            case Code.Punpckhbw_xmm_xmmm128: case Code.Punpckhwd_xmm_xmmm128: case Code.Punpckhdq_xmm_xmmm128:
                code = code == Code.Punpckhbw_xmm_xmmm128 ? Code.Punpcklbw_xmm_xmmm128
                    : code == Code.Punpckhwd_xmm_xmmm128 ? Code.Punpcklwd_xmm_xmmm128 : Code.Punpckldq_xmm_xmmm128;
                d >>= 32; s >>= 32;
                break;
            case Code.Packsswb_xmm_xmmm128: case Code.Packssdw_xmm_xmmm128: case Code.Packuswb_xmm_xmmm128:
                BinaryPrimitives.WriteUInt64LittleEndian(db[8..], s);
                break;
        }
        BinaryPrimitives.WriteUInt64LittleEndian(db, d);
        BinaryPrimitives.WriteUInt64LittleEndian(sb, s);
        IntegerLanes(code, db, sb, rb);
        e.MmWrite(i.Op0Register, BinaryPrimitives.ReadUInt64LittleEndian(rb));
        return Exec.Next;
    }

    // PSLL/PSRL/PSRA by an immediate or by a 64-bit count in an MMX register or memory.
    private static Exec MmxShift(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable()) return Exec.Fault;
        ulong count;
        if (i.Op1Kind == OpKind.Immediate8) count = i.Immediate8;
        else if (!e.ReadMmSource(ref i, 1, 8, out count)) return Exec.Fault;
        e.MmxTransition();
        Span<byte> d = stackalloc byte[16];
        d.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(d, e.MmRead(i.Op0Register));
        ShiftLanes(s_mmxLanes[(int)i.Code], d, count);
        e.MmWrite(i.Op0Register, BinaryPrimitives.ReadUInt64LittleEndian(d));
        return Exec.Next;
    }

    // PSHUFW mm, mm/m64, imm8: word k of the result is source word imm8[2k+1:2k].
    private static Exec Pshufw(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable() || !e.ReadMmSource(ref i, 1, 8, out ulong s)) return Exec.Fault;
        e.MmxTransition();
        int imm = i.Immediate8;
        ulong r = 0;
        for (int k = 0; k < 4; k++) r |= ((s >> (16 * ((imm >> (2 * k)) & 3))) & 0xffff) << (16 * k);
        e.MmWrite(i.Op0Register, r);
        return Exec.Next;
    }

    // PINSRW mm, r32/m16, imm8 (word imm8[1:0]) and PEXTRW r32, mm, imm8 (zero-extended).
    private static Exec PinsrwMm(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable() || !e.ReadOp(ref i, 1, 2, out ulong v)) return Exec.Fault;
        e.MmxTransition();
        int sh = 16 * (i.Immediate8 & 3);
        ulong d = e.MmRead(i.Op0Register);
        e.MmWrite(i.Op0Register, (d & ~(0xfffful << sh)) | ((v & 0xffff) << sh));
        return Exec.Next;
    }

    private static Exec PextrwMm(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable()) return Exec.Fault;
        e.MmxTransition();
        SetGpr(e._cpu, i.Op0Register, (e.MmRead(i.Op1Register) >> (16 * (i.Immediate8 & 3))) & 0xffff);
        return Exec.Next;
    }

    private static Exec PmovmskbMm(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable()) return Exec.Fault;
        e.MmxTransition();
        ulong s = e.MmRead(i.Op1Register);
        uint m = 0;
        for (int k = 0; k < 8; k++) m |= (uint)(s >> (8 * k + 7) & 1) << k;
        SetGpr(e._cpu, i.Op0Register, m);
        return Exec.Next;
    }

    // MASKMOVQ mm1, mm2: the bytes of mm1 whose mask byte in mm2 has bit 7 set are stored at DS:rDI (segment overridable).
    private static Exec Maskmovq(InstructionEngine e, ref Instruction i)
    {
        if (!e.MmxAvailable()) return Exec.Fault;
        e.MmxTransition();
        ulong src = e.MmRead(i.Op1Register), mask = e.MmRead(i.Op2Register);
        int addrSize = i.Op0Kind == OpKind.MemorySegRDI ? 8 : i.Op0Kind == OpKind.MemorySegEDI ? 4 : 2;
        ulong ea = e._cpu.Gpr[7] & Mask(addrSize);
        var seg = SegOf(i.MemorySegment);
        for (int k = 0; k < 8; k++)
        {
            if ((mask >> (8 * k + 7) & 1) == 0) continue;
            if (!e.Resolve(seg, (ea + (ulong)k) & Mask(addrSize), 1, PageAccess.Write, out var loc)
                || !e.WriteLoc(loc, (byte)(src >> (8 * k)))) return Exec.Fault;
        }
        return Exec.Next;
    }

    // ---- conversions -------------------------------------------------------------------------------------------

    // CVTPI2PS xmm, mm/m64 (two singles into the low half, the upper half kept), CVTPI2PD xmm, mm/m64 (two doubles),
    // CVT(T)PS2PI mm, xmm/m64 and CVT(T)PD2PI mm, xmm/m128 (two dwords, the integer indefinite on overflow or NaN).
    // SSE's checks apply; only a form with an MMX register operand makes the x87-to-MMX transition (and checks #MF).
    private static Exec MmxConvert(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        var code = i.Code;
        bool mmSource = i.Op1Kind == OpKind.Register && i.Op1Register.IsMM();
        bool touchesMm = mmSource || i.Op0Register.IsMM();
        if (touchesMm && !e.NoPendingX87()) return Exec.Fault;
        int rc = e.RoundingControl;
        if (code is Code.Cvtpi2ps_xmm_mmm64 or Code.Cvtpi2pd_xmm_mmm64)
        {
            ulong s;
            if (mmSource) { e.MmxTransition(); s = e.MmRead(i.Op1Register); }
            else if (!e.ReadOp(ref i, 1, 8, out s)) return Exec.Fault;
            int lo = (int)(uint)s, hi = (int)(uint)(s >> 32);
            var d = e.XmmOf(i.Op0Register);
            if (code == Code.Cvtpi2ps_xmm_mmm64)
            {
                var f = MemoryMarshal.Cast<byte, float>(d);
                f[0] = rc == 0 ? lo : RoundLongToSingle(lo, rc);
                f[1] = rc == 0 ? hi : RoundLongToSingle(hi, rc);
            }
            else
            {
                var f = MemoryMarshal.Cast<byte, double>(d);
                f[0] = lo; f[1] = hi; // every int32 is exact in a double
            }
            return Exec.Next;
        }
        bool fromDouble = code is Code.Cvtpd2pi_mm_xmmm128 or Code.Cvttpd2pi_mm_xmmm128;
        Span<byte> sv = stackalloc byte[16];
        if (!e.ReadVec(ref i, 1, fromDouble ? 16 : 8, fromDouble, sv)) return Exec.Fault;
        int mode = code is Code.Cvttps2pi_mm_xmmm64 or Code.Cvttpd2pi_mm_xmmm128 ? 3 : rc;
        ulong r0, r1;
        if (fromDouble)
        {
            var f = MemoryMarshal.Cast<byte, double>(sv);
            r0 = ToInteger(f[0], mode, false); r1 = ToInteger(f[1], mode, false);
        }
        else
        {
            var f = MemoryMarshal.Cast<byte, float>(sv);
            r0 = ToInteger(f[0], mode, false); r1 = ToInteger(f[1], mode, false);
        }
        e.MmxTransition();
        e.MmWrite(i.Op0Register, (uint)r0 | (r1 << 32));
        return Exec.Next;
    }
}
