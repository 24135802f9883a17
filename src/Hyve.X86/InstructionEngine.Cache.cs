// SPDX-License-Identifier: BSD-2-Clause
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Iced.Intel;

namespace Hyve.X86;

/// <summary>
/// The software CPU's fast path: a cache of decoded basic blocks, keyed by guest-physical address, RIP and code size,
/// so a hot loop runs Iced's decoder once; instruction fetch translates the code page once per block through the
/// <see cref="Tlb"/>; and specialised handlers for the commonest register forms.
/// </summary>
/// <remarks>
/// Correctness under self-modifying code: a block keeps a copy of the bytes it was decoded from and is reused only while
/// guest memory still holds those bytes (compared on every entry to the block), so a write by anyone (this vCPU, another
/// vCPU, a device's DMA, the loader or a debugger) is seen the next time the block is entered. Writes by this engine into
/// the page of the block being executed (<see cref="LinearMemory.WatchPage"/>) also end the block after the writing
/// instruction, so code patched just ahead of itself in the same block runs patched (SDM Vol. 3 11.6). Another vCPU's
/// modification is seen at the next block entry, which is at the latest the next branch: earlier than the serializing
/// instruction SDM Vol. 3 8.1.3 asks cross-modifying code to execute.
/// Blocks never cross a 4 KiB page: an instruction that straddles one runs through the uncached path. The key's RIP fixes
/// every IP-relative operand Iced resolved; the code size (16/32/64) fixes the decoding; the CS limit is checked against
/// the block's extent on entry; paging and CS base are resolved to the guest-physical key on entry through the TLB.
/// </remarks>
public sealed unsafe partial class InstructionEngine
{
    private const int MaxBlockInstructions = 32;
    private const int BlockSlots = 2048;

    private sealed class Block
    {
        public ulong Gpa, Rip;
        public int Bitness, Count, ByteLen;
        public bool EndsSystem; // the last instruction may change what the caller must look at (flags, mode, CS, devices)
        public readonly BlockOp[] Ops = new BlockOp[MaxBlockInstructions];
        public readonly byte[] Bytes = new byte[MaxBlockInstructions * 15];
    }

    private struct BlockOp
    {
        public Instruction Insn;
        public delegate*<InstructionEngine, ref Instruction, Exec> Handler;
        public ulong Next; // RIP after the instruction, reduced to the code size
        public bool Translatable; // the translator could start a block here (see RunBlocks)
    }

    private readonly Block?[] _blocks = new Block?[BlockSlots];
    private PageReader? _pageReader;
    private Decoder? _pdec16, _pdec32, _pdec64;

    private sealed class PageReader : CodeReader
    {
        public byte* Ptr;
        public int Pos, Len;
        public override int ReadByte() => Pos < Len ? Ptr[Pos++] : -1;
    }

    /// <summary>Blocks decoded so far (for tests and statistics).</summary>
    public long BlocksDecoded { get; private set; }

    /// <summary>
    /// Runs up to <paramref name="budget"/> instructions from CS:RIP through the decoded-block cache and returns after the
    /// first one that does not complete normally (its result, as <see cref="Step(CpuState, IGuestPorts?)"/> gives it), or
    /// early with Ok after an instruction the caller may need to react to: IRET, one that sets an interrupt shadow or
    /// raises RFLAGS.IF, a system instruction (I/O, control registers, MSRs...). With an interrupt shadow pending, or the
    /// guest's debug state active (RFLAGS.TF or RF, a DR7 enable), it runs a single instruction with the guest's debug
    /// checks (<see cref="StepWithDebug"/>): a debug exception comes back as <see cref="StepStatus.Exception"/>. Needs a <see cref="Tlb"/> over <see cref="IGuestHostMemory"/>; without
    /// one it steps instruction by instruction.
    /// </summary>
    public StepResult Run(CpuState cpu, IGuestPorts? ports, int budget, out int executed)
    {
        executed = 0;
        var tlb = _mem.Walker.Tlb;
        if (tlb is null || cpu.InterruptShadow != 0 || GuestDebugActive(cpu) || _heldDebugTrap != 0) return StepOne(cpu, ports, ref executed);
        // Code size, CS and CPL stay fixed for the whole call: every instruction that could change them ends it.
        if (!Segmentation.Linearize(cpu, Seg.Cs, cpu.Rip, 1, PageAccess.Execute, out _).IsOk) return StepOne(cpu, ports, ref executed);
        _cpu = cpu;
        _ports = ports;
        int bits = cpu.CodeBitness;
        _bitness = bits;
        _lastRead = _lastWrite = default;
        _lastPages = bits == 64 && _mem.Observer is null;
        try
        {
            return RunBlocks(cpu, ports, budget, ref executed, tlb, bits);
        }
        finally
        {
            _lastPages = false;
        }
    }

