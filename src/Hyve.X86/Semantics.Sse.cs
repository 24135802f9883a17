// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // SSE and SSE2 on XMM registers (SDM Vol. 1 chapters 10 and 11, Vol. 2 instruction pages): the moves, integer,
    // logical, shuffle and floating-point instructions that CPUID leaf 1 advertises (EDX.SSE, EDX.SSE2), which
    // firmware and C libraries built for x86-64's SSE2 baseline use. MMX-register forms are not modelled.
    // Every instruction first checks CR0.EM/CR4.OSFXSR (#UD) and CR0.TS (#NM); 128-bit memory operands of all
    // but the explicitly unaligned moves must be 16-byte aligned (#GP(0)). Floating point rounds to nearest and
    // MXCSR's exception flags are not raised (all exceptions stay masked, as MXCSR's reset value has them).

    private static delegate*<InstructionEngine, ref Instruction, Exec> SelectSse(Code c)
    {
        switch (c)
        {
            case Code.Movaps_xmm_xmmm128: case Code.Movaps_xmmm128_xmm: case Code.Movapd_xmm_xmmm128: case Code.Movapd_xmmm128_xmm:
            case Code.Movdqa_xmm_xmmm128: case Code.Movdqa_xmmm128_xmm: case Code.Movntps_m128_xmm: case Code.Movntpd_m128_xmm:
            case Code.Movntdq_m128_xmm:
                return &MovAligned;
            case Code.Movups_xmm_xmmm128: case Code.Movups_xmmm128_xmm: case Code.Movupd_xmm_xmmm128: case Code.Movupd_xmmm128_xmm:
            case Code.Movdqu_xmm_xmmm128: case Code.Movdqu_xmmm128_xmm:
                return &MovUnaligned;
            case Code.Movd_xmm_rm32: case Code.Movq_xmm_rm64: case Code.Movd_rm32_xmm: case Code.Movq_rm64_xmm:
            case Code.Movq_xmm_xmmm64: case Code.Movq_xmmm64_xmm:
                return &MovdMovq;
            case Code.Movss_xmm_xmmm32: case Code.Movss_xmmm32_xmm: case Code.Movsd_xmm_xmmm64: case Code.Movsd_xmmm64_xmm:
                return &MovScalar;
            case Code.Movlps_xmm_m64: case Code.Movlpd_xmm_m64: case Code.Movhps_xmm_m64: case Code.Movhpd_xmm_m64:
            case Code.Movlps_m64_xmm: case Code.Movlpd_m64_xmm: case Code.Movhps_m64_xmm: case Code.Movhpd_m64_xmm:
            case Code.Movhlps_xmm_xmm: case Code.Movlhps_xmm_xmm:
                return &MovHalf;
            case Code.Movmskps_r32_xmm: case Code.Movmskps_r64_xmm: case Code.Movmskpd_r32_xmm: case Code.Movmskpd_r64_xmm:
            case Code.Pmovmskb_r32_xmm: case Code.Pmovmskb_r64_xmm:
                return &MoveMask;
            case Code.Pextrw_r32_xmm_imm8: case Code.Pextrw_r64_xmm_imm8: return &Pextrw;
            case Code.Pinsrw_xmm_r32m16_imm8: case Code.Pinsrw_xmm_r64m16_imm8: return &Pinsrw;
            case Code.Pshufd_xmm_xmmm128_imm8: case Code.Pshuflw_xmm_xmmm128_imm8: case Code.Pshufhw_xmm_xmmm128_imm8:
            case Code.Shufps_xmm_xmmm128_imm8: case Code.Shufpd_xmm_xmmm128_imm8:
                return &Shuffle;
            case Code.Psllw_xmm_imm8: case Code.Pslld_xmm_imm8: case Code.Psllq_xmm_imm8: case Code.Psrlw_xmm_imm8:
            case Code.Psrld_xmm_imm8: case Code.Psrlq_xmm_imm8: case Code.Psraw_xmm_imm8: case Code.Psrad_xmm_imm8:
            case Code.Pslldq_xmm_imm8: case Code.Psrldq_xmm_imm8:
            case Code.Psllw_xmm_xmmm128: case Code.Pslld_xmm_xmmm128: case Code.Psllq_xmm_xmmm128: case Code.Psrlw_xmm_xmmm128:
            case Code.Psrld_xmm_xmmm128: case Code.Psrlq_xmm_xmmm128: case Code.Psraw_xmm_xmmm128: case Code.Psrad_xmm_xmmm128:
                return &PackedShift;
            case Code.Paddb_xmm_xmmm128: case Code.Paddw_xmm_xmmm128: case Code.Paddd_xmm_xmmm128: case Code.Paddq_xmm_xmmm128:
            case Code.Psubb_xmm_xmmm128: case Code.Psubw_xmm_xmmm128: case Code.Psubd_xmm_xmmm128: case Code.Psubq_xmm_xmmm128:
            case Code.Paddsb_xmm_xmmm128: case Code.Paddsw_xmm_xmmm128: case Code.Paddusb_xmm_xmmm128: case Code.Paddusw_xmm_xmmm128:
            case Code.Psubsb_xmm_xmmm128: case Code.Psubsw_xmm_xmmm128: case Code.Psubusb_xmm_xmmm128: case Code.Psubusw_xmm_xmmm128:
            case Code.Pmullw_xmm_xmmm128: case Code.Pmulhw_xmm_xmmm128: case Code.Pmulhuw_xmm_xmmm128: case Code.Pmuludq_xmm_xmmm128:
            case Code.Pmaddwd_xmm_xmmm128: case Code.Pavgb_xmm_xmmm128: case Code.Pavgw_xmm_xmmm128: case Code.Psadbw_xmm_xmmm128:
            case Code.Pminub_xmm_xmmm128: case Code.Pmaxub_xmm_xmmm128: case Code.Pminsw_xmm_xmmm128: case Code.Pmaxsw_xmm_xmmm128:
            case Code.Pcmpeqb_xmm_xmmm128: case Code.Pcmpeqw_xmm_xmmm128: case Code.Pcmpeqd_xmm_xmmm128:
            case Code.Pcmpgtb_xmm_xmmm128: case Code.Pcmpgtw_xmm_xmmm128: case Code.Pcmpgtd_xmm_xmmm128:
            case Code.Pand_xmm_xmmm128: case Code.Pandn_xmm_xmmm128: case Code.Por_xmm_xmmm128: case Code.Pxor_xmm_xmmm128:
            case Code.Andps_xmm_xmmm128: case Code.Andpd_xmm_xmmm128: case Code.Andnps_xmm_xmmm128: case Code.Andnpd_xmm_xmmm128:
            case Code.Orps_xmm_xmmm128: case Code.Orpd_xmm_xmmm128: case Code.Xorps_xmm_xmmm128: case Code.Xorpd_xmm_xmmm128:
            case Code.Punpcklbw_xmm_xmmm128: case Code.Punpcklwd_xmm_xmmm128: case Code.Punpckldq_xmm_xmmm128: case Code.Punpcklqdq_xmm_xmmm128:
            case Code.Punpckhbw_xmm_xmmm128: case Code.Punpckhwd_xmm_xmmm128: case Code.Punpckhdq_xmm_xmmm128: case Code.Punpckhqdq_xmm_xmmm128:
            case Code.Unpcklps_xmm_xmmm128: case Code.Unpckhps_xmm_xmmm128: case Code.Unpcklpd_xmm_xmmm128: case Code.Unpckhpd_xmm_xmmm128:
            case Code.Packsswb_xmm_xmmm128: case Code.Packssdw_xmm_xmmm128: case Code.Packuswb_xmm_xmmm128:
                return &PackedInteger;
            case Code.Addps_xmm_xmmm128: case Code.Addpd_xmm_xmmm128: case Code.Addss_xmm_xmmm32: case Code.Addsd_xmm_xmmm64:
            case Code.Subps_xmm_xmmm128: case Code.Subpd_xmm_xmmm128: case Code.Subss_xmm_xmmm32: case Code.Subsd_xmm_xmmm64:
            case Code.Mulps_xmm_xmmm128: case Code.Mulpd_xmm_xmmm128: case Code.Mulss_xmm_xmmm32: case Code.Mulsd_xmm_xmmm64:
            case Code.Divps_xmm_xmmm128: case Code.Divpd_xmm_xmmm128: case Code.Divss_xmm_xmmm32: case Code.Divsd_xmm_xmmm64:
            case Code.Minps_xmm_xmmm128: case Code.Minpd_xmm_xmmm128: case Code.Minss_xmm_xmmm32: case Code.Minsd_xmm_xmmm64:
            case Code.Maxps_xmm_xmmm128: case Code.Maxpd_xmm_xmmm128: case Code.Maxss_xmm_xmmm32: case Code.Maxsd_xmm_xmmm64:
            case Code.Sqrtps_xmm_xmmm128: case Code.Sqrtpd_xmm_xmmm128: case Code.Sqrtss_xmm_xmmm32: case Code.Sqrtsd_xmm_xmmm64:
            case Code.Cmpps_xmm_xmmm128_imm8: case Code.Cmppd_xmm_xmmm128_imm8: case Code.Cmpss_xmm_xmmm32_imm8: case Code.Cmpsd_xmm_xmmm64_imm8:
                return &FloatArith;
            case Code.Comiss_xmm_xmmm32: case Code.Ucomiss_xmm_xmmm32: case Code.Comisd_xmm_xmmm64: case Code.Ucomisd_xmm_xmmm64:
                return &FloatCompareFlags;
            case Code.Cvtsi2ss_xmm_rm32: case Code.Cvtsi2ss_xmm_rm64: case Code.Cvtsi2sd_xmm_rm32: case Code.Cvtsi2sd_xmm_rm64:
                return &ConvertIntToFloat;
            case Code.Cvttss2si_r32_xmmm32: case Code.Cvttss2si_r64_xmmm32: case Code.Cvttsd2si_r32_xmmm64: case Code.Cvttsd2si_r64_xmmm64:
            case Code.Cvtss2si_r32_xmmm32: case Code.Cvtss2si_r64_xmmm32: case Code.Cvtsd2si_r32_xmmm64: case Code.Cvtsd2si_r64_xmmm64:
                return &ConvertFloatToInt;
            case Code.Cvtss2sd_xmm_xmmm32: case Code.Cvtsd2ss_xmm_xmmm64: case Code.Cvtps2pd_xmm_xmmm64: case Code.Cvtpd2ps_xmm_xmmm128:
            case Code.Cvtdq2ps_xmm_xmmm128: case Code.Cvtps2dq_xmm_xmmm128: case Code.Cvttps2dq_xmm_xmmm128:
            case Code.Cvtdq2pd_xmm_xmmm64: case Code.Cvtpd2dq_xmm_xmmm128: case Code.Cvttpd2dq_xmm_xmmm128:
                return &ConvertPacked;
            case Code.Maskmovdqu_rDI_xmm_xmm: return &Maskmovdqu;
        }
        return null;
    }

    // ---- operands ----------------------------------------------------------------------------------------------

    private Span<byte> XmmOf(Register r) => _cpu.Xmm(r - Register.XMM0);

    /// <summary>Reads or writes a memory operand of <paramref name="data"/>'s length; <paramref name="aligned"/>: #GP(0) unless 16-byte aligned.</summary>
    private bool VecMemory(ref Instruction i, Span<byte> data, bool aligned, PageAccess access)
    {
        int size = data.Length;
        ulong ea = EffectiveAddress(ref i, out _);
        var r = Segmentation.Linearize(_cpu, SegOf(i.MemorySegment), ea, size, access, out ulong la);
        if (!r.IsOk) { _fault = r; return false; }
        if (aligned && (la & 15) != 0) { Raise(PendingException.Gp0); return false; }
        r = _mem.TranslateSpan(_cpu, la, size, access, out ulong g0, out int l0, out ulong g1);
        if (r.IsOk) r = access == PageAccess.Write ? _mem.WritePhysical(g0, data[..l0]) : _mem.ReadPhysical(g0, data[..l0]);
        if (r.IsOk && l0 < size) r = access == PageAccess.Write ? _mem.WritePhysical(g1, data[l0..]) : _mem.ReadPhysical(g1, data[l0..]);
        if (!r.IsOk) { _fault = r; return false; }
        return true;
    }

    /// <summary>Source operand <paramref name="op"/>: a whole XMM register, or <paramref name="size"/> bytes of memory into the low bytes of <paramref name="v"/> (the rest zero).</summary>
    private bool ReadVec(ref Instruction i, int op, int size, bool aligned, Span<byte> v)
    {
        if (i.GetOpKind(op) == OpKind.Register) { XmmOf(i.GetOpRegister(op)).CopyTo(v); return true; }
        v.Clear();
        return VecMemory(ref i, v[..size], aligned, PageAccess.Read);
    }

    // ---- moves -------------------------------------------------------------------------------------------------

    private static Exec MovAligned(InstructionEngine e, ref Instruction i) => e.Move128(ref i, true);
    private static Exec MovUnaligned(InstructionEngine e, ref Instruction i) => e.Move128(ref i, false);

    private Exec Move128(ref Instruction i, bool aligned)
    {
        if (!SseAvailable()) return Exec.Fault;
        Span<byte> v = stackalloc byte[16];
        if (i.Op0Kind == OpKind.Register)
        {
            if (!ReadVec(ref i, 1, 16, aligned, v)) return Exec.Fault;
            v.CopyTo(XmmOf(i.Op0Register));
            return Exec.Next;
        }
        XmmOf(i.Op1Register).CopyTo(v);
        return VecMemory(ref i, v, aligned, PageAccess.Write) ? Exec.Next : Exec.Fault;
    }

    // MOVD/MOVQ: into an XMM register the value is zero-extended to 128 bits; out of one, the low 32/64 bits go to a
    // general register (32-bit writes zero-extend as usual) or memory.
    private static Exec MovdMovq(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        int size = i.Code is Code.Movd_xmm_rm32 or Code.Movd_rm32_xmm ? 4 : 8;
        Span<byte> v = stackalloc byte[16];
        v.Clear();
        if (i.Op0Kind == OpKind.Register && i.Op0Register.IsXMM())
        {
            if (i.Op1Kind == OpKind.Register && !i.Op1Register.IsXMM())
                BinaryPrimitives.WriteUInt64LittleEndian(v, GetGpr(e._cpu, i.Op1Register));
            else if (!e.ReadVec(ref i, 1, size, false, v)) return Exec.Fault;
            v[size..].Clear();
            v.CopyTo(e.XmmOf(i.Op0Register));
            return Exec.Next;
        }
        e.XmmOf(i.Op1Register)[..size].CopyTo(v);
        if (i.Op0Kind == OpKind.Register)
        {
            SetGpr(e._cpu, i.Op0Register, BinaryPrimitives.ReadUInt64LittleEndian(v));
            return Exec.Next;
        }
        return e.VecMemory(ref i, v[..size], false, PageAccess.Write) ? Exec.Next : Exec.Fault;
    }

    // MOVSS/MOVSD: register to register merges the low element; a load from memory zeroes the rest; a store writes the element.
    private static Exec MovScalar(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        int size = i.Code is Code.Movss_xmm_xmmm32 or Code.Movss_xmmm32_xmm ? 4 : 8;
        Span<byte> v = stackalloc byte[16];
        if (i.Op0Kind == OpKind.Register)
        {
            var d = e.XmmOf(i.Op0Register);
            if (i.Op1Kind == OpKind.Register) { e.XmmOf(i.Op1Register)[..size].CopyTo(d); return Exec.Next; }
            if (!e.ReadVec(ref i, 1, size, false, v)) return Exec.Fault;
            v.CopyTo(d);
            return Exec.Next;
        }
        e.XmmOf(i.Op1Register)[..size].CopyTo(v);
        return e.VecMemory(ref i, v[..size], false, PageAccess.Write) ? Exec.Next : Exec.Fault;
    }

    // MOVLPS/MOVHPS/MOVLPD/MOVHPD (64-bit halves to and from memory), MOVHLPS and MOVLHPS (between registers).
    private static Exec MovHalf(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        Span<byte> v = stackalloc byte[8];
        switch (i.Code)
        {
            case Code.Movhlps_xmm_xmm:
                e.XmmOf(i.Op1Register)[8..].CopyTo(v);
                v.CopyTo(e.XmmOf(i.Op0Register));
                return Exec.Next;
            case Code.Movlhps_xmm_xmm:
                e.XmmOf(i.Op1Register)[..8].CopyTo(v);
                v.CopyTo(e.XmmOf(i.Op0Register)[8..]);
                return Exec.Next;
            case Code.Movlps_xmm_m64: case Code.Movlpd_xmm_m64:
            case Code.Movhps_xmm_m64: case Code.Movhpd_xmm_m64:
            {
                if (!e.VecMemory(ref i, v, false, PageAccess.Read)) return Exec.Fault;
                int at = i.Code is Code.Movlps_xmm_m64 or Code.Movlpd_xmm_m64 ? 0 : 8;
                v.CopyTo(e.XmmOf(i.Op0Register)[at..]);
                return Exec.Next;
            }
            default:
            {
                int at = i.Code is Code.Movlps_m64_xmm or Code.Movlpd_m64_xmm ? 0 : 8;
                e.XmmOf(i.Op1Register).Slice(at, 8).CopyTo(v);
                return e.VecMemory(ref i, v, false, PageAccess.Write) ? Exec.Next : Exec.Fault;
            }
        }
    }

    // MOVMSKPS/MOVMSKPD/PMOVMSKB: the sign bit of each element, element 0 in bit 0, zero-extended into the register.
    private static Exec MoveMask(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        var s = e.XmmOf(i.Op1Register);
        int step = i.Code is Code.Movmskps_r32_xmm or Code.Movmskps_r64_xmm ? 4
            : i.Code is Code.Movmskpd_r32_xmm or Code.Movmskpd_r64_xmm ? 8 : 1;
        uint m = 0;
        for (int k = 0, bit = 0; k < 16; k += step, bit++) m |= (uint)(s[k + step - 1] >> 7) << bit;
        SetGpr(e._cpu, i.Op0Register, m);
        return Exec.Next;
    }

    private static Exec Pextrw(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        var s = e.XmmOf(i.Op1Register);
        int w = (int)(i.Immediate8 & 7);
        SetGpr(e._cpu, i.Op0Register, BinaryPrimitives.ReadUInt16LittleEndian(s[(2 * w)..]));
        return Exec.Next;
    }

    private static Exec Pinsrw(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        ulong v;
        if (i.Op1Kind == OpKind.Register) v = GetGpr(e._cpu, i.Op1Register);
        else
        {
            Span<byte> m = stackalloc byte[2];
            if (!e.VecMemory(ref i, m, false, PageAccess.Read)) return Exec.Fault;
            v = BinaryPrimitives.ReadUInt16LittleEndian(m);
        }
        int w = (int)(i.Immediate8 & 7);
        BinaryPrimitives.WriteUInt16LittleEndian(e.XmmOf(i.Op0Register)[(2 * w)..], (ushort)v);
        return Exec.Next;
    }

    // MASKMOVDQU: bytes of the source whose mask byte has bit 7 set are stored at DS:rDI (no alignment needed).
    private static Exec Maskmovdqu(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        var src = e.XmmOf(i.Op1Register);
        var mask = e.XmmOf(i.Op2Register);
        // The destination is DS:rDI (segment overridable) with rDI sized by the address size.
        int addrSize = i.Op0Kind == OpKind.MemorySegRDI ? 8 : i.Op0Kind == OpKind.MemorySegEDI ? 4 : 2;
        ulong ea = e._cpu.Gpr[7] & Mask(addrSize);
        var seg = SegOf(i.MemorySegment);
        for (int k = 0; k < 16; k++)
        {
            if ((mask[k] & 0x80) == 0) continue;
            if (!e.Resolve(seg, (ea + (ulong)k) & Mask(addrSize), 1, PageAccess.Write, out var loc) || !e.WriteLoc(loc, src[k])) return Exec.Fault;
        }
        return Exec.Next;
    }

    // ---- shuffles ----------------------------------------------------------------------------------------------

    private static Exec Shuffle(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        Span<byte> s = stackalloc byte[16];
        if (!e.ReadVec(ref i, 1, 16, true, s)) return Exec.Fault;
        var d = e.XmmOf(i.Op0Register);
        Span<byte> r = stackalloc byte[16];
        int imm = i.Immediate8;
        var sd = MemoryMarshal.Cast<byte, uint>(s);
        var dd = MemoryMarshal.Cast<byte, uint>(d);
        var rd = MemoryMarshal.Cast<byte, uint>(r);
        switch (i.Code)
        {
            case Code.Pshufd_xmm_xmmm128_imm8:
                for (int k = 0; k < 4; k++) rd[k] = sd[(imm >> (2 * k)) & 3];
                break;
            case Code.Pshuflw_xmm_xmmm128_imm8:
            case Code.Pshufhw_xmm_xmmm128_imm8:
            {
                s.CopyTo(r);
                int half = i.Code == Code.Pshuflw_xmm_xmmm128_imm8 ? 0 : 4;
                var sw = MemoryMarshal.Cast<byte, ushort>(s);
                var rw = MemoryMarshal.Cast<byte, ushort>(r);
                for (int k = 0; k < 4; k++) rw[half + k] = sw[half + ((imm >> (2 * k)) & 3)];
                break;
            }
            case Code.Shufps_xmm_xmmm128_imm8:
                rd[0] = dd[imm & 3]; rd[1] = dd[(imm >> 2) & 3]; rd[2] = sd[(imm >> 4) & 3]; rd[3] = sd[(imm >> 6) & 3];
                break;
            default: // SHUFPD
            {
                var sq = MemoryMarshal.Cast<byte, ulong>(s);
                var dq = MemoryMarshal.Cast<byte, ulong>(d);
                var rq = MemoryMarshal.Cast<byte, ulong>(r);
                rq[0] = dq[imm & 1]; rq[1] = sq[(imm >> 1) & 1];
                break;
            }
        }
        r.CopyTo(d);
        return Exec.Next;
    }

    // ---- integer -----------------------------------------------------------------------------------------------

    // PSLL/PSRL/PSRA by an immediate or by the low 64 bits of an XMM/m128 operand: a count past the element width
    // gives zero (logical) or the sign fill (arithmetic). PSLLDQ/PSRLDQ shift the whole register by bytes.
    private static Exec PackedShift(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        ulong count;
        if (i.Op1Kind == OpKind.Immediate8) count = i.Immediate8;
        else
        {
            Span<byte> s = stackalloc byte[16];
            if (!e.ReadVec(ref i, 1, 16, true, s)) return Exec.Fault;
            count = BinaryPrimitives.ReadUInt64LittleEndian(s);
        }
        ShiftLanes(i.Code, e.XmmOf(i.Op0Register), count);
        return Exec.Next;
    }

    /// <summary>The shift of 128-bit form <paramref name="code"/> by <paramref name="count"/> applied to the 16 bytes of <paramref name="d"/>.</summary>
    private static void ShiftLanes(Code code, Span<byte> d, ulong count)
    {
        switch (code)
        {
            case Code.Pslldq_xmm_imm8:
            case Code.Psrldq_xmm_imm8:
            {
                int n = (int)Math.Min(count, 16);
                Span<byte> r = stackalloc byte[16];
                r.Clear();
                if (code == Code.Pslldq_xmm_imm8) d[..(16 - n)].CopyTo(r[n..]);
                else d[n..].CopyTo(r);
                r.CopyTo(d);
                return;
            }
            case Code.Psllw_xmm_imm8: case Code.Psllw_xmm_xmmm128:
            {
                var w = MemoryMarshal.Cast<byte, ushort>(d);
                for (int k = 0; k < 8; k++) w[k] = count > 15 ? (ushort)0 : (ushort)(w[k] << (int)count);
                return;
            }
            case Code.Psrlw_xmm_imm8: case Code.Psrlw_xmm_xmmm128:
            {
                var w = MemoryMarshal.Cast<byte, ushort>(d);
                for (int k = 0; k < 8; k++) w[k] = count > 15 ? (ushort)0 : (ushort)(w[k] >> (int)count);
                return;
            }
            case Code.Psraw_xmm_imm8: case Code.Psraw_xmm_xmmm128:
            {
                var w = MemoryMarshal.Cast<byte, short>(d);
                int c = (int)Math.Min(count, 15);
                for (int k = 0; k < 8; k++) w[k] = (short)(w[k] >> c);
                return;
            }
            case Code.Pslld_xmm_imm8: case Code.Pslld_xmm_xmmm128:
            {
                var v = MemoryMarshal.Cast<byte, uint>(d);
                for (int k = 0; k < 4; k++) v[k] = count > 31 ? 0 : v[k] << (int)count;
                return;
            }
            case Code.Psrld_xmm_imm8: case Code.Psrld_xmm_xmmm128:
            {
                var v = MemoryMarshal.Cast<byte, uint>(d);
                for (int k = 0; k < 4; k++) v[k] = count > 31 ? 0 : v[k] >> (int)count;
                return;
            }
            case Code.Psrad_xmm_imm8: case Code.Psrad_xmm_xmmm128:
            {
                var v = MemoryMarshal.Cast<byte, int>(d);
                int c = (int)Math.Min(count, 31);
                for (int k = 0; k < 4; k++) v[k] >>= c;
                return;
            }
            case Code.Psllq_xmm_imm8: case Code.Psllq_xmm_xmmm128:
            {
                var v = MemoryMarshal.Cast<byte, ulong>(d);
                for (int k = 0; k < 2; k++) v[k] = count > 63 ? 0 : v[k] << (int)count;
                return;
            }
            default: // PSRLQ
            {
                var v = MemoryMarshal.Cast<byte, ulong>(d);
                for (int k = 0; k < 2; k++) v[k] = count > 63 ? 0 : v[k] >> (int)count;
                return;
            }
        }
    }

    private static sbyte SatI8(int v) => (sbyte)Math.Clamp(v, sbyte.MinValue, sbyte.MaxValue);
    private static byte SatU8(int v) => (byte)Math.Clamp(v, 0, byte.MaxValue);
    private static short SatI16(int v) => (short)Math.Clamp(v, short.MinValue, short.MaxValue);
    private static ushort SatU16(int v) => (ushort)Math.Clamp(v, 0, ushort.MaxValue);

    // Element-wise integer and logical operations, unpacks and packs: destination XMM register, source XMM or
    // 16-byte-aligned m128. The result is built apart and copied, so the source may be the destination register.
    private static Exec PackedInteger(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        Span<byte> s = stackalloc byte[16];
        if (!e.ReadVec(ref i, 1, 16, true, s)) return Exec.Fault;
        var d = e.XmmOf(i.Op0Register);
        Span<byte> r = stackalloc byte[16];
        IntegerLanes(i.Code, d, s, r);
        r.CopyTo(d);
        return Exec.Next;
    }

    /// <summary>
    /// The element-wise operation of 128-bit form <paramref name="code"/> on <paramref name="d"/> (destination) and
    /// <paramref name="s"/> (source) into <paramref name="r"/>, all 16 bytes; the MMX forms reuse it on the low half.
    /// </summary>
    private static void IntegerLanes(Code code, ReadOnlySpan<byte> d, ReadOnlySpan<byte> s, Span<byte> r)
    {
        var db = d; var sb = s; var rb = r;
        var dw = MemoryMarshal.Cast<byte, ushort>(d); var sw = MemoryMarshal.Cast<byte, ushort>(s); var rw = MemoryMarshal.Cast<byte, ushort>(r);
        var dd = MemoryMarshal.Cast<byte, uint>(d); var sd = MemoryMarshal.Cast<byte, uint>(s); var rd = MemoryMarshal.Cast<byte, uint>(r);
        var dq = MemoryMarshal.Cast<byte, ulong>(d); var sq = MemoryMarshal.Cast<byte, ulong>(s); var rq = MemoryMarshal.Cast<byte, ulong>(r);
        switch (code)
        {
            case Code.Paddb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = (byte)(db[k] + sb[k]); break;
            case Code.Paddw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)(dw[k] + sw[k]); break;
            case Code.Paddd_xmm_xmmm128: for (int k = 0; k < 4; k++) rd[k] = dd[k] + sd[k]; break;
            case Code.Paddq_xmm_xmmm128: for (int k = 0; k < 2; k++) rq[k] = dq[k] + sq[k]; break;
            case Code.Psubb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = (byte)(db[k] - sb[k]); break;
            case Code.Psubw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)(dw[k] - sw[k]); break;
            case Code.Psubd_xmm_xmmm128: for (int k = 0; k < 4; k++) rd[k] = dd[k] - sd[k]; break;
            case Code.Psubq_xmm_xmmm128: for (int k = 0; k < 2; k++) rq[k] = dq[k] - sq[k]; break;
            case Code.Paddsb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = (byte)SatI8((sbyte)db[k] + (sbyte)sb[k]); break;
            case Code.Paddsw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)SatI16((short)dw[k] + (short)sw[k]); break;
            case Code.Paddusb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = SatU8(db[k] + sb[k]); break;
            case Code.Paddusw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = SatU16(dw[k] + sw[k]); break;
            case Code.Psubsb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = (byte)SatI8((sbyte)db[k] - (sbyte)sb[k]); break;
            case Code.Psubsw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)SatI16((short)dw[k] - (short)sw[k]); break;
            case Code.Psubusb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = SatU8(db[k] - sb[k]); break;
            case Code.Psubusw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = SatU16(dw[k] - sw[k]); break;
            case Code.Pmullw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)((short)dw[k] * (short)sw[k]); break;
            case Code.Pmulhw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)(((short)dw[k] * (short)sw[k]) >> 16); break;
            case Code.Pmulhuw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)(((uint)dw[k] * sw[k]) >> 16); break;
            case Code.Pmuludq_xmm_xmmm128: for (int k = 0; k < 2; k++) rq[k] = (ulong)dd[2 * k] * sd[2 * k]; break;
            case Code.Pmaddwd_xmm_xmmm128:
                for (int k = 0; k < 4; k++)
                    rd[k] = (uint)((short)dw[2 * k] * (short)sw[2 * k]) + (uint)((short)dw[2 * k + 1] * (short)sw[2 * k + 1]);
                break;
            case Code.Pavgb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = (byte)((db[k] + sb[k] + 1) >> 1); break;
            case Code.Pavgw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)((dw[k] + sw[k] + 1) >> 1); break;
            case Code.Psadbw_xmm_xmmm128:
                for (int q = 0; q < 2; q++)
                {
                    int sum = 0;
                    for (int k = 8 * q; k < 8 * q + 8; k++) sum += Math.Abs(db[k] - sb[k]);
                    rq[q] = (ulong)sum;
                }
                break;
            case Code.Pminub_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = Math.Min(db[k], sb[k]); break;
            case Code.Pmaxub_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = Math.Max(db[k], sb[k]); break;
            case Code.Pminsw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)Math.Min((short)dw[k], (short)sw[k]); break;
            case Code.Pmaxsw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (ushort)Math.Max((short)dw[k], (short)sw[k]); break;
            case Code.Pcmpeqb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = db[k] == sb[k] ? (byte)0xff : (byte)0; break;
            case Code.Pcmpeqw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = dw[k] == sw[k] ? (ushort)0xffff : (ushort)0; break;
            case Code.Pcmpeqd_xmm_xmmm128: for (int k = 0; k < 4; k++) rd[k] = dd[k] == sd[k] ? uint.MaxValue : 0; break;
            case Code.Pcmpgtb_xmm_xmmm128: for (int k = 0; k < 16; k++) rb[k] = (sbyte)db[k] > (sbyte)sb[k] ? (byte)0xff : (byte)0; break;
            case Code.Pcmpgtw_xmm_xmmm128: for (int k = 0; k < 8; k++) rw[k] = (short)dw[k] > (short)sw[k] ? (ushort)0xffff : (ushort)0; break;
            case Code.Pcmpgtd_xmm_xmmm128: for (int k = 0; k < 4; k++) rd[k] = (int)dd[k] > (int)sd[k] ? uint.MaxValue : 0; break;
            case Code.Pand_xmm_xmmm128: case Code.Andps_xmm_xmmm128: case Code.Andpd_xmm_xmmm128:
                rq[0] = dq[0] & sq[0]; rq[1] = dq[1] & sq[1]; break;
            case Code.Pandn_xmm_xmmm128: case Code.Andnps_xmm_xmmm128: case Code.Andnpd_xmm_xmmm128:
                rq[0] = ~dq[0] & sq[0]; rq[1] = ~dq[1] & sq[1]; break;
            case Code.Por_xmm_xmmm128: case Code.Orps_xmm_xmmm128: case Code.Orpd_xmm_xmmm128:
                rq[0] = dq[0] | sq[0]; rq[1] = dq[1] | sq[1]; break;
            case Code.Pxor_xmm_xmmm128: case Code.Xorps_xmm_xmmm128: case Code.Xorpd_xmm_xmmm128:
                rq[0] = dq[0] ^ sq[0]; rq[1] = dq[1] ^ sq[1]; break;
            case Code.Punpcklbw_xmm_xmmm128: for (int k = 0; k < 8; k++) { rb[2 * k] = db[k]; rb[2 * k + 1] = sb[k]; } break;
            case Code.Punpckhbw_xmm_xmmm128: for (int k = 0; k < 8; k++) { rb[2 * k] = db[8 + k]; rb[2 * k + 1] = sb[8 + k]; } break;
            case Code.Punpcklwd_xmm_xmmm128: for (int k = 0; k < 4; k++) { rw[2 * k] = dw[k]; rw[2 * k + 1] = sw[k]; } break;
            case Code.Punpckhwd_xmm_xmmm128: for (int k = 0; k < 4; k++) { rw[2 * k] = dw[4 + k]; rw[2 * k + 1] = sw[4 + k]; } break;
            case Code.Punpckldq_xmm_xmmm128: case Code.Unpcklps_xmm_xmmm128:
                rd[0] = dd[0]; rd[1] = sd[0]; rd[2] = dd[1]; rd[3] = sd[1]; break;
            case Code.Punpckhdq_xmm_xmmm128: case Code.Unpckhps_xmm_xmmm128:
                rd[0] = dd[2]; rd[1] = sd[2]; rd[2] = dd[3]; rd[3] = sd[3]; break;
            case Code.Punpcklqdq_xmm_xmmm128: case Code.Unpcklpd_xmm_xmmm128: rq[0] = dq[0]; rq[1] = sq[0]; break;
            case Code.Punpckhqdq_xmm_xmmm128: case Code.Unpckhpd_xmm_xmmm128: rq[0] = dq[1]; rq[1] = sq[1]; break;
            case Code.Packsswb_xmm_xmmm128:
                for (int k = 0; k < 8; k++) { rb[k] = (byte)SatI8((short)dw[k]); rb[8 + k] = (byte)SatI8((short)sw[k]); }
                break;
            case Code.Packuswb_xmm_xmmm128:
                for (int k = 0; k < 8; k++) { rb[k] = SatU8((short)dw[k]); rb[8 + k] = SatU8((short)sw[k]); }
                break;
            default: // PACKSSDW
                for (int k = 0; k < 4; k++) { rw[k] = (ushort)SatI16((int)dd[k]); rw[4 + k] = (ushort)SatI16((int)sd[k]); }
                break;
        }
    }

    // ---- floating point ----------------------------------------------------------------------------------------

    private const uint QuietF = 0x00400000;
    private const ulong QuietD = 0x0008000000000000;

    // A NaN operand makes the result that NaN, quieted; with two NaNs the first (destination) operand's wins
    // (SDM Vol. 1 4.8.3.5, table 4-7). Other results come from the host's IEEE arithmetic, rounding to nearest.
    private static bool NanResult(float a, float b, out float r)
    {
        if (float.IsNaN(a)) { r = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(a) | QuietF); return true; }
        if (float.IsNaN(b)) { r = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(b) | QuietF); return true; }
        r = 0;
        return false;
    }

    private static bool NanResult(double a, double b, out double r)
    {
        if (double.IsNaN(a)) { r = BitConverter.UInt64BitsToDouble(BitConverter.DoubleToUInt64Bits(a) | QuietD); return true; }
        if (double.IsNaN(b)) { r = BitConverter.UInt64BitsToDouble(BitConverter.DoubleToUInt64Bits(b) | QuietD); return true; }
        r = 0;
        return false;
    }

    // The default NaN an invalid operation (0*inf, inf-inf, sqrt(-x), 0/0) produces: the "real indefinite", sign set.
    private static readonly float DefaultNanF = BitConverter.UInt32BitsToSingle(0xffc00000);
    private static readonly double DefaultNanD = BitConverter.UInt64BitsToDouble(0xfff8000000000000);

    private static float FixNan(float r) => float.IsNaN(r) ? DefaultNanF : r;
    private static double FixNan(double r) => double.IsNaN(r) ? DefaultNanD : r;

    /// <summary>One single-precision operation of <paramref name="op"/> (0 add, 1 sub, 2 mul, 3 div, 4 min, 5 max, 6 sqrt of b, 7 compare by <paramref name="pred"/>).</summary>
    private static uint OpF(int op, uint ab, uint bb, int pred)
    {
        float a = BitConverter.UInt32BitsToSingle(ab), b = BitConverter.UInt32BitsToSingle(bb);
        switch (op)
        {
            case 4: return a < b ? ab : bb; // MIN: the second operand when unordered or both zero
            case 5: return a > b ? ab : bb;
            case 6:
                if (float.IsNaN(b)) return bb | QuietF;
                return BitConverter.SingleToUInt32Bits(FixNan(MathF.Sqrt(b)));
            case 7: return Compare(a, b, pred) ? uint.MaxValue : 0;
        }
        if (NanResult(a, b, out float n)) return BitConverter.SingleToUInt32Bits(n);
        float r = op switch { 0 => a + b, 1 => a - b, 2 => a * b, _ => a / b };
        return BitConverter.SingleToUInt32Bits(FixNan(r));
    }

    private static ulong OpD(int op, ulong ab, ulong bb, int pred)
    {
        double a = BitConverter.UInt64BitsToDouble(ab), b = BitConverter.UInt64BitsToDouble(bb);
        switch (op)
        {
            case 4: return a < b ? ab : bb;
            case 5: return a > b ? ab : bb;
            case 6:
                if (double.IsNaN(b)) return bb | QuietD;
                return BitConverter.DoubleToUInt64Bits(FixNan(Math.Sqrt(b)));
            case 7: return Compare(a, b, pred) ? ulong.MaxValue : 0;
        }
        if (NanResult(a, b, out double n)) return BitConverter.DoubleToUInt64Bits(n);
        double r = op switch { 0 => a + b, 1 => a - b, 2 => a * b, _ => a / b };
        return BitConverter.DoubleToUInt64Bits(FixNan(r));
    }

    // CMPPS/CMPSS predicates 0-7 (SDM Vol. 2A table 3-7): EQ, LT, LE, UNORD, NEQ, NLT, NLE, ORD.
    private static bool Compare(double a, double b, int pred)
    {
        bool unordered = double.IsNaN(a) || double.IsNaN(b);
        return (pred & 7) switch
        {
            0 => !unordered && a == b,
            1 => !unordered && a < b,
            2 => !unordered && a <= b,
            3 => unordered,
            4 => unordered || a != b,
            5 => unordered || !(a < b),
            6 => unordered || !(a <= b),
            _ => !unordered,
        };
    }

    private static Exec FloatArith(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        int op, lanes, width; // width 4 = single, 8 = double; lanes 1 = scalar
        switch (i.Mnemonic)
        {
            case Mnemonic.Addps: op = 0; lanes = 4; width = 4; break;
            case Mnemonic.Addpd: op = 0; lanes = 2; width = 8; break;
            case Mnemonic.Addss: op = 0; lanes = 1; width = 4; break;
            case Mnemonic.Addsd: op = 0; lanes = 1; width = 8; break;
            case Mnemonic.Subps: op = 1; lanes = 4; width = 4; break;
            case Mnemonic.Subpd: op = 1; lanes = 2; width = 8; break;
            case Mnemonic.Subss: op = 1; lanes = 1; width = 4; break;
            case Mnemonic.Subsd: op = 1; lanes = 1; width = 8; break;
            case Mnemonic.Mulps: op = 2; lanes = 4; width = 4; break;
            case Mnemonic.Mulpd: op = 2; lanes = 2; width = 8; break;
            case Mnemonic.Mulss: op = 2; lanes = 1; width = 4; break;
            case Mnemonic.Mulsd: op = 2; lanes = 1; width = 8; break;
            case Mnemonic.Divps: op = 3; lanes = 4; width = 4; break;
            case Mnemonic.Divpd: op = 3; lanes = 2; width = 8; break;
            case Mnemonic.Divss: op = 3; lanes = 1; width = 4; break;
            case Mnemonic.Divsd: op = 3; lanes = 1; width = 8; break;
            case Mnemonic.Minps: op = 4; lanes = 4; width = 4; break;
            case Mnemonic.Minpd: op = 4; lanes = 2; width = 8; break;
            case Mnemonic.Minss: op = 4; lanes = 1; width = 4; break;
            case Mnemonic.Minsd: op = 4; lanes = 1; width = 8; break;
            case Mnemonic.Maxps: op = 5; lanes = 4; width = 4; break;
            case Mnemonic.Maxpd: op = 5; lanes = 2; width = 8; break;
            case Mnemonic.Maxss: op = 5; lanes = 1; width = 4; break;
            case Mnemonic.Maxsd: op = 5; lanes = 1; width = 8; break;
            case Mnemonic.Sqrtps: op = 6; lanes = 4; width = 4; break;
            case Mnemonic.Sqrtpd: op = 6; lanes = 2; width = 8; break;
            case Mnemonic.Sqrtss: op = 6; lanes = 1; width = 4; break;
            case Mnemonic.Sqrtsd: op = 6; lanes = 1; width = 8; break;
            case Mnemonic.Cmpps: op = 7; lanes = 4; width = 4; break;
            case Mnemonic.Cmppd: op = 7; lanes = 2; width = 8; break;
            case Mnemonic.Cmpss: op = 7; lanes = 1; width = 4; break;
            default: op = 7; lanes = 1; width = 8; break; // CMPSD
        }
        bool packed = lanes > 1;
        Span<byte> s = stackalloc byte[16];
        if (!e.ReadVec(ref i, 1, packed ? 16 : width, packed, s)) return Exec.Fault;
        int pred = op == 7 ? i.Immediate8 : 0;
        var d = e.XmmOf(i.Op0Register);
        if (width == 4)
        {
            var dd = MemoryMarshal.Cast<byte, uint>(d);
            var sd = MemoryMarshal.Cast<byte, uint>(s);
            for (int k = 0; k < lanes; k++) dd[k] = OpF(op, dd[k], sd[k], pred);
        }
        else
        {
            var dq = MemoryMarshal.Cast<byte, ulong>(d);
            var sq = MemoryMarshal.Cast<byte, ulong>(s);
            for (int k = 0; k < lanes; k++) dq[k] = OpD(op, dq[k], sq[k], pred);
        }
        return Exec.Next;
    }

    // COMISS/UCOMISS/COMISD/UCOMISD: ZF,PF,CF = 111 unordered, 000 greater, 001 less, 100 equal; OF, SF and AF cleared.
    private static Exec FloatCompareFlags(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        bool single = i.Code is Code.Comiss_xmm_xmmm32 or Code.Ucomiss_xmm_xmmm32;
        Span<byte> s = stackalloc byte[16];
        if (!e.ReadVec(ref i, 1, single ? 4 : 8, false, s)) return Exec.Fault;
        var d = e.XmmOf(i.Op0Register);
        double a = single ? BitConverter.UInt32BitsToSingle(BinaryPrimitives.ReadUInt32LittleEndian(d)) : BitConverter.UInt64BitsToDouble(BinaryPrimitives.ReadUInt64LittleEndian(d));
        double b = single ? BitConverter.UInt32BitsToSingle(BinaryPrimitives.ReadUInt32LittleEndian(s)) : BitConverter.UInt64BitsToDouble(BinaryPrimitives.ReadUInt64LittleEndian(s));
        ulong f = double.IsNaN(a) || double.IsNaN(b) ? ZF | PF | CF : a > b ? 0 : a < b ? CF : ZF;
        e.SetFlags(CpuState.StatusFlags, f);
        return Exec.Next;
    }

    private static Exec ConvertIntToFloat(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        bool from64 = i.Code is Code.Cvtsi2ss_xmm_rm64 or Code.Cvtsi2sd_xmm_rm64;
        if (!e.ReadOp(ref i, 1, from64 ? 8 : 4, out ulong raw)) return Exec.Fault;
        long v = from64 ? (long)raw : (int)(uint)raw;
        var d = e.XmmOf(i.Op0Register);
        int rc = e.RoundingControl;
        if (i.Code is Code.Cvtsi2ss_xmm_rm32 or Code.Cvtsi2ss_xmm_rm64)
            BinaryPrimitives.WriteUInt32LittleEndian(d, BitConverter.SingleToUInt32Bits(rc == 0 ? v : (float)RoundLongToSingle(v, rc)));
        else
            BinaryPrimitives.WriteUInt64LittleEndian(d, BitConverter.DoubleToUInt64Bits(rc == 0 ? v : RoundLongToDouble(v, rc)));
        return Exec.Next;
    }

    /// <summary>MXCSR.RC: 0 nearest, 1 down, 2 up, 3 toward zero.</summary>
    private int RoundingControl => (int)(_cpu.Mxcsr >> 13) & 3;

    // Integer to float under a directed rounding mode: the nearest result, stepped one unit when it rounded the wrong way.
    private static float RoundLongToSingle(long v, int rc)
    {
        float f = v;
        var diff = (Int128)(double)f - v; // f is a whole number here, so the conversion is exact
        if (rc == 1 && diff > 0 || rc == 3 && v >= 0 && diff > 0) return MathF.BitDecrement(f);
        if (rc == 2 && diff < 0 || rc == 3 && v < 0 && diff < 0) return MathF.BitIncrement(f);
        return f;
    }

    private static double RoundLongToDouble(long v, int rc)
    {
        double f = v;
        var diff = (Int128)f - v;
        if (rc == 1 && diff > 0 || rc == 3 && v >= 0 && diff > 0) return Math.BitDecrement(f);
        if (rc == 2 && diff < 0 || rc == 3 && v < 0 && diff < 0) return Math.BitIncrement(f);
        return f;
    }

    /// <summary>Rounds by MXCSR.RC (or truncates) to an integer of 32 or 64 bits; NaN and out-of-range give the integer indefinite.</summary>
    private static ulong ToInteger(double x, int rc, bool to64)
    {
        double r = rc switch { 0 => Math.Round(x, MidpointRounding.ToEven), 1 => Math.Floor(x), 2 => Math.Ceiling(x), _ => Math.Truncate(x) };
        if (to64)
        {
            if (double.IsNaN(r) || r >= 9223372036854775808.0 || r < -9223372036854775808.0) return 0x8000000000000000;
            return (ulong)(long)r;
        }
        if (double.IsNaN(r) || r >= 2147483648.0 || r < -2147483648.0) return 0x80000000;
        return (uint)(int)r;
    }

    private static Exec ConvertFloatToInt(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        bool single = i.Mnemonic is Mnemonic.Cvttss2si or Mnemonic.Cvtss2si;
        bool truncate = i.Mnemonic is Mnemonic.Cvttss2si or Mnemonic.Cvttsd2si;
        Span<byte> s = stackalloc byte[16];
        if (!e.ReadVec(ref i, 1, single ? 4 : 8, false, s)) return Exec.Fault;
        double x = single ? BitConverter.UInt32BitsToSingle(BinaryPrimitives.ReadUInt32LittleEndian(s)) : BitConverter.UInt64BitsToDouble(BinaryPrimitives.ReadUInt64LittleEndian(s));
        bool to64 = i.Op0Register.GetSize() == 8;
        SetGpr(e._cpu, i.Op0Register, ToInteger(x, truncate ? 3 : e.RoundingControl, to64));
        return Exec.Next;
    }

    // Conversions between single and double and between packed integers and floats. A narrowing conversion to a
    // 64-bit result zeroes the upper half; CVTSS2SD/CVTSD2SS keep the destination's other elements.
    private static Exec ConvertPacked(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable()) return Exec.Fault;
        var code = i.Code;
        int srcSize = code switch
        {
            Code.Cvtss2sd_xmm_xmmm32 => 4,
            Code.Cvtsd2ss_xmm_xmmm64 or Code.Cvtps2pd_xmm_xmmm64 or Code.Cvtdq2pd_xmm_xmmm64 => 8,
            _ => 16,
        };
        Span<byte> s = stackalloc byte[16];
        if (!e.ReadVec(ref i, 1, srcSize, srcSize == 16, s)) return Exec.Fault;
        var d = e.XmmOf(i.Op0Register);
        Span<byte> r = stackalloc byte[16];
        d.CopyTo(r);
        var sf = MemoryMarshal.Cast<byte, float>(s); var sdbl = MemoryMarshal.Cast<byte, double>(s); var si = MemoryMarshal.Cast<byte, int>(s);
        var rf = MemoryMarshal.Cast<byte, float>(r); var rdbl = MemoryMarshal.Cast<byte, double>(r); var ri = MemoryMarshal.Cast<byte, uint>(r);
        int rc = e.RoundingControl;
        switch (code)
        {
            case Code.Cvtss2sd_xmm_xmmm32: rdbl[0] = ToDouble(sf[0]); break;
            case Code.Cvtsd2ss_xmm_xmmm64: rf[0] = ToSingle(sdbl[0]); break;
            case Code.Cvtps2pd_xmm_xmmm64: rdbl[1] = ToDouble(sf[1]); rdbl[0] = ToDouble(sf[0]); break;
            case Code.Cvtpd2ps_xmm_xmmm128: rf[0] = ToSingle(sdbl[0]); rf[1] = ToSingle(sdbl[1]); ri[2] = 0; ri[3] = 0; break;
            case Code.Cvtdq2ps_xmm_xmmm128: for (int k = 0; k < 4; k++) rf[k] = rc == 0 ? si[k] : (float)RoundLongToSingle(si[k], rc); break;
            case Code.Cvtdq2pd_xmm_xmmm64: rdbl[1] = si[1]; rdbl[0] = si[0]; break;
            case Code.Cvtps2dq_xmm_xmmm128: for (int k = 0; k < 4; k++) ri[k] = (uint)ToInteger(sf[k], rc, false); break;
            case Code.Cvttps2dq_xmm_xmmm128: for (int k = 0; k < 4; k++) ri[k] = (uint)ToInteger(sf[k], 3, false); break;
            case Code.Cvtpd2dq_xmm_xmmm128: ri[0] = (uint)ToInteger(sdbl[0], rc, false); ri[1] = (uint)ToInteger(sdbl[1], rc, false); ri[2] = 0; ri[3] = 0; break;
            default: ri[0] = (uint)ToInteger(sdbl[0], 3, false); ri[1] = (uint)ToInteger(sdbl[1], 3, false); ri[2] = 0; ri[3] = 0; break; // CVTTPD2DQ
        }
        r.CopyTo(d);
        return Exec.Next;
    }

    // Widening and narrowing keep a NaN's payload (quieted); a narrowed double that overflows becomes infinity.
    private static double ToDouble(float f)
        => float.IsNaN(f) ? BitConverter.UInt64BitsToDouble(((ulong)(BitConverter.SingleToUInt32Bits(f) >> 31) << 63) | 0x7ff8000000000000 | ((ulong)(BitConverter.SingleToUInt32Bits(f) & 0x3fffff) << 29)) : f;

    private static float ToSingle(double x)
    {
        if (!double.IsNaN(x)) return (float)x;
        ulong b = BitConverter.DoubleToUInt64Bits(x);
        return BitConverter.UInt32BitsToSingle((uint)(b >> 63) << 31 | 0x7fc00000 | (uint)((b >> 29) & 0x3fffff));
    }
}
