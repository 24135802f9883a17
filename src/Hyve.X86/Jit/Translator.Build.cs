// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.X86.Jit;

/// <summary>Block building: decode, choose the translatable prefix, flag liveness, prologue, exits and self-loops.</summary>
public sealed unsafe partial class Translator
{
    private readonly Instruction[] _insns = new Instruction[MaxInstructions];
    private readonly RflagsBits[] _liveOut = new RflagsBits[MaxInstructions];
    private readonly bool[] _restore = new bool[MaxInstructions];

    // An exit stub to emit after the block body: set RIP (or keep the one the code stored), count k instructions, and
    // leave with the status; flags come from the host (Live) or from the probe's save slot.
    private readonly record struct Exit(Label Label, ulong Rip, bool DynamicRip, int Retired, bool FlagsSaved, int Status, bool Chain);
    // A TLB miss stub: call the slow path for the address in RDX; back to Join with the host address in RDX, or exit.
    private readonly record struct Miss(Label Label, Label Join, Label Fail, int Size, bool Write);

    private readonly List<Exit> _exits = [];
    private readonly List<(Label Slot, Label Stop)> _chainSlots = [];
    private ulong _blockRip;
    private bool _chainable;
    private readonly List<Miss> _misses = [];

    private JitBlock? Translate(int slot, ulong gpa, ulong rip, int bits, byte* page)
    {
        var b = _slots[slot] = new JitBlock(); // a fresh record: the old one may still be the backing store's
        b.Count = 0;
        b.Entry = 0;
        var dec = bits == 64 ? _dec64 : bits == 32 ? _dec32 : _dec16;
        int off = (int)(gpa & 0xfff);
        _reader.Ptr = page + off;
        _reader.Pos = 0;
        _reader.Len = 0x1000 - off;
        ulong ipMask = bits == 64 ? ulong.MaxValue : bits == 32 ? 0xffffffff : 0xffff;
        int n = 0, len = 0;
        ulong maxIp = rip;
        while (n < MaxInstructions)
        {
            dec.IP = rip + (ulong)len;
            _reader.Pos = len;
            dec.Decode(out _insns[n]);
            ref var ins = ref _insns[n];
            if (dec.LastError != DecoderError.None || !Translatable(ref ins, bits))
            {
                if (JitStats.On) JitStats.Ended(ins.Code, bits);
                break;
            }
            if (((rip + (ulong)len) & ipMask) != rip + (ulong)len || ins.NextIP > ipMask) break; // IP wrap: interpreter
            len += ins.Length;
            n++;
            maxIp = Math.Max(maxIp, ins.NextIP - 1);
            if (ins.FlowControl != FlowControl.Next)
            {
                if (ins.FlowControl is FlowControl.ConditionalBranch or FlowControl.UnconditionalBranch)
                    maxIp = Math.Max(maxIp, ins.NearBranchTarget);
                break;
            }
        }
        // At least one instruction's bytes are kept even for an untranslatable start, so the negative entry is checked too.
        int keep = n > 0 ? len : Math.Max(1, _insns[0].Length);
        keep = Math.Min(keep, 0x1000 - off);
        new ReadOnlySpan<byte>(page + off, keep).CopyTo(b.Bytes);
        b.Gpa = gpa;
        b.Rip = rip;
        b.Bitness = bits;
        b.ByteLen = keep;
        b.MaxIp = maxIp;
        _all[new BlockKey(gpa, rip, bits)] = b;
        if (n == 0) return b;

        nint entry = Emit(n, rip, bits, page + off, keep, out nint chainEntry);
        if (entry == 0 && _encodeFailed) return b; // left to the interpreter
        if (entry == 0)
        {
            // The cache is full: start again from empty (every block pointer is dropped with it) and retry once.
            FlushAll();
            b = _slots[slot] = new JitBlock();
            new ReadOnlySpan<byte>(page + off, keep).CopyTo(b.Bytes);
            b.Gpa = gpa; b.Rip = rip; b.Bitness = bits; b.ByteLen = keep; b.MaxIp = maxIp;
            _all[new BlockKey(gpa, rip, bits)] = b;
            entry = Emit(n, rip, bits, page + off, keep, out chainEntry);
            if (entry == 0) return b;
        }
        b.Entry = entry;
        b.ChainEntry = chainEntry;
        b.Generation = _cache.Flushes;
        b.Count = n;
        BlocksTranslated++;
        if (_codePages.Add(gpa >> 12) && Cpu is { } cpu) JitTlb.FlushWrites(cpu.Block); // its stores must now miss
        return b;
    }