    private StepResult RunBlocks(CpuState cpu, IGuestPorts? ports, int budget, ref int executed, Tlb tlb, int bits)
    {
        var csd = cpu.Segs[(int)Seg.Cs].Descriptor;
        ulong csBase = bits == 64 ? 0 : csd.Base;
        ulong limit = bits == 64 ? ulong.MaxValue : csd.Limit;
        ulong codePage = ulong.MaxValue, gpaPage = 0, epoch = 0;
        byte* pageHost = null;
        var mem = _mem;
        var result = default(StepResult);
        // Translated code runs where nothing watches operand accesses (a debugger's data breakpoints) and no access
        // needs an alignment check (CR0.AM, RFLAGS.AC at CPL 3).
        var jit = Jit;
        if (jit is not null && (_mem.Observer is not null
            || ((cpu.Cr0 & CpuState.Cr0Am) != 0 && (cpu.Rflags & CpuState.FlagAc) != 0 && cpu.Cpl == 3))) jit = null;
        bool skipJit = false;
        if (jit is not null)
        {
            PrepareTranslated(cpu, jit, tlb);
            jit.DropExit(); // a slot noted in an earlier call must not be linked to wherever an interrupt led since
        }
        while (executed < budget)
        {
            ulong rip = cpu.Rip;
            ulong la;
            if (bits == 64)
            {
                la = rip;
                if (!Segmentation.IsCanonical(cpu, la)) return StepOne(cpu, ports, ref executed);
            }
            else
            {
                if (rip > limit) return StepOne(cpu, ports, ref executed);
                la = (csBase + rip) & 0xffffffff;
            }
            if ((la & ~0xffful) != codePage || tlb.Epoch != epoch)
            {
                if (!tlb.Translate(cpu, la, PageAccess.Execute, out ulong g, out byte* h, out _).IsOk || h == null)
                    return StepOne(cpu, ports, ref executed);
                codePage = la & ~0xffful;
                gpaPage = g & ~0xffful;
                pageHost = h;
                epoch = tlb.Epoch;
            }
            ulong gpa = gpaPage | (la & 0xfff);
            if (jit is not null)
            {
                if (skipJit) skipJit = false;
                else
                {
                    var jb = jit.Find(gpa, rip, bits, pageHost);
                    if (jb is not null && jb.Count > 0 && (bits == 64 || jb.MaxIp <= limit))
                    {
                        jit.LinkNoted(jb);
                        if (RunTranslated(cpu, jit, jb, budget - executed, tlb, ref executed, ports)) skipJit = true;
                        result = new StepResult(StepStatus.Ok, default, 0, Code.INVALID);
                        continue;
                    }
                }
            }
            jit?.DropExit();
            var b = FindBlock(gpa, rip, bits, pageHost);
            if (b is null || rip + (ulong)b.ByteLen - 1 > limit) return StepOne(cpu, ports, ref executed);

            if (!tlb.MapUnchanged) _lastRead = _lastWrite = default; // a BAR moved or memory was remapped: translate again
            mem.WatchPage = gpaPage;
            mem.WatchHit = false;
            int n = b.Count;
            var ops = b.Ops;
            Code code = Code.INVALID;
            bool stop = false;
            bool early = false;
            for (int k = 0; k < ops.Length && k < n; k++)
            {
                ref var op = ref ops[k];
                // With a translator, the interpreter runs only what it cannot translate: the first instruction here (the
                // translator declined it, or stopped before it), then up to the next one it can start a block at.
                if (jit is not null && k > 0 && op.Translatable) { early = true; break; }
                _repDone = 0;
                if (Hyve.X86.Jit.JitStats.On && jit is not null) Hyve.X86.Jit.JitStats.Interpreted(op.Insn.Code, bits);
                var x = op.Handler(this, ref op.Insn);
                if (x == Exec.Next)
                {
                    cpu.Rip = op.Next;
                    executed++;
                    if (mem.WatchHit) { code = op.Insn.Code; stop = true; break; }
                    continue;
                }
                code = op.Insn.Code;
                switch (x)
                {
                    case Exec.Branch:
                        executed++;
                        break;
                    case Exec.Restart:
                        // A REP instruction stopped part-way (MaxRepIterations): let the caller look for interrupts.
                        executed++;
                        stop = true;
                        break;
                    case Exec.Halt:
                        cpu.Rip = op.Next;
                        executed++;
                        mem.WatchPage = ulong.MaxValue;
                        return new StepResult(StepStatus.Halt, default, 0, code);
                    case Exec.Unsupported:
                        mem.WatchPage = ulong.MaxValue;
                        return new StepResult(StepStatus.Unsupported, PendingException.Ud, 0, code);
                    default:
                        mem.WatchPage = ulong.MaxValue;
                        return FromAccess(_fault, code);
                }
                break;
            }
            mem.WatchPage = ulong.MaxValue;
            if (code == Code.INVALID) code = ops[n - 1].Insn.Code;
            result = new StepResult(StepStatus.Ok, default, 0, code);
            if (stop || (b.EndsSystem && !early)) return result;
        }
        return result;
    }

