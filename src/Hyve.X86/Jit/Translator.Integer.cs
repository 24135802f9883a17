// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.X86.Jit;

/// <summary>
/// The integer family (SDM Vol. 1 7.3.1-7.3.6): MOV/MOVZX/MOVSX(D), LEA, the ALU operations, INC/DEC/NEG/NOT, shifts,
/// IMUL, CMOVcc, SETcc, PUSH/POP and NOP. Each is emitted as the guest instruction itself with its register operands
/// renamed to host scratch registers loaded from the state block and its memory operand renamed to [RDX] after the TLB
/// probe: the host computes the result and the flags exactly as the guest's CPU would.
/// </summary>
public sealed unsafe partial class Translator
{
    // Debugging aid: HYVE_JIT_OFF=bits leaves families to the interpreter (1 memory operands, 2 stack, 4 branches,
    // 8 self-loops, 16 everything outside 64-bit mode), to narrow down a bad translation on a real guest.
    private static readonly int s_off = int.TryParse(Environment.GetEnvironmentVariable("HYVE_JIT_OFF"), out int v) ? v : 0;

    /// <summary>True when the translator takes <paramref name="i"/> in code of <paramref name="bits"/> bits.</summary>
    internal static bool CanTranslate(ref Instruction i, int bits) => Translatable(ref i, bits);

    // Which instructions the translator takes. Anything else ends the block before it (the interpreter runs it).
    private static bool Translatable(ref Instruction i, int bits)
    {
        if (i.HasLockPrefix || i.HasRepPrefix || i.HasRepnePrefix) return false;
        if ((s_off & 16) != 0 && bits != 64) return false;
        if ((s_off & 2) != 0 && i.Mnemonic is Mnemonic.Push or Mnemonic.Pop or Mnemonic.Call or Mnemonic.Ret) return false;
        if ((s_off & 4) != 0 && i.FlowControl != FlowControl.Next) return false;
        if ((s_off & 1) != 0 && HasMemoryOperand(ref i) && i.Mnemonic != Mnemonic.Lea) return false;
        bool mem64 = bits == 64;
        switch (i.Mnemonic)
        {
            case Mnemonic.Nop:
                return true;
            case Mnemonic.Jmp:
                return i.Op0Kind is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64 && CanonicalTarget(ref i, bits);
            case Mnemonic.Call:
                return mem64 && i.Code == Code.Call_rel32_64 && CanonicalTarget(ref i, bits);
            case Mnemonic.Ret:
                return mem64 && i.Code == Code.Retnq;
            case Mnemonic.Push:
                return mem64 && i.Code is Code.Push_r64 or Code.Pushq_imm8 or Code.Pushq_imm32;
            case Mnemonic.Pop:
                return mem64 && i.Code == Code.Pop_r64;
            case Mnemonic.Lea:
                return mem64 && OperandsOk(ref i, bits);
            case Mnemonic.Mov: case Mnemonic.Movzx: case Mnemonic.Movsx: case Mnemonic.Movsxd:
            case Mnemonic.Add: case Mnemonic.Sub: case Mnemonic.Adc: case Mnemonic.Sbb: case Mnemonic.And: case Mnemonic.Or:
            case Mnemonic.Xor: case Mnemonic.Cmp: case Mnemonic.Test: case Mnemonic.Inc: case Mnemonic.Dec: case Mnemonic.Neg:
            case Mnemonic.Not: case Mnemonic.Shl: case Mnemonic.Shr: case Mnemonic.Sar:
                return OperandsOk(ref i, bits);
            case Mnemonic.Imul:
                return i.OpCount >= 2 && OperandsOk(ref i, bits);
            default:
                if (IsCmov(i.Mnemonic) || IsSetcc(i.Mnemonic)) return OperandsOk(ref i, bits);
                if (i.FlowControl == FlowControl.ConditionalBranch && i.Op0Kind is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64
                    && i.ConditionCode != ConditionCode.None && !IsLoopOrJcxz(i.Mnemonic))
                    return CanonicalTarget(ref i, bits);
                return false;
        }
    }