    // Backward flag liveness: which guest flags must hold a correct value after each instruction. Every exit reads all of
    // them (RFLAGS is materialised there) and so does every instruction with a memory probe (its miss may exit before it).
    private void Liveness(int n)
    {
        RflagsBits live = Status;
        for (int k = n - 1; k >= 0; k--)
        {
            ref var i = ref _insns[k];
            _liveOut[k] = live;
            var reads = Reads(ref i);
            var writes = i.RflagsModified & Status;
            _restore[k] = ((reads | (live & ~writes)) & Status) != 0;
            live = reads | (live & ~writes);
            if (HasProbe(ref i)) live = Status;
        }
    }

    // Flags an instruction needs on entry. Shifts and rotates leave every flag alone when the masked count is zero, so
    // they count as reading all of them.
    private static RflagsBits Reads(ref Instruction i)
    {
        var r = i.RflagsRead & Status;
        switch (i.Mnemonic)
        {
            case Mnemonic.Shl: case Mnemonic.Shr: case Mnemonic.Sar: case Mnemonic.Rol: case Mnemonic.Ror: case Mnemonic.Sal:
                return Status;
        }
        return r;
    }

    private static bool HasProbe(ref Instruction i) => i.Mnemonic switch
    {
        Mnemonic.Lea => false,
        Mnemonic.Push or Mnemonic.Pop or Mnemonic.Call or Mnemonic.Ret => true,
        _ => HasMemoryOperand(ref i),
    };

    private static bool HasMemoryOperand(ref Instruction i)
    {
        for (int k = 0; k < i.OpCount; k++) if (i.GetOpKind(k) == OpKind.Memory) return true;
        return false;
    }

    private bool _encodeFailed;