    private StepResult StepOne(CpuState cpu, IGuestPorts? ports, ref int executed)
    {
        _lastPages = false; // the uncached path decides everything itself
        var r = GuestDebugActive(cpu) || _heldDebugTrap != 0 ? StepWithDebug(cpu, ports) : Step(cpu, ports);
        if (Hyve.X86.Jit.JitStats.On && _jit is not null) Hyve.X86.Jit.JitStats.Interpreted(r.Code, cpu.CodeBitness, single: true);
        if (r.Status is StepStatus.Ok or StepStatus.Halt) executed++;
        return r;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int BlockSlot(ulong gpa, ulong rip) => (int)(((gpa ^ (rip << 7)) * 0x9E3779B97F4A7C15ul) >> (64 - 11));

    private Block? FindBlock(ulong gpa, ulong rip, int bits, byte* page)
    {
        int slot = BlockSlot(gpa, rip);
        var b = _blocks[slot];
        if (b is not null && b.Gpa == gpa && b.Rip == rip && b.Bitness == bits && b.Count > 0
            && new ReadOnlySpan<byte>(page + (gpa & 0xfff), b.ByteLen).SequenceEqual(new ReadOnlySpan<byte>(b.Bytes, 0, b.ByteLen)))
            return b;
        return Build(slot, gpa, rip, bits, page);
    }

    // Decodes from RIP to the end of the basic block: a control transfer, an instruction after which the caller or the
    // block's assumptions may change (system instructions, segment loads, flag-register writes), the page end, the CS limit,
    // the IP wrap, or an instruction the engine does not implement (left for the uncached path to report).
    private Block? Build(int slot, ulong gpa, ulong rip, int bits, byte* page)
    {
        _pageReader ??= new PageReader();
        var rd = _pageReader;
        _pdec16 ??= Decoder.Create(16, rd, 0, DecoderOptions.None);
        _pdec32 ??= Decoder.Create(32, rd, 0, DecoderOptions.None);
        _pdec64 ??= Decoder.Create(64, rd, 0, DecoderOptions.None);
        var dec = bits == 64 ? _pdec64 : bits == 32 ? _pdec32 : _pdec16;
        int off = (int)(gpa & 0xfff);
        rd.Ptr = page + off;
        rd.Pos = 0;
        rd.Len = 0x1000 - off;
        ulong limit = bits == 64 ? ulong.MaxValue : _cpu.Segs[(int)Seg.Cs].Descriptor.Limit;
        ulong ipEnd = bits == 64 ? ulong.MaxValue : bits == 32 ? 1ul << 32 : 1ul << 16;
        var b = _blocks[slot] ??= new Block();
        b.Count = 0;
        int count = 0, len = 0;
        bool system = false;
        while (count < MaxBlockInstructions)
        {
            ulong ip = rip + (ulong)len;
            dec.IP = ip;
            rd.Pos = len;
            ref var op = ref b.Ops[count];
            dec.Decode(out op.Insn);
            ref var ins = ref op.Insn;
            if (dec.LastError != DecoderError.None) break;
            int il = ins.Length;
            if (bits != 64 && (ip + (ulong)il - 1 > limit || ip + (ulong)il > ipEnd)) break;
            var h = _handlers[(int)ins.Code];
            if (h == null) break;
            var fast = FastHandler(ref ins);
            op.Handler = fast != null ? fast : h;
            op.Translatable = Hyve.X86.Jit.Translator.CanTranslate(ref ins, bits);
            ulong nx = ins.NextIP;
            op.Next = bits == 64 ? nx : bits == 32 ? (uint)nx : (ushort)nx;
            len += il;
            count++;
            if (EndsBlock(ref ins)) { system = true; break; }
            if (ins.FlowControl != FlowControl.Next) break;
        }
        if (count == 0) return null;
        new ReadOnlySpan<byte>(page + off, len).CopyTo(b.Bytes);
        b.Gpa = gpa;
        b.Rip = rip;
        b.Bitness = bits;
        b.ByteLen = len;
        b.Count = count;
        b.EndsSystem = system;
        BlocksDecoded++;
        return b;
    }

    // Instructions after which the next one must not come from the same block without the caller looking: they may change
    // the code size, paging, the interrupt flag or shadow, or talk to devices.
    private static bool EndsBlock(ref Instruction i)
    {
        if (i.IsPrivileged) return true; // CR/DR/MSR/descriptor-table/INVLPG/HLT/CLI/STI/IN/OUT and friends
        switch (i.FlowControl)
        {
            case FlowControl.Next: case FlowControl.ConditionalBranch: case FlowControl.UnconditionalBranch:
            case FlowControl.IndirectBranch: case FlowControl.Call: case FlowControl.IndirectCall: case FlowControl.Return:
                break;
            default:
                return true; // INT n, INTO, UD, SYSCALL/SYSRET and other mode-changing transfers
        }
        if (i.IsJmpFar || i.IsJmpFarIndirect || i.IsCallFar || i.IsCallFarIndirect) return true; // CS (and maybe mode) change
        switch (i.Mnemonic)
        {
            case Mnemonic.Retf: case Mnemonic.Iret: case Mnemonic.Iretd: case Mnemonic.Iretq: case Mnemonic.Sysret: case Mnemonic.Sysexit: case Mnemonic.Sysenter: case Mnemonic.Syscall:
            case Mnemonic.Popf: case Mnemonic.Popfd: case Mnemonic.Popfq: case Mnemonic.Lds: case Mnemonic.Les: case Mnemonic.Lfs: case Mnemonic.Lgs: case Mnemonic.Lss:
            case Mnemonic.In: case Mnemonic.Out: case Mnemonic.Insb: case Mnemonic.Insw: case Mnemonic.Insd: case Mnemonic.Outsb: case Mnemonic.Outsw: case Mnemonic.Outsd: case Mnemonic.Wrpkru: case Mnemonic.Xsetbv:
            case Mnemonic.Cpuid: case Mnemonic.Stac: case Mnemonic.Clac: case Mnemonic.Hlt: case Mnemonic.Sahf:
                return true;
            case Mnemonic.Mov: case Mnemonic.Pop:
                return i.Op0Kind == OpKind.Register && i.Op0Register.IsSegmentRegister();
            default:
                return false;
        }
    }

    // ---- INVLPG ------------------------------------------------------------------------------------------

    /// <summary>INVLPG m: drops the TLB entries of the page holding the operand's linear address; never faults on it.</summary>
    private static Exec Invlpg(InstructionEngine e, ref Instruction i)
    {
        if (!e.Cpl0()) return Exec.Fault;
        var c = e._cpu;
        ulong ea = e.EffectiveAddress(ref i, out _);
        var seg = SegOf(i.MemorySegment);
        ulong la;
        if (e._bitness == 64) la = seg is Seg.Fs or Seg.Gs ? c.Segs[(int)seg].Descriptor.Base + ea : ea;
        else la = (c.Segs[(int)seg].Descriptor.Base + ea) & 0xffffffff;
        e._mem.Walker.Tlb?.InvalidatePage(la);
        return Exec.Next;
    }

    // ---- specialised handlers ------------------------------------------------------------------------------

    // Register and immediate forms of the commonest integer instructions, for 32- and 64-bit operands: same results and
    // flags as the generic handlers (SDM Vol. 2), without their operand-kind dispatch.
    private static delegate*<InstructionEngine, ref Instruction, Exec> FastHandler(ref Instruction i)
    {
        if (i.HasLockPrefix || i.OpCount == 0) return null;
        if (i.Op0Kind == OpKind.Memory) return FastMemoryDestination(ref i);
        if (i.Op0Kind != OpKind.Register) return null;
        var r0 = i.Op0Register;
        bool r32 = r0 >= Register.EAX && r0 <= Register.R15D, r64 = r0 >= Register.RAX && r0 <= Register.R15;
        if (!r32 && !r64) return null;
        if (i.OpCount == 1)
        {
            return i.Mnemonic switch
            {
                Mnemonic.Inc => r32 ? &Inc32 : &Inc64,
                Mnemonic.Dec => r32 ? &Dec32 : &Dec64,
                _ => null,
            };
        }
        if (i.OpCount != 2) return null;
        var k1 = i.Op1Kind;
        bool reg = k1 == OpKind.Register && (r32 ? i.Op1Register >= Register.EAX && i.Op1Register <= Register.R15D : i.Op1Register >= Register.RAX && i.Op1Register <= Register.R15);
        bool imm = k1 is OpKind.Immediate8to32 or OpKind.Immediate32 or OpKind.Immediate8to64 or OpKind.Immediate32to64 || (k1 == OpKind.Immediate64 && i.Mnemonic == Mnemonic.Mov);
        if (k1 == OpKind.Memory && MemorySizeBytes(i.MemorySize) == (r32 ? 4 : 8))
        {
            return i.Mnemonic switch
            {
                Mnemonic.Mov => r32 ? &MovLoad32 : &MovLoad64,
                Mnemonic.Add => r32 ? &AluLoad32<AddOp> : &AluLoad64<AddOp>,
                Mnemonic.Sub => r32 ? &AluLoad32<SubOp> : &AluLoad64<SubOp>,
                Mnemonic.Cmp => r32 ? &AluLoad32<CmpOp> : &AluLoad64<CmpOp>,
                Mnemonic.And => r32 ? &AluLoad32<AndOp> : &AluLoad64<AndOp>,
                Mnemonic.Or => r32 ? &AluLoad32<OrOp> : &AluLoad64<OrOp>,
                Mnemonic.Xor => r32 ? &AluLoad32<XorOp> : &AluLoad64<XorOp>,
                _ => null,
            };
        }
        if (!reg && !imm) return null;
        switch (i.Mnemonic)
        {
            case Mnemonic.Mov: return r32 ? (reg ? &Mov32<Rr> : &Mov32<Ri>) : (reg ? &Mov64<Rr> : &Mov64<Ri>);
            case Mnemonic.Add: return Alu<AddOp>(r32, reg);
            case Mnemonic.Sub: return Alu<SubOp>(r32, reg);
            case Mnemonic.Cmp: return Alu<CmpOp>(r32, reg);
            case Mnemonic.And: return Alu<AndOp>(r32, reg);
            case Mnemonic.Or: return Alu<OrOp>(r32, reg);
            case Mnemonic.Xor: return Alu<XorOp>(r32, reg);
            case Mnemonic.Test: return Alu<TestOp>(r32, reg);
            default: return null;
        }
    }

    // MOV and the ALU operations with a 32- or 64-bit memory destination and a register or immediate source.
    private static delegate*<InstructionEngine, ref Instruction, Exec> FastMemoryDestination(ref Instruction i)
    {
        if (i.OpCount != 2) return null;
        int size = MemorySizeBytes(i.MemorySize);
        if (size is not (4 or 8)) return null;
        bool q = size == 8;
        var k1 = i.Op1Kind;
        bool reg = k1 == OpKind.Register && (q ? i.Op1Register >= Register.RAX && i.Op1Register <= Register.R15 : i.Op1Register >= Register.EAX && i.Op1Register <= Register.R15D);
        bool imm = q ? k1 is OpKind.Immediate8to64 or OpKind.Immediate32to64 : k1 is OpKind.Immediate8to32 or OpKind.Immediate32;
        if (!reg && !imm) return null;
        switch (i.Mnemonic)
        {
            case Mnemonic.Mov: return q ? (reg ? &MovStore64<Rr> : &MovStore64<Ri>) : (reg ? &MovStore32<Rr> : &MovStore32<Ri>);
            case Mnemonic.Add: return AluStore<AddOp>(q, reg);
            case Mnemonic.Sub: return AluStore<SubOp>(q, reg);
            case Mnemonic.Cmp: return AluStore<CmpOp>(q, reg);
            case Mnemonic.And: return AluStore<AndOp>(q, reg);
            case Mnemonic.Or: return AluStore<OrOp>(q, reg);
            case Mnemonic.Xor: return AluStore<XorOp>(q, reg);
            case Mnemonic.Test: return AluStore<TestOp>(q, reg);
            default: return null;
        }
    }

    private static delegate*<InstructionEngine, ref Instruction, Exec> AluStore<TOp>(bool q, bool reg) where TOp : struct, IAluOp
        => q ? (reg ? &AluStore64<TOp, Rr> : &AluStore64<TOp, Ri>) : (reg ? &AluStore32<TOp, Rr> : &AluStore32<TOp, Ri>);

    private static delegate*<InstructionEngine, ref Instruction, Exec> Alu<TOp>(bool r32, bool reg) where TOp : struct, IAluOp
        => r32 ? (reg ? &Alu32<TOp, Rr> : &Alu32<TOp, Ri>) : (reg ? &Alu64<TOp, Rr> : &Alu64<TOp, Ri>);

    private interface ISrc { static abstract ulong Get(CpuState c, ref Instruction i, int size); }
    private struct Rr : ISrc
    {
        public static ulong Get(CpuState c, ref Instruction i, int size)
            => Gpr(c, size == 4 ? i.Op1Register - Register.EAX : i.Op1Register - Register.RAX);
    }
    private struct Ri : ISrc
    {
        public static ulong Get(CpuState c, ref Instruction i, int size) => size == 4
            ? (i.Op1Kind == OpKind.Immediate8to32 ? (uint)(int)(sbyte)i.Immediate8 : i.Immediate32)
            : i.Op1Kind switch
        {
            OpKind.Immediate8to64 => (ulong)(long)(sbyte)i.Immediate8,
            OpKind.Immediate32to64 => (ulong)(long)(int)i.Immediate32,
            _ => i.Immediate64,
        };
    }

    // The block builder only picks these handlers for RAX..R15 / EAX..R15D operands, so the index is 0..15.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref ulong Gpr(CpuState c, int n) => ref c.Block->Gpr[n];

    private interface IAluOp
    {
        static abstract bool Writes { get; }
        static abstract ulong Do(ulong a, ulong b, int bits, out ulong flags);
    }

    // PF for each value of a result's low byte (set when it has an even number of ones).
    private static readonly byte[] s_parity = BuildParity();

    private static byte[] BuildParity()
    {
        var t = new byte[256];
        for (int v = 0; v < 256; v++) t[v] = (BitOperations.PopCount((uint)v) & 1) == 0 ? (byte)PF : (byte)0;
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong FastSzp(ulong r, int bits)
        => (r == 0 ? ZF : 0) | (((r >> (bits - 1)) & 1) * SF) | s_parity[(byte)r];

    private struct AddOp : IAluOp
    {
        public static bool Writes => true;
        public static ulong Do(ulong a, ulong b, int bits, out ulong f)
        {
            ulong m = bits == 64 ? ulong.MaxValue : 0xffffffff;
            ulong r = (a + b) & m;
            f = FastSzp(r, bits) | (r < a ? CF : 0) | ((((a ^ r) & (b ^ r)) >> (bits - 1)) & 1) * OF | ((a ^ b ^ r) & AF);
            return r;
        }
    }

    private struct SubOp : IAluOp
    {
        public static bool Writes => true;
        public static ulong Do(ulong a, ulong b, int bits, out ulong f)
        {
            ulong m = bits == 64 ? ulong.MaxValue : 0xffffffff;
            ulong r = (a - b) & m;
            f = FastSzp(r, bits) | (a < b ? CF : 0) | ((((a ^ b) & (a ^ r)) >> (bits - 1)) & 1) * OF | ((a ^ b ^ r) & AF);
            return r;
        }
    }

    private struct CmpOp : IAluOp
    {
        public static bool Writes => false;
        public static ulong Do(ulong a, ulong b, int bits, out ulong f) => SubOp.Do(a, b, bits, out f);
    }

    private struct AndOp : IAluOp
    {
        public static bool Writes => true;
        public static ulong Do(ulong a, ulong b, int bits, out ulong f) { ulong r = a & b; f = FastSzp(r, bits); return r; }
    }

    private struct OrOp : IAluOp
    {
        public static bool Writes => true;
        public static ulong Do(ulong a, ulong b, int bits, out ulong f) { ulong r = a | b; f = FastSzp(r, bits); return r; }
    }

    private struct XorOp : IAluOp
    {
        public static bool Writes => true;
        public static ulong Do(ulong a, ulong b, int bits, out ulong f) { ulong r = a ^ b; f = FastSzp(r, bits); return r; }
    }

    private struct TestOp : IAluOp
    {
        public static bool Writes => false;
        public static ulong Do(ulong a, ulong b, int bits, out ulong f) { ulong r = a & b; f = FastSzp(r, bits); return r; }
    }

    // Logic operations clear CF and OF and leave AF undefined; the generic handlers clear AF, and so do these.
    private static Exec Alu32<TOp, TSrc>(InstructionEngine e, ref Instruction i) where TOp : struct, IAluOp where TSrc : struct, ISrc
    {
        var c = e._cpu;
        ref ulong d = ref Gpr(c, i.Op0Register - Register.EAX);
        ulong r = TOp.Do((uint)d, (uint)TSrc.Get(c, ref i, 4), 32, out ulong f);
        if (TOp.Writes) d = (uint)r;
        c.Rflags = (c.Rflags & ~CpuState.StatusFlags) | f;
        return Exec.Next;
    }

    private static Exec Alu64<TOp, TSrc>(InstructionEngine e, ref Instruction i) where TOp : struct, IAluOp where TSrc : struct, ISrc
    {
        var c = e._cpu;
        ref ulong d = ref Gpr(c, i.Op0Register - Register.RAX);
        ulong r = TOp.Do(d, TSrc.Get(c, ref i, 8), 64, out ulong f);
        if (TOp.Writes) d = r;
        c.Rflags = (c.Rflags & ~CpuState.StatusFlags) | f;
        return Exec.Next;
    }

    private static Exec Mov32<TSrc>(InstructionEngine e, ref Instruction i) where TSrc : struct, ISrc
    {
        var c = e._cpu;
        Gpr(c, i.Op0Register - Register.EAX) = (uint)TSrc.Get(c, ref i, 4);
        return Exec.Next;
    }

    private static Exec Mov64<TSrc>(InstructionEngine e, ref Instruction i) where TSrc : struct, ISrc
    {
        var c = e._cpu;
        Gpr(c, i.Op0Register - Register.RAX) = TSrc.Get(c, ref i, 8);
        return Exec.Next;
    }

    // Memory forms. A fault leaves registers, flags and memory as they were (the access is resolved before anything
    // changes; a read-modify-write resolves for writing first, as the generic handlers do).
    private static Exec MovLoad32(InstructionEngine e, ref Instruction i) => MovLoad(e, ref i, 4);
    private static Exec MovLoad64(InstructionEngine e, ref Instruction i) => MovLoad(e, ref i, 8);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Exec MovLoad(InstructionEngine e, ref Instruction i, int size)
    {
        if (!e.ResolveModrm(ref i, size, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out ulong v)) return Exec.Fault;
        Gpr(e._cpu, i.Op0Register - (size == 8 ? Register.RAX : Register.EAX)) = v; // a 4-byte read is zero-extended
        return Exec.Next;
    }

    private static Exec AluLoad32<TOp>(InstructionEngine e, ref Instruction i) where TOp : struct, IAluOp => AluLoad<TOp>(e, ref i, 4);
    private static Exec AluLoad64<TOp>(InstructionEngine e, ref Instruction i) where TOp : struct, IAluOp => AluLoad<TOp>(e, ref i, 8);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Exec AluLoad<TOp>(InstructionEngine e, ref Instruction i, int size) where TOp : struct, IAluOp
    {
        if (!e.ResolveModrm(ref i, size, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out ulong v)) return Exec.Fault;
        var c = e._cpu;
        ref ulong d = ref Gpr(c, i.Op0Register - (size == 8 ? Register.RAX : Register.EAX));
        ulong r = TOp.Do(size == 8 ? d : (uint)d, v, size * 8, out ulong f);
        if (TOp.Writes) d = size == 8 ? r : (uint)r;
        c.Rflags = (c.Rflags & ~CpuState.StatusFlags) | f;
        return Exec.Next;
    }

    private static Exec MovStore32<TSrc>(InstructionEngine e, ref Instruction i) where TSrc : struct, ISrc => MovStore<TSrc>(e, ref i, 4);
    private static Exec MovStore64<TSrc>(InstructionEngine e, ref Instruction i) where TSrc : struct, ISrc => MovStore<TSrc>(e, ref i, 8);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Exec MovStore<TSrc>(InstructionEngine e, ref Instruction i, int size) where TSrc : struct, ISrc
    {
        ulong v = TSrc.Get(e._cpu, ref i, size);
        if (size == 4) v = (uint)v;
        return e.ResolveModrm(ref i, size, PageAccess.Write, out var loc) && e.WriteLoc(loc, v) ? Exec.Next : Exec.Fault;
    }

    private static Exec AluStore32<TOp, TSrc>(InstructionEngine e, ref Instruction i) where TOp : struct, IAluOp where TSrc : struct, ISrc
        => AluStore<TOp, TSrc>(e, ref i, 4);
    private static Exec AluStore64<TOp, TSrc>(InstructionEngine e, ref Instruction i) where TOp : struct, IAluOp where TSrc : struct, ISrc
        => AluStore<TOp, TSrc>(e, ref i, 8);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Exec AluStore<TOp, TSrc>(InstructionEngine e, ref Instruction i, int size) where TOp : struct, IAluOp where TSrc : struct, ISrc
    {
        var access = TOp.Writes ? PageAccess.Write : PageAccess.Read;
        if (!e.ResolveModrm(ref i, size, access, out var loc) || !e.ReadLoc(loc, out ulong a)) return Exec.Fault;
        var c = e._cpu;
        ulong b = TSrc.Get(c, ref i, size);
        if (size == 4) b = (uint)b;
        ulong r = TOp.Do(a, b, size * 8, out ulong f);
        if (TOp.Writes && !e.WriteLoc(loc, size == 8 ? r : (uint)r)) return Exec.Fault;
        c.Rflags = (c.Rflags & ~CpuState.StatusFlags) | f;
        return Exec.Next;
    }

    // INC/DEC: CF is kept (SDM Vol. 2 INC, DEC).
    private static Exec Inc32(InstructionEngine e, ref Instruction i) => IncDec(e, i.Op0Register - Register.EAX, 32, 1);
    private static Exec Dec32(InstructionEngine e, ref Instruction i) => IncDec(e, i.Op0Register - Register.EAX, 32, ulong.MaxValue);
    private static Exec Inc64(InstructionEngine e, ref Instruction i) => IncDec(e, i.Op0Register - Register.RAX, 64, 1);
    private static Exec Dec64(InstructionEngine e, ref Instruction i) => IncDec(e, i.Op0Register - Register.RAX, 64, ulong.MaxValue);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Exec IncDec(InstructionEngine e, int d, int bits, ulong delta)
    {
        var c = e._cpu;
        ref ulong g = ref Gpr(c, d);
        ulong f;
        ulong a = bits == 64 ? g : (uint)g;
        if (delta == 1) AddOp.Do(a, 1, bits, out f);
        else SubOp.Do(a, 1, bits, out f);
        g = bits == 64 ? a + delta : (uint)(a + delta);
        c.Rflags = (c.Rflags & ~(CpuState.StatusFlags & ~CF)) | (f & ~CF);
        return Exec.Next;
    }
}