    private static bool IsLoopOrJcxz(Mnemonic m) => m is Mnemonic.Loop or Mnemonic.Loope or Mnemonic.Loopne or Mnemonic.Jcxz or Mnemonic.Jecxz or Mnemonic.Jrcxz;
    private static bool IsCmov(Mnemonic m) => m >= Mnemonic.Cmova && m <= Mnemonic.Cmovs;
    private static bool IsSetcc(Mnemonic m) => m >= Mnemonic.Seta && m <= Mnemonic.Sets;

    // A jump to a non-canonical address faults on the jump: those stay with the interpreter.
    private static bool CanonicalTarget(ref Instruction i, int bits)
    {
        if (bits != 64) return true;
        ulong t = i.NearBranchTarget;
        return (ulong)((long)(t << 16) >> 16) == t;
    }

    // Register operands must be general-purpose registers other than AH/CH/DH/BH (host scratch registers stand in for
    // them); a memory operand only in 64-bit mode (no segment limits; FS/GS bases are added), in a ModRM form.
    private static bool OperandsOk(ref Instruction i, int bits)
    {
        for (int k = 0; k < i.OpCount; k++)
        {
            switch (i.GetOpKind(k))
            {
                case OpKind.Register:
                    if (GuestIndex(i.GetOpRegister(k)) < 0) return false;
                    break;
                case OpKind.Memory:
                    if (bits != 64) return false;
                    if (i.Code is Code.Mov_AL_moffs8 or Code.Mov_AX_moffs16 or Code.Mov_EAX_moffs32 or Code.Mov_RAX_moffs64
                        or Code.Mov_moffs8_AL or Code.Mov_moffs16_AX or Code.Mov_moffs32_EAX or Code.Mov_moffs64_RAX) return false;
                    var b = i.MemoryBase;
                    if (b != Register.None && b != Register.RIP && !(b >= Register.EAX && b <= Register.R15)) return false;
                    var x = i.MemoryIndex;
                    if (x != Register.None && !(x >= Register.EAX && x <= Register.R15)) return false;
                    int size = i.MemorySize.GetSize();
                    if (size is not (1 or 2 or 4 or 8) && i.Mnemonic != Mnemonic.Lea && i.Mnemonic != Mnemonic.Nop) return false;
                    break;
                case OpKind.Immediate8: case OpKind.Immediate16: case OpKind.Immediate32: case OpKind.Immediate64:
                case OpKind.Immediate8to16: case OpKind.Immediate8to32: case OpKind.Immediate8to64: case OpKind.Immediate32to64:
                    break;
                default:
                    return false;
            }
        }
        return true;
    }

    // Register number (0..15) of a guest general-purpose register, or -1 (AH..BH, and anything else).
    private static int GuestIndex(Register r)
    {
        if (r >= Register.RAX && r <= Register.R15) return r - Register.RAX;
        if (r >= Register.EAX && r <= Register.R15D) return r - Register.EAX;
        if (r >= Register.AX && r <= Register.R15W) return r - Register.AX;
        if (r >= Register.AL && r <= Register.BL) return r - Register.AL;
        if (r >= Register.SPL && r <= Register.R15L) return r - Register.SPL + 4;
        return -1;
    }

    // The host register of the same size as guest register r, from the family of host64 (RAX, RCX, RSI, RDI, RDX).
    private static Register Sized(Register guest, Register host64)
    {
        int h = host64 - Register.RAX;
        if (guest >= Register.RAX && guest <= Register.R15) return host64;
        if (guest >= Register.EAX && guest <= Register.R15D) return Register.EAX + h;
        if (guest >= Register.AX && guest <= Register.R15W) return Register.AX + h;
        return h < 4 ? Register.AL + h : Register.SPL + (h - 4);
    }

    private static AssemblerMemoryOperand Gpr(int n) => __qword_ptr[rbx + StateBlock.GprOffset + 8 * n];

    private void SaveFlags(Assembler a)
    {
        a.pushfq();
        a.pop(__qword_ptr[rbx + StateBlock.FlagSaveOffset]);
    }

    // Restores the six status flags from the save slot without POPFQ: OF from ADD AL,7Fh on 0/1, the rest from SAHF.
    private static void RestoreFlags(Assembler a)
    {
        a.mov(al, __byte_ptr[rbx + StateBlock.FlagSaveOffset + 1]);
        a.shr(al, 3);
        a.and(al, 1);
        a.add(al, 0x7f);
        a.mov(ah, __byte_ptr[rbx + StateBlock.FlagSaveOffset]);
        a.sahf();
    }