    private nint Emit(int n, ulong rip, int bits, byte* guest, int byteLen, out nint chainEntry)
    {
        chainEntry = 0;
        _encodeFailed = false;
        Liveness(n);
        var a = new Assembler(64);
        _exits.Clear();
        _misses.Clear();
        _chainSlots.Clear();
        _blockRip = rip;
        // Chaining is for 64-bit code (no CS limit to check on the way) and for exits to the block's own page: the page's
        // translation, rights and the guest bytes' host address are then those the dispatcher checked on entry.
        _chainable = bits == 64 && (s_off & 32) == 0;
        var epilogueLive = a.CreateLabel();
        var epilogueSaved = a.CreateLabel();

        // Prologue (SysV): RDI = state block, RSI = self-loop budget. Six pushes and the return address leave RSP 8 off
        // 16-byte alignment; the SUB fixes it for the slow-path calls.
        a.push(rbx); a.push(rbp); a.push(r12); a.push(r13); a.push(r14); a.push(r15);
        a.sub(rsp, 8);
        a.mov(rbx, rdi);
        a.mov(r12, rsi);
        a.xor(r13d, r13d);
        // Guest status flags into the host's (only the six: TF, IF, DF, AC stay the host's own).
        a.mov(rax, __qword_ptr[rbx + StateBlock.RflagsOffset]);
        a.and(eax, HostStatusMask);
        a.push(rax);
        a.popfq();
        var top = a.CreateLabel();
        a.Label(ref top);

        bool ended = false;
        for (int k = 0; k < n; k++)
        {
            ref var i = ref _insns[k];
            ulong ipMask = bits == 64 ? ulong.MaxValue : bits == 32 ? 0xffffffff : 0xffff;
            ulong next = i.NextIP & ipMask;
            if (i.FlowControl == FlowControl.Next)
            {
                EmitInstruction(a, ref i, k, bits);
                continue;
            }
            ended = true;
            EmitControl(a, ref i, k, rip, next, top, n);
        }
        if (!ended) ExitTo(a, (_insns[n - 1].NextIP) & (bits == 64 ? ulong.MaxValue : bits == 32 ? 0xffffffffUL : 0xffffUL), n, false, ExitNext);

        // Out-of-line miss stubs: call the slow path (caller-saved registers are all scratch here).
        foreach (var m in _misses)
        {
            var l = m.Label;
            a.Label(ref l);
            a.mov(rdi, rbx);
            a.mov(rsi, rdx);
            a.mov(edx, (uint)(m.Size | (m.Write ? 0x100 : 0)));
            a.mov(rax, (ulong)(nint)(delegate* unmanaged<StateBlock*, ulong, uint, byte*>)&SlowAccess);
            a.call(rax);
            a.test(rax, rax);
            a.jz(m.Fail);
            a.mov(rdx, rax);
            a.jmp(m.Join);
        }
        // Exit stubs: RIP, retired count and status; then the common materialisation of RFLAGS.
        foreach (var x in _exits)
        {
            var l = x.Label;
            a.Label(ref l);
            if (x.Chain)
            {
                EmitChainExit(a, x, epilogueLive);
                continue;
            }
            a.mov(__qword_ptr[rbx + StateBlock.ChainSlotOffset], 0);
            if (!x.DynamicRip)
            {
                a.mov(rax, x.Rip);
                a.mov(__qword_ptr[rbx + StateBlock.RipOffset], rax);
            }
            a.lea(rax, __qword_ptr[r13 + x.Retired]);
            a.mov(__qword_ptr[rbx + StateBlock.RetiredOffset], rax);
            a.mov(ecx, (uint)x.Status);
            a.jmp(x.FlagsSaved ? epilogueSaved : epilogueLive);
        }
        a.Label(ref epilogueLive);
        a.pushfq();
        a.pop(__qword_ptr[rbx + StateBlock.FlagSaveOffset]);
        a.Label(ref epilogueSaved);
        a.mov(rax, __qword_ptr[rbx + StateBlock.FlagSaveOffset]);
        a.and(eax, HostStatusMask);
        a.mov(rdx, __qword_ptr[rbx + StateBlock.RflagsOffset]);
        a.and(rdx, ~HostStatusMask);
        a.or(rdx, rax);
        a.mov(__qword_ptr[rbx + StateBlock.RflagsOffset], rdx);
        a.mov(eax, ecx);
        a.add(rsp, 8);
        a.pop(r15); a.pop(r14); a.pop(r13); a.pop(r12); a.pop(rbp); a.pop(rbx);
        a.ret();

        var guard = a.CreateLabel();
        if (_chainable) EmitGuard(a, ref guard, top, epilogueLive, rip, guest, byteLen);
        // The chaining slots: data the exit stubs jump through, first pointing at their own stop path.
        for (int k = 0; k < _chainSlots.Count; k++)
        {
            var (slot, stop) = _chainSlots[k];
            a.Label(ref slot);
            a.dq(0UL);
            _chainSlots[k] = (slot, stop); // the copy that knows where it was placed
        }

        _writer.Len = 0;
        ulong at = _cache.NextAddress;
        try
        {
            var result = a.Assemble(_writer, at, BlockEncoderOptions.ReturnNewInstructionOffsets);
            foreach (var (slot, stop) in _chainSlots)
            {
                var sl = slot;
                var st = stop;
                int pos = (int)(result.GetLabelRIP(in sl) - at);
                BitConverter.TryWriteBytes(new Span<byte>(_writer.Buf, pos, 8), result.GetLabelRIP(in st));
            }
            if (_chainable) chainEntry = (nint)result.GetLabelRIP(in guard);
        }
        catch (Exception e)
        {
            if (JitStats.On) JitStats.EncodeFailed(_insns[0].Code, bits, e.Message);
            // A form the host encoder refuses (the translatable set should exclude it): the interpreter runs this block.
            _encodeFailed = true;
            return 0;
        }
        return _cache.Commit(new ReadOnlySpan<byte>(_writer.Buf, 0, _writer.Len));
    }

