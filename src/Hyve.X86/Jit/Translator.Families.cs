// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.X86.Jit;

/// <summary>
/// Instruction families beyond the plain integer ones that the boot profile (HYVE_JIT_STATS=1) showed the interpreter
/// running: multiply and divide and the accumulator sign extensions (SDM Vol. 1 7.3.2, 7.3.1.6), PUSHFQ, and near
/// CALL/JMP through a register or memory. The rotates, BT/BTS/BTR/BTC, BSWAP, XADD, XCHG, CMPXCHG and the LOCK forms
/// go through the integer emitter (<see cref="EmitInstruction"/>), which renames their operands.
/// </summary>
public sealed unsafe partial class Translator
{
    // Instructions handled by a family emitter here rather than the operand-renaming integer one.
    private static bool IsFamilyForm(Mnemonic m) => m is Mnemonic.Mul or Mnemonic.Div or Mnemonic.Cbw or Mnemonic.Cwde
        or Mnemonic.Cdqe or Mnemonic.Cwd or Mnemonic.Cdq or Mnemonic.Cqo or Mnemonic.Pushfq;

    // Read-modify-write instructions the host may run with LOCK on the guest's host pointer: atomic across vCPUs.
    private static bool Lockable(Mnemonic m) => m is Mnemonic.Add or Mnemonic.Adc or Mnemonic.Sub or Mnemonic.Sbb or Mnemonic.And
        or Mnemonic.Or or Mnemonic.Xor or Mnemonic.Inc or Mnemonic.Dec or Mnemonic.Neg or Mnemonic.Not or Mnemonic.Xadd
        or Mnemonic.Xchg or Mnemonic.Cmpxchg or Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc;

    // Which forms of the families this file adds are translatable (operand checks as for the integer family).
    private static bool FamilyTranslatable(ref Instruction i, int bits)
    {
        bool mem64 = bits == 64;
        switch (i.Mnemonic)
        {
            case Mnemonic.Rol: case Mnemonic.Ror:
            case Mnemonic.Bt: case Mnemonic.Bts: case Mnemonic.Btr: case Mnemonic.Btc:
                // A register bit offset into memory addresses beyond the operand (SDM "bit base"): interpreter.
                if (i.Mnemonic is not (Mnemonic.Rol or Mnemonic.Ror) && i.Op0Kind == OpKind.Memory && i.Op1Kind == OpKind.Register) return false;
                return OperandsOk(ref i, bits);
            case Mnemonic.Bswap:
                return i.Code is Code.Bswap_r32 or Code.Bswap_r64 && OperandsOk(ref i, bits);
            case Mnemonic.Xadd: case Mnemonic.Xchg:
                return OperandsOk(ref i, bits);
            case Mnemonic.Cmpxchg:
                return i.Op0Kind == OpKind.Memory && OperandsOk(ref i, bits);
            case Mnemonic.Mul: case Mnemonic.Div:
                return OperandsOk(ref i, bits);
            case Mnemonic.Cbw: case Mnemonic.Cwde: case Mnemonic.Cdqe: case Mnemonic.Cwd: case Mnemonic.Cdq: case Mnemonic.Cqo:
                return true;
            case Mnemonic.Pushfq:
                return mem64 && i.Code == Code.Pushfq;
            case Mnemonic.Call:
                return mem64 && i.Code == Code.Call_rm64 && OperandsOk(ref i, bits);
            case Mnemonic.Jmp:
                return mem64 && i.Code == Code.Jmp_rm64 && OperandsOk(ref i, bits);
            case Mnemonic.Lfence: case Mnemonic.Pause:
                return true;
            case Mnemonic.Prefetch: case Mnemonic.Prefetchw: case Mnemonic.Prefetchnta: case Mnemonic.Prefetcht0:
            case Mnemonic.Prefetcht1: case Mnemonic.Prefetcht2:
                return true; // hints: no access, no fault
            default:
                return false;
        }
    }

    private static bool IsHint(Mnemonic m) => m is Mnemonic.Lfence or Mnemonic.Pause or Mnemonic.Prefetch or Mnemonic.Prefetchw
        or Mnemonic.Prefetchnta or Mnemonic.Prefetcht0 or Mnemonic.Prefetcht1 or Mnemonic.Prefetcht2;

    private static Register Sized(int size, Register host64) => size switch
    {
        1 => Register.AL + (host64 - Register.RAX),
        2 => Register.AX + (host64 - Register.RAX),
        4 => Register.EAX + (host64 - Register.RAX),
        _ => host64,
    };

    // The source operand of MUL/DIV into RCX (zero-extended); memory after a read probe. Flags are saved first.
    private void LoadRmToRcx(Assembler a, ref Instruction i, int k, int size)
    {
        SaveFlags(a);
        if (i.Op0Kind == OpKind.Memory)
        {
            Address(a, ref i);
            Probe(a, ref i, k, size, write: false);
            switch (size)
            {
                case 1: a.movzx(ecx, __byte_ptr[rdx]); break;
                case 2: a.movzx(ecx, __word_ptr[rdx]); break;
                case 4: a.mov(ecx, __dword_ptr[rdx]); break;
                default: a.mov(rcx, __qword_ptr[rdx]); break;
            }
        }
        else
        {
            a.mov(rcx, Gpr(GuestIndex(i.Op0Register)));
        }
    }