    // Inline TLB probe for the linear address in RDX; leaves the host address in RDX. The tag compared is the page of the
    // access's last byte, so an access crossing into the next page misses (and the slow path leaves it to the interpreter).
    private void Probe(Assembler a, ref Instruction i, int k, int size, bool write)
    {
        int table = write ? StateBlock.WriteTlbOffset : StateBlock.ReadTlbOffset;
        a.lea(rdi, __qword_ptr[rdx + (size - 1)]);
        a.shr(rdi, 12);
        a.mov(rsi, rdx);
        a.shr(rsi, 12);
        a.and(esi, StateBlock.JitTlbEntries - 1);
        a.shl(esi, 4);
        a.cmp(rdi, __qword_ptr[rbx + rsi + table]);
        var miss = a.CreateLabel();
        var join = a.CreateLabel();
        a.jne(miss);
        a.add(rdx, __qword_ptr[rbx + rsi + (table + 8)]);
        a.Label(ref join);
        var fail = NewExit(a, i.IP, false, k, true, ExitInterpret);
        _misses.Add(new Miss(miss, join, fail, size, write));
        if (_restore[k]) RestoreFlags(a);
    }

    // Linear address of the ModRM memory operand into RDX (64-bit mode: only FS and GS have a base).
    private static void Address(Assembler a, ref Instruction i)
    {
        var b = i.MemoryBase;
        var x = i.MemoryIndex;
        if (b == Register.RIP)
        {
            a.mov(rdx, i.MemoryDisplacement64);
        }
        else if (b == Register.None && x == Register.None)
        {
            a.mov(rdx, i.MemoryDisplacement64);
        }
        else
        {
            bool a32 = (b != Register.None ? b : x) < Register.RAX;
            if (b != Register.None) a.mov(rsi, Gpr(GuestIndex(b)));
            if (x != Register.None) a.mov(rdi, Gpr(GuestIndex(x)));
            var mb = b == Register.None ? Register.None : a32 ? Register.ESI : Register.RSI;
            var mx = x == Register.None ? Register.None : a32 ? Register.EDI : Register.RDI;
            long disp = a32 ? (int)(uint)i.MemoryDisplacement64 : (long)i.MemoryDisplacement64;
            // Iced's displacement size is 8 for a 32-bit displacement under 64-bit addressing (4 is refused: the block failed).
            var m = new MemoryOperand(mb, mx, i.MemoryIndexScale, disp, disp == 0 ? 0 : disp >= -128 && disp <= 127 ? 1 : a32 ? 4 : 8);
            a.AddInstruction(Instruction.Create(a32 ? Code.Lea_r32_m : Code.Lea_r64_m, a32 ? Register.EDX : Register.RDX, m));
        }
        if (i.MemorySegment == Register.FS) a.add(rdx, __qword_ptr[rbx + StateBlock.FsBaseOffset]);
        else if (i.MemorySegment == Register.GS) a.add(rdx, __qword_ptr[rbx + StateBlock.GsBaseOffset]);
    }

    private static void AdjustRsp(Assembler a, int delta)
    {
        a.mov(rcx, Gpr(4));
        a.lea(rcx, __qword_ptr[rcx + delta]);
        a.mov(Gpr(4), rcx);
    }

    private void ProbeStack(Assembler a, ref Instruction i, int k, int delta, bool write)
    {
        SaveFlags(a);
        a.mov(rdx, Gpr(4));
        if (delta != 0) a.lea(rdx, __qword_ptr[rdx + delta]);
        Probe(a, ref i, k, 8, write);
    }