    private Label NewExit(Assembler a, ulong rip, bool dynamicRip, int retired, bool flagsSaved, int status)
    {
        var l = a.CreateLabel();
        bool chain = _chainable && !dynamicRip && !flagsSaved && status == ExitNext && ((rip ^ _blockRip) >> 12) == 0;
        _exits.Add(new Exit(l, rip, dynamicRip, retired, flagsSaved, status, chain));
        return l;
    }

    // An exit to a known RIP in the block's own page: count the instructions, publish the slot for the dispatcher to
    // link, and while the budget (R12) lasts jump through the slot: to the next block's guard once linked, else to the
    // plain exit below it. Nothing here changes the live guest flags (LEA, MOV, JRCXZ).
    private void EmitChainExit(Assembler a, Exit x, Label epilogueLive)
    {
        var slot = a.CreateLabel();
        var stop = a.CreateLabel();
        a.lea(r13, __qword_ptr[r13 + x.Retired]);
        a.lea(rax, __qword_ptr[slot]);
        a.mov(__qword_ptr[rbx + StateBlock.ChainSlotOffset], rax);
        a.mov(rcx, r12);
        a.jrcxz(stop);
        a.lea(r12, __qword_ptr[r12 - 1]);
        a.jmp(__qword_ptr[slot]);
        a.Label(ref stop);
        a.mov(rax, x.Rip);
        a.mov(__qword_ptr[rbx + StateBlock.RipOffset], rax);
        a.mov(__qword_ptr[rbx + StateBlock.RetiredOffset], r13);
        a.mov(ecx, (uint)ExitNext);
        a.jmp(epilogueLive);
        _chainSlots.Add((slot, stop));
    }

    // The chained entry: the guest bytes the block was made from must still be there (as the dispatcher's Find checks),
    // compared through the host address of the page, which the chaining block shares. The compares need the flags, so
    // the live guest flags are kept in R9 meanwhile (LAHF and SETO; restored with ADD AL,7F for OF and SAHF). On a
    // difference the block leaves with RIP at its start and the slot it was entered through still published, so the
    // dispatcher translates the new code and points that slot at it.
    private void EmitGuard(Assembler a, ref Label guard, Label top, Label epilogueLive, ulong rip, byte* guest, int byteLen)
    {
        var fail = a.CreateLabel();
        a.Label(ref guard);
        if (BreakGuardForTests) byteLen = 0;
        a.lahf();
        a.seto(al);
        a.mov(r9d, eax);
        a.mov(rsi, (ulong)guest);
        if (byteLen >= 8)
        {
            for (int o = 0; o < byteLen; o += 8)
            {
                int at = Math.Min(o, byteLen - 8); // the last compare overlaps the one before rather than reading past the block
                a.mov(rax, *(ulong*)(guest + at));
                a.cmp(__qword_ptr[rsi + at], rax);
                a.jne(fail);
            }
        }
        else
        {
            int o = 0;
            if (byteLen - o >= 4) { a.cmp(__dword_ptr[rsi + o], *(int*)(guest + o)); a.jne(fail); o += 4; }
            if (byteLen - o >= 2) { a.cmp(__word_ptr[rsi + o], *(short*)(guest + o)); a.jne(fail); o += 2; }
            if (byteLen - o >= 1) { a.cmp(__byte_ptr[rsi + o], guest[o]); a.jne(fail); }
        }
        a.mov(eax, r9d);
        a.add(al, 0x7f);
        a.sahf();
        a.jmp(top);
        a.Label(ref fail);
        a.mov(eax, r9d);
        a.add(al, 0x7f);
        a.sahf();
        a.mov(rax, rip);
        a.mov(__qword_ptr[rbx + StateBlock.RipOffset], rax);
        a.mov(__qword_ptr[rbx + StateBlock.RetiredOffset], r13);
        a.mov(ecx, (uint)ExitNext);
        a.jmp(epilogueLive);
    }