    private void EmitFamily(Assembler a, ref Instruction i, int k)
    {
        switch (i.Mnemonic)
        {
            case Mnemonic.Mul: case Mnemonic.Div:
            {
                int size = i.Op0Kind == OpKind.Memory ? i.MemorySize.GetSize() : i.Op0Register.GetSize();
                LoadRmToRcx(a, ref i, k, size);
                a.mov(rax, Gpr(0));
                if (size > 1) a.mov(rdx, Gpr(2));
                var src = Sized(size, Register.RCX);
                if (i.Mnemonic == Mnemonic.Div)
                {
                    // #DE (a zero divisor or a quotient too wide) leaves everything to the interpreter, which raises it:
                    // for an unsigned divide both are "high half of the dividend >= divisor".
                    var fail = NewExit(a, i.IP, false, k, true, ExitInterpret);
                    if (size == 1)
                    {
                        a.movzx(esi, ah);
                        a.movzx(ecx, cl);
                        a.cmp(esi, ecx);
                    }
                    else a.AddInstruction(Instruction.Create(size switch { 2 => Code.Cmp_r16_rm16, 4 => Code.Cmp_r32_rm32, _ => Code.Cmp_r64_rm64 },
                        Sized(size, Register.RDX), src));
                    a.jae(fail);
                    a.AddInstruction(Instruction.Create(size switch { 1 => Code.Div_rm8, 2 => Code.Div_rm16, 4 => Code.Div_rm32, _ => Code.Div_rm64 }, src));
                }
                else
                {
                    a.AddInstruction(Instruction.Create(size switch { 1 => Code.Mul_rm8, 2 => Code.Mul_rm16, 4 => Code.Mul_rm32, _ => Code.Mul_rm64 }, src));
                }
                a.mov(Gpr(0), rax);
                if (size > 1) a.mov(Gpr(2), rdx);
                return;
            }
            case Mnemonic.Cbw: case Mnemonic.Cwde: case Mnemonic.Cdqe: case Mnemonic.Cwd: case Mnemonic.Cdq: case Mnemonic.Cqo:
            {
                bool toRdx = i.Mnemonic is Mnemonic.Cwd or Mnemonic.Cdq or Mnemonic.Cqo;
                a.mov(rax, Gpr(0));
                if (toRdx) a.mov(rdx, Gpr(2));
                a.AddInstruction(Instruction.Create(i.Code)); // implicit RAX/RDX: the same instruction on the host's
                if (toRdx) a.mov(Gpr(2), rdx);
                else a.mov(Gpr(0), rax);
                return;
            }
            case Mnemonic.Pushfq:
            {
                // The six status flags are the host's (saved by the probe); the rest is the state block's RFLAGS with
                // RF and VM stored as 0 (SDM PUSHF).
                ProbeStack(a, ref i, k, -8, write: true);
                a.mov(rax, __qword_ptr[rbx + StateBlock.FlagSaveOffset]);
                a.and(eax, HostStatusMask);
                a.mov(rcx, __qword_ptr[rbx + StateBlock.RflagsOffset]);
                a.mov(rsi, ~(ulong)(HostStatusMask | 0x30000));
                a.and(rcx, rsi);
                a.or(rax, rcx);
                a.mov(__qword_ptr[rdx], rax);
                AdjustRsp(a, -8);
                if (_restore[k]) RestoreFlags(a); // the AND/OR above changed the host's flags
                return;
            }
        }
    }

    // CALL/JMP r/m64: the target (kept in R14, which the slow path preserves) must be canonical, and a CALL's push must
    // succeed, before RSP, RIP or memory change; then the block leaves with RIP = the target.
    private void EmitIndirect(Assembler a, ref Instruction i, int k, ulong next)
    {
        SaveFlags(a);
        if (i.Op0Kind == OpKind.Memory)
        {
            Address(a, ref i);
            Probe(a, ref i, k, 8, write: false);
            a.mov(r14, __qword_ptr[rdx]);
        }
        else a.mov(r14, Gpr(GuestIndex(i.Op0Register)));
        var fail = NewExit(a, i.IP, false, k, true, ExitInterpret);
        a.mov(rcx, r14);
        a.shl(rcx, 16);
        a.sar(rcx, 16);
        a.cmp(rcx, r14);
        a.jne(fail);
        if (i.Mnemonic == Mnemonic.Call)
        {
            a.mov(rdx, Gpr(4));
            a.lea(rdx, __qword_ptr[rdx - 8]);
            Probe(a, ref i, k, 8, write: true);
            a.mov(rax, next);
            a.mov(__qword_ptr[rdx], rax);
            AdjustRsp(a, -8);
        }
        a.mov(__qword_ptr[rbx + StateBlock.RipOffset], r14);
        a.jmp(NewExit(a, 0, true, k + 1, true, ExitNext));
    }
}