    private void EmitInstruction(Assembler a, ref Instruction i, int k, int bits)
    {
        var m = i.Mnemonic;
        if (m == Mnemonic.Nop) return;
        if (m == Mnemonic.Push)
        {
            ProbeStack(a, ref i, k, -8, write: true);
            if (i.Code == Code.Push_r64) a.mov(rax, Gpr(GuestIndex(i.Op0Register)));
            else a.mov(rax, i.GetImmediate(0));
            a.mov(__qword_ptr[rdx], rax);
            AdjustRsp(a, -8);
            return;
        }
        if (m == Mnemonic.Pop)
        {
            ProbeStack(a, ref i, k, 0, write: false);
            a.mov(rax, __qword_ptr[rdx]);
            AdjustRsp(a, 8);
            a.mov(Gpr(GuestIndex(i.Op0Register)), rax); // POP RSP: the popped value wins, as the SDM says
            return;
        }
        if (m == Mnemonic.Lea)
        {
            EmitLea(a, ref i);
            return;
        }

        var h = i;
        bool writesOp0 = m is not (Mnemonic.Cmp or Mnemonic.Test);
        bool writeOnly = m is Mnemonic.Mov or Mnemonic.Movzx or Mnemonic.Movsx or Mnemonic.Movsxd || IsSetcc(m);
        int memOp = -1;
        for (int op = 0; op < i.OpCount; op++) if (i.GetOpKind(op) == OpKind.Memory) memOp = op;
        if (memOp >= 0)
        {
            // The probe comes first: nothing is loaded or changed until the access is known to succeed.
            SaveFlags(a);
            Address(a, ref i);
            Probe(a, ref i, k, i.MemorySize.GetSize(), write: memOp == 0 && writesOp0);
            h.MemoryBase = Register.RDX;
            h.MemoryIndex = Register.None;
            h.MemoryIndexScale = 1;
            h.MemoryDisplacement64 = 0;
            h.MemoryDisplSize = 0;
            h.SegmentPrefix = Register.None;
        }
        for (int op = 0; op < i.OpCount; op++)
        {
            if (i.GetOpKind(op) != OpKind.Register) continue;
            var g = i.GetOpRegister(op);
            var host = op == 0 ? Register.RAX : Register.RCX;
            // A 32/64-bit destination that is only written needs no load; 8/16-bit ones merge into the old value.
            bool size4or8 = g >= Register.EAX && g <= Register.R15;
            if (!(op == 0 && writeOnly && size4or8)) a.mov(new AssemblerRegister64(host), Gpr(GuestIndex(g)));
            h.SetOpRegister(op, Sized(g, host));
        }
        // Forms valid only outside 64-bit mode get their ModRM twins.
        h.Code = h.Code switch
        {
            Code.Inc_r16 => Code.Inc_rm16, Code.Inc_r32 => Code.Inc_rm32,
            Code.Dec_r16 => Code.Dec_rm16, Code.Dec_r32 => Code.Dec_rm32,
            _ => h.Code,
        };
        if (BreakAddForTests && m == Mnemonic.Add) h.Code = Enum.Parse<Code>(h.Code.ToString().Replace("Add_", "Sub_", StringComparison.Ordinal));
        a.AddInstruction(h);
        if (writesOp0 && i.Op0Kind == OpKind.Register) a.mov(Gpr(GuestIndex(i.Op0Register)), rax);
    }

    // LEA computes an address without touching memory: the same LEA on host copies of the base and index.
    private static void EmitLea(Assembler a, ref Instruction i)
    {
        var d = i.Op0Register;
        int di = GuestIndex(d);
        var b = i.MemoryBase;
        var x = i.MemoryIndex;
        bool size4or8 = d >= Register.EAX && d <= Register.R15;
        if (!size4or8) a.mov(rax, Gpr(di));
        if (b == Register.RIP || (b == Register.None && x == Register.None))
        {
            a.mov(rcx, i.MemoryDisplacement64);
            var hc = Instruction.Create(d >= Register.RAX ? Code.Mov_r64_rm64 : d >= Register.EAX ? Code.Mov_r32_rm32 : Code.Mov_r16_rm16,
                Sized(d, Register.RAX), Sized(d, Register.RCX));
            a.AddInstruction(hc);
        }
        else
        {
            bool a32 = (b != Register.None ? b : x) < Register.RAX;
            if (b != Register.None) a.mov(rsi, Gpr(GuestIndex(b)));
            if (x != Register.None) a.mov(rdi, Gpr(GuestIndex(x)));
            var h = i;
            h.MemoryBase = b == Register.None ? Register.None : a32 ? Register.ESI : Register.RSI;
            h.MemoryIndex = x == Register.None ? Register.None : a32 ? Register.EDI : Register.RDI;
            h.SegmentPrefix = Register.None;
            h.Op0Register = Sized(d, Register.RAX);
            a.AddInstruction(h);
        }
        a.mov(Gpr(di), rax);
    }
}