    private void ExitTo(Assembler a, ulong rip, int retired, bool flagsSaved, int status) => a.jmp(NewExit(a, rip, false, retired, flagsSaved, status));

    // Jcc, JMP rel, CALL rel, RET: the block's last instruction. A branch back to the block's own start loops in host
    // code while the budget lasts (R12), counting retired instructions in R13, with no flag-changing instruction on the way.
    private void EmitControl(Assembler a, ref Instruction i, int k, ulong blockRip, ulong next, Label top, int n)
    {
        if (i.Mnemonic is Mnemonic.Call or Mnemonic.Jmp && i.OpCount == 1 && i.Op0Kind is OpKind.Register or OpKind.Memory)
        {
            EmitIndirect(a, ref i, k, next); // CALL/JMP r/m64 (Translator.Families.cs)
            return;
        }
        switch (i.Mnemonic)
        {
            case Mnemonic.Jmp:
                Branch(a, i.NearBranchTarget, k, blockRip, top, n);
                return;
            case Mnemonic.Call:
            {
                // Push the return address, then go to the target.
                ProbeStack(a, ref i, k, -8, write: true);
                a.mov(rax, next);
                a.mov(__qword_ptr[rdx], rax);
                AdjustRsp(a, -8);
                ExitTo(a, i.NearBranchTarget, k + 1, false, ExitNext);
                return;
            }
            case Mnemonic.Ret:
            {
                ProbeStack(a, ref i, k, 0, write: false);
                a.mov(rax, __qword_ptr[rdx]);
                // A non-canonical return address faults on the RET itself: let the interpreter raise it.
                a.mov(rcx, rax);
                a.shl(rcx, 16);
                a.sar(rcx, 16);
                a.cmp(rcx, rax);
                a.jne(NewExit(a, i.IP, false, k, true, ExitInterpret));
                a.mov(__qword_ptr[rbx + StateBlock.RipOffset], rax);
                AdjustRsp(a, 8);
                a.jmp(NewExit(a, 0, true, k + 1, true, ExitNext));
                return;
            }
            default: // Jcc
            {
                var taken = a.CreateLabel();
                Jcc(a, i.ConditionCode, taken);
                ExitTo(a, next, k + 1, false, ExitNext);
                a.Label(ref taken);
                Branch(a, i.NearBranchTarget, k, blockRip, top, n);
                return;
            }
        }
    }

    private void Branch(Assembler a, ulong target, int k, ulong blockRip, Label top, int n)
    {
        if (target != blockRip || (s_off & 8) != 0)
        {
            ExitTo(a, target, k + 1, false, ExitNext);
            return;
        }
        // Self-loop: one more iteration while R12 > 0 (JRCXZ tests RCX without touching the flags).
        a.lea(r13, __qword_ptr[r13 + n]);
        a.mov(rcx, r12);
        a.lea(r12, __qword_ptr[r12 - 1]);
        var done = a.CreateLabel();
        a.jrcxz(done);
        a.jmp(top);
        a.Label(ref done);
        ExitTo(a, target, 0, false, ExitNext);
    }

    private static void Jcc(Assembler a, ConditionCode cc, Label l)
    {
        switch (cc)
        {
            case ConditionCode.o: a.jo(l); break;
            case ConditionCode.no: a.jno(l); break;
            case ConditionCode.b: a.jb(l); break;
            case ConditionCode.ae: a.jae(l); break;
            case ConditionCode.e: a.je(l); break;
            case ConditionCode.ne: a.jne(l); break;
            case ConditionCode.be: a.jbe(l); break;
            case ConditionCode.a: a.ja(l); break;
            case ConditionCode.s: a.js(l); break;
            case ConditionCode.ns: a.jns(l); break;
            case ConditionCode.p: a.jp(l); break;
            case ConditionCode.np: a.jnp(l); break;
            case ConditionCode.l: a.jl(l); break;
            case ConditionCode.ge: a.jge(l); break;
            case ConditionCode.le: a.jle(l); break;
            default: a.jg(l); break;
        }
    }
}
