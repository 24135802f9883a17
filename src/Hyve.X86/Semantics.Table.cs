// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // The semantics table: one slot per Iced Code. Handlers are chosen by mnemonic (forms of one
    // mnemonic share semantics and read their operands generically) or by exact code where a mnemonic
    // is shared with an unrelated instruction (MOVSD string vs. SSE MOVSD). Adding an instruction is
    // adding a case here and a handler.
    // One slot per Code: the instruction's semantics, or null where the engine has none.
    private static delegate*<InstructionEngine, ref Instruction, Exec>[] BuildSemantics()
    {
        var codes = Enum.GetValues<Code>();
        var t = new delegate*<InstructionEngine, ref Instruction, Exec>[codes.Length + 1];
        foreach (var c in codes)
            if ((int)c < t.Length) t[(int)c] = Select(c);
        return t;
    }

    /// <summary>
    /// The dispatch table for CPU model <paramref name="model"/>: a form whose CPUID features the model reports gets its
    /// semantics (null = the "not implemented" stop, which the coverage test keeps empty); any other raises #UD, as a
    /// processor without the feature does (SDM Vol. 2, each instruction's "#UD If CPUID.xx.yy = 0"), except encodings a
    /// processor without the feature executes as something older (hints that are NOPs, TZCNT as BSF, LZCNT as BSR,
    /// WBNOINVD as WBINVD, CLFLUSHOPT as CLFLUSH).
    /// </summary>
    private static delegate*<InstructionEngine, ref Instruction, Exec>[] BuildTable(CpuModel model)
    {
        var sem = s_semantics;
        var t = new delegate*<InstructionEngine, ref Instruction, Exec>[sem.Length];
        foreach (var c in Enum.GetValues<Code>())
        {
            if ((int)c >= t.Length || c == Code.INVALID) continue;
            var h = sem[(int)c];
            if (model.Supports(c) || IsHintEncoding(c)) t[(int)c] = h;
            else if (c.Mnemonic() == Mnemonic.Tzcnt) t[(int)c] = &TzcntAsBsf;
            else if (c.Mnemonic() == Mnemonic.Lzcnt) t[(int)c] = &LzcntAsBsr;
            else t[(int)c] = &Undefined;
        }
        return t;
    }

    // Encodings that run on a processor whose CPUID lacks their feature: prefetch hints and reserved NOPs (no effect),
    // ENDBR (a NOP without CET), WBNOINVD (F3 0F 09: WBINVD with an ignored prefix), CLFLUSHOPT (66 0F AE /7: CLFLUSH
    // with an ignored operand-size prefix).
    private static bool IsHintEncoding(Code c) => c is Code.Prefetch_m8 or Code.Prefetchw_m8 or Code.Prefetchwt1_m8
        or Code.Prefetchnta_m8 or Code.Prefetcht0_m8 or Code.Prefetcht1_m8 or Code.Prefetcht2_m8 or Code.Pause or Code.Clflushopt_m8
        or Code.Prefetchreserved3_m8 or Code.Prefetchreserved4_m8 or Code.Prefetchreserved5_m8 or Code.Prefetchreserved6_m8
        or Code.Prefetchreserved7_m8
        || c.Mnemonic() is Mnemonic.Reservednop or Mnemonic.Endbr32 or Mnemonic.Endbr64 or Mnemonic.Wbnoinvd;

    private static delegate*<InstructionEngine, ref Instruction, Exec> Select(Code c)
    {
        switch (c)
        {
            case Code.Movsb_m8_m8: case Code.Movsw_m16_m16: case Code.Movsd_m32_m32: case Code.Movsq_m64_m64:
                return &Movs;
            case Code.Cmpsb_m8_m8: case Code.Cmpsw_m16_m16: case Code.Cmpsd_m32_m32: case Code.Cmpsq_m64_m64:
                return &Cmps;
            case Code.Stosb_m8_AL: case Code.Stosw_m16_AX: case Code.Stosd_m32_EAX: case Code.Stosq_m64_RAX:
                return &Stos;
            case Code.Lodsb_AL_m8: case Code.Lodsw_AX_m16: case Code.Lodsd_EAX_m32: case Code.Lodsq_RAX_m64:
                return &Lods;
            case Code.Scasb_AL_m8: case Code.Scasw_AX_m16: case Code.Scasd_EAX_m32: case Code.Scasq_RAX_m64:
                return &Scas;
            case Code.Insb_m8_DX: case Code.Insw_m16_DX: case Code.Insd_m32_DX:
                return &Ins;
            case Code.Outsb_DX_m8: case Code.Outsw_DX_m16: case Code.Outsd_DX_m32:
                return &Outs;
            case Code.Fninit: return &Fninit;
            case Code.Finit: return &Finit;
            case Code.Wait: return &Fwait;
            case Code.Fnstcw_m2byte: return &Fnstcw;
            case Code.Fstcw_m2byte: return &Fstcw;
            case Code.Fldcw_m2byte: return &Fldcw;
            case Code.Fnstsw_AX: case Code.Fnstsw_m2byte: return &Fnstsw;
            case Code.Fstsw_AX: case Code.Fstsw_m2byte: return &Fstsw;
            case Code.Fnclex: return &Fnclex;
            case Code.Fclex: return &Fclex;
            case Code.Fxsave_m512byte: case Code.Fxsave64_m512byte: return &Fxsave;
            case Code.Fxrstor_m512byte: case Code.Fxrstor64_m512byte: return &Fxrstor;
            case Code.Ldmxcsr_m32: return &Ldmxcsr;
            case Code.Stmxcsr_m32: return &Stmxcsr;
            case Code.VEX_Bextr_r32_rm32_r32: case Code.VEX_Bextr_r64_rm64_r64: return &Bextr;
            case Code.Hlt: return &Hlt;
            case Code.Cmpxchg16b_m128: return &Cmpxchg16b;
            case Code.Lgdt_m1632_16: case Code.Lgdt_m1632: case Code.Lgdt_m1664:
            case Code.Lidt_m1632_16: case Code.Lidt_m1632: case Code.Lidt_m1664:
                return &LoadDescriptorTable;
            case Code.Sgdt_m1632_16: case Code.Sgdt_m1632: case Code.Sgdt_m1664:
            case Code.Sidt_m1632_16: case Code.Sidt_m1632: case Code.Sidt_m1664:
                return &StoreDescriptorTable;
            case Code.Lldt_rm16: case Code.Lldt_r32m16: case Code.Lldt_r64m16: return &Lldt;
            case Code.Ltr_rm16: case Code.Ltr_r32m16: case Code.Ltr_r64m16: return &Ltr;
            case Code.Sldt_rm16: case Code.Sldt_r32m16: case Code.Sldt_r64m16:
            case Code.Str_rm16: case Code.Str_r32m16: case Code.Str_r64m16:
            case Code.Smsw_rm16: case Code.Smsw_r32m16: case Code.Smsw_r64m16:
                return &StoreSystemRegister;
            case Code.Lmsw_rm16: case Code.Lmsw_r32m16: case Code.Lmsw_r64m16: return &Lmsw;
            case Code.Clts: return &Clts;
            case Code.Mov_r32_cr: case Code.Mov_r64_cr: case Code.Mov_cr_r32: case Code.Mov_cr_r64: return &MovCr;
            case Code.Mov_r32_dr: case Code.Mov_r64_dr: case Code.Mov_dr_r32: case Code.Mov_dr_r64: return &MovDr;
            case Code.Cli: case Code.Sti: return &CliSti;
            case Code.Popfw: case Code.Popfd: case Code.Popfq: return &Popf;
            case Code.Cpuid: return &CpuidInsn;
            case Code.Rdmsr: return &Rdmsr;
            case Code.Wrmsr: return &Wrmsr;
            case Code.Rdtsc: case Code.Rdtscp: return &Rdtsc;
            case Code.Invlpg_m: return &Invlpg;
            case Code.Wbinvd: case Code.Invd: return &PrivilegedNop;
            case Code.Leavew: case Code.Leaved: case Code.Leaveq: return &Leave;
            case Code.Enterw_imm16_imm8: case Code.Enterd_imm16_imm8: case Code.Enterq_imm16_imm8: return &Enter;
            case Code.Lahf: case Code.Sahf: return &LahfSahf;
            case Code.Int_imm8: case Code.Int3: case Code.Into: return &IntN;
            case Code.Iretw: case Code.Iretd: case Code.Iretq: return &Iret;
            case Code.Swapgs: return &Swapgs;
            case Code.Pause: case Code.Prefetch_m8: case Code.Prefetchw_m8: case Code.Prefetchwt1_m8: case Code.Prefetchnta_m8:
            case Code.Prefetcht0_m8: case Code.Prefetcht1_m8: case Code.Prefetcht2_m8:
            case Code.Prefetchreserved3_m8: case Code.Prefetchreserved4_m8: case Code.Prefetchreserved5_m8:
            case Code.Prefetchreserved6_m8: case Code.Prefetchreserved7_m8:
                return &Nop;
            case Code.Lfence: case Code.Lfence_E9: case Code.Lfence_EA: case Code.Lfence_EB: case Code.Lfence_EC: case Code.Lfence_ED:
            case Code.Lfence_EE: case Code.Lfence_EF: case Code.Mfence: case Code.Mfence_F1: case Code.Mfence_F2: case Code.Mfence_F3:
            case Code.Mfence_F4: case Code.Mfence_F5: case Code.Mfence_F6: case Code.Mfence_F7: case Code.Sfence: case Code.Sfence_F9:
            case Code.Sfence_FA: case Code.Sfence_FB: case Code.Sfence_FC: case Code.Sfence_FD: case Code.Sfence_FE: case Code.Sfence_FF:
                return &Fence;
            case Code.Clflush_m8: case Code.Clflushopt_m8: return &Clflush;
            case Code.Pushaw: case Code.Pushad: return &Pusha;
            case Code.Popaw: case Code.Popad: return &Popa;
            case Code.Xlat_m8: return &Xlat;
            case Code.Cmpxchg8b_m64: return &Cmpxchg8b;
            case Code.Lar_r16_rm16: case Code.Lar_r32_r32m16: case Code.Lar_r64_r64m16:
            case Code.Lsl_r16_rm16: case Code.Lsl_r32_r32m16: case Code.Lsl_r64_r64m16:
            case Code.Verr_rm16: case Code.Verr_r32m16: case Code.Verr_r64m16:
            case Code.Verw_rm16: case Code.Verw_r32m16: case Code.Verw_r64m16:
                return &ProbeSelector;
            case Code.Syscall: return &Syscall;
            case Code.Sysretd: case Code.Sysretq: return &Sysret;
            case Code.Sysenter: return &Sysenter;
            case Code.Sysexitd: case Code.Sysexitq: return &Sysexit;
            case Code.Jmp_ptr1616: case Code.Jmp_ptr1632: case Code.Jmp_m1616: case Code.Jmp_m1632: case Code.Jmp_m1664:
            case Code.Call_ptr1616: case Code.Call_ptr1632: case Code.Call_m1616: case Code.Call_m1632: case Code.Call_m1664:
                return &FarJmpCall;
            case Code.Retfw: case Code.Retfw_imm16: case Code.Retfd: case Code.Retfd_imm16: case Code.Retfq: case Code.Retfq_imm16:
                return &FarRet;
            case Code.Mov_rm16_Sreg: case Code.Mov_r32m16_Sreg: case Code.Mov_r64m16_Sreg:
            case Code.Mov_Sreg_rm16: case Code.Mov_Sreg_r32m16: case Code.Mov_Sreg_r64m16:
                return &MovSreg;
            case Code.Popw_ES: case Code.Popd_ES: case Code.Popw_SS: case Code.Popd_SS: case Code.Popw_DS: case Code.Popd_DS:
            case Code.Popw_FS: case Code.Popd_FS: case Code.Popq_FS: case Code.Popw_GS: case Code.Popd_GS: case Code.Popq_GS:
                return &PopSreg;
            case Code.Pushw_ES: case Code.Pushd_ES: case Code.Pushw_CS: case Code.Pushd_CS: case Code.Pushw_SS: case Code.Pushd_SS:
            case Code.Pushw_DS: case Code.Pushd_DS: case Code.Pushw_FS: case Code.Pushd_FS: case Code.Pushq_FS:
            case Code.Pushw_GS: case Code.Pushd_GS: case Code.Pushq_GS:
                return &PushSreg;
            case Code.Lds_r16_m1616: case Code.Lds_r32_m1632: case Code.Les_r16_m1616: case Code.Les_r32_m1632:
            case Code.Lss_r16_m1616: case Code.Lss_r32_m1632: case Code.Lss_r64_m1664:
            case Code.Lfs_r16_m1616: case Code.Lfs_r32_m1632: case Code.Lfs_r64_m1664:
            case Code.Lgs_r16_m1616: case Code.Lgs_r32_m1632: case Code.Lgs_r64_m1664:
                return &LoadFarPointer;
            case Code.Ud2: case Code.Ud0: case Code.Ud0_r16_rm16: case Code.Ud0_r32_rm32: case Code.Ud0_r64_rm64:
            case Code.Ud1_r16_rm16: case Code.Ud1_r32_rm32: case Code.Ud1_r64_rm64:
                return &Undefined;
            case Code.Nopw: case Code.Nopd: case Code.Nopq: case Code.Nop_rm16: case Code.Nop_rm32: case Code.Nop_rm64:
                return &Nop;
            case Code.Rdpmc: return &Rdpmc;
            case Code.Xgetbv: case Code.Xsetbv: return &XcrAccess;
            case Code.Xbegin_rel16: case Code.Xbegin_rel32: case Code.Xabort_imm8: case Code.Xend: case Code.Xtest:
                return &Undefined; // TSX (HLE/RTM) is not reported in CPUID.7:EBX, so each raises #UD (SDM Vol. 2 XBEGIN..XTEST)
        }
        // 0F 0D and 0F 18-0F 1F with no assigned meaning are hint NOPs (SDM Vol. 2 NOP, "reserved NOP"): they decode and
        // do nothing, whatever the CPU model.
        if (c.Mnemonic() == Mnemonic.Reservednop) return &Nop;
        // VMX and SVM instructions: the model reports neither CPUID.1:ECX.VMX nor CPUID.80000001:ECX.SVM, so each is #UD
        // (SDM Vol. 3 31.3 "VMX instructions ... #UD if not in VMX operation"; APM Vol. 3 VMRUN, VMMCALL).
        if (IsVirtualizationInstruction(c.Mnemonic())) return &Undefined;
        var mmx = SelectMmx(c);
        if (mmx != null) return mmx;
        var sse = SelectSse(c);
        if (sse != null) return sse;
        var x87env = SelectX87Env(c);
        if (x87env != null) return x87env;
        var x87 = SelectX87(c);
        if (x87 != null) return x87;
        if (c.Mnemonic() is Mnemonic.Andn or Mnemonic.Blsi or Mnemonic.Blsmsk or Mnemonic.Blsr) return &Bmi1;
        // Only legacy/VEX general-purpose forms below; SSE/AVX variants sharing a mnemonic stay unsupported.
        if (c.Encoding() != EncodingKind.Legacy) return null;
        return c.Mnemonic() switch
        {
            Mnemonic.Mov => &Mov,
            Mnemonic.Movzx => &Movzx,
            Mnemonic.Movsx or Mnemonic.Movsxd => &Movsx,
            Mnemonic.Add or Mnemonic.Or or Mnemonic.Adc or Mnemonic.Sbb or Mnemonic.And or Mnemonic.Sub
                or Mnemonic.Xor or Mnemonic.Cmp or Mnemonic.Test => &Alu,
            Mnemonic.Not or Mnemonic.Neg or Mnemonic.Inc or Mnemonic.Dec => &Unary,
            Mnemonic.Bt or Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc => &BitTest,
            Mnemonic.Xchg => &Xchg,
            Mnemonic.Cmpxchg => &Cmpxchg,
            Mnemonic.Push => &Push,
            Mnemonic.Pop => &Pop,
            Mnemonic.In => &In,
            Mnemonic.Out => &Out,
            Mnemonic.Lea => &Lea,
            Mnemonic.Shl or Mnemonic.Sal or Mnemonic.Shr or Mnemonic.Sar => &Shift,
            Mnemonic.Clc or Mnemonic.Stc or Mnemonic.Cmc or Mnemonic.Cld or Mnemonic.Std => &FlagOp,
            Mnemonic.Jo or Mnemonic.Jno or Mnemonic.Jb or Mnemonic.Jae or Mnemonic.Je or Mnemonic.Jne or Mnemonic.Jbe
                or Mnemonic.Ja or Mnemonic.Js or Mnemonic.Jns or Mnemonic.Jp or Mnemonic.Jnp or Mnemonic.Jl
                or Mnemonic.Jge or Mnemonic.Jle or Mnemonic.Jg => &Jcc,
            Mnemonic.Jmp => &Jmp,
            Mnemonic.Call => &Call,
            Mnemonic.Ret => &Ret,
            Mnemonic.Cmovo or Mnemonic.Cmovno or Mnemonic.Cmovb or Mnemonic.Cmovae or Mnemonic.Cmove or Mnemonic.Cmovne
                or Mnemonic.Cmovbe or Mnemonic.Cmova or Mnemonic.Cmovs or Mnemonic.Cmovns or Mnemonic.Cmovp
                or Mnemonic.Cmovnp or Mnemonic.Cmovl or Mnemonic.Cmovge or Mnemonic.Cmovle or Mnemonic.Cmovg => &Cmovcc,
            Mnemonic.Seto or Mnemonic.Setno or Mnemonic.Setb or Mnemonic.Setae or Mnemonic.Sete or Mnemonic.Setne
                or Mnemonic.Setbe or Mnemonic.Seta or Mnemonic.Sets or Mnemonic.Setns or Mnemonic.Setp
                or Mnemonic.Setnp or Mnemonic.Setl or Mnemonic.Setge or Mnemonic.Setle or Mnemonic.Setg => &Setcc,
            Mnemonic.Cbw or Mnemonic.Cwde or Mnemonic.Cdqe or Mnemonic.Cwd or Mnemonic.Cdq or Mnemonic.Cqo => &SignExtendAcc,
            Mnemonic.Xadd => &Xadd,
            Mnemonic.Bswap => &Bswap,
            Mnemonic.Bsf or Mnemonic.Bsr or Mnemonic.Tzcnt or Mnemonic.Lzcnt or Mnemonic.Popcnt => &BitScan,
            Mnemonic.Mul or Mnemonic.Imul => &Mul,
            Mnemonic.Div or Mnemonic.Idiv => &Div,
            Mnemonic.Rol or Mnemonic.Ror or Mnemonic.Rcl or Mnemonic.Rcr => &Rotate,
            Mnemonic.Loop or Mnemonic.Loope or Mnemonic.Loopne or Mnemonic.Jcxz or Mnemonic.Jecxz or Mnemonic.Jrcxz => &LoopJcxz,
            Mnemonic.Shld or Mnemonic.Shrd => &DoubleShift,
            Mnemonic.Clac or Mnemonic.Stac => &ClacStac,
            Mnemonic.Endbr32 or Mnemonic.Endbr64 or Mnemonic.Serialize => &Nop,
            Mnemonic.Rdfsbase or Mnemonic.Rdgsbase or Mnemonic.Wrfsbase or Mnemonic.Wrgsbase => &FsGsBase,
            Mnemonic.Rdpid => &Rdpid,
            Mnemonic.Rdpkru or Mnemonic.Wrpkru => &Pkru,
            Mnemonic.Invpcid => &Invpcid,
            Mnemonic.Wbnoinvd => &PrivilegedNop,
            Mnemonic.Movnti => &Movnti,
            Mnemonic.Movbe => &Movbe,
            Mnemonic.Int1 => &Icebp,
            Mnemonic.Salc => &Salc,
            Mnemonic.Arpl => &Arpl,
            Mnemonic.Bound => &Bound,
            Mnemonic.Daa or Mnemonic.Das or Mnemonic.Aaa or Mnemonic.Aas or Mnemonic.Aam or Mnemonic.Aad => &Bcd,
            Mnemonic.Pushf or Mnemonic.Pushfd or Mnemonic.Pushfq => &Pushf,
            _ => null,
        };
    }

    private static bool IsVirtualizationInstruction(Mnemonic m) => m is Mnemonic.Vmcall or Mnemonic.Vmlaunch or Mnemonic.Vmresume
        or Mnemonic.Vmxoff or Mnemonic.Vmxon or Mnemonic.Vmclear or Mnemonic.Vmptrld or Mnemonic.Vmptrst or Mnemonic.Vmread
        or Mnemonic.Vmwrite or Mnemonic.Vmfunc or Mnemonic.Invept or Mnemonic.Invvpid or Mnemonic.Vmrun or Mnemonic.Vmmcall
        or Mnemonic.Vmload or Mnemonic.Vmsave or Mnemonic.Stgi or Mnemonic.Clgi or Mnemonic.Skinit or Mnemonic.Invlpga;

}
