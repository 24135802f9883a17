// SPDX-License-Identifier: BSD-2-Clause
using System.Numerics;
using System.Runtime.CompilerServices;
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
        public bool EndsSystem; // the last instruction may change what the caller must look at (flags, mode, devices)
        public readonly Instruction[] Insns = new Instruction[MaxBlockInstructions];
        public readonly delegate*<InstructionEngine, ref Instruction, Exec>[] Handlers = new delegate*<InstructionEngine, ref Instruction, Exec>[MaxBlockInstructions];
        public readonly ulong[] Next = new ulong[MaxBlockInstructions];
        public readonly byte[] Bytes = new byte[MaxBlockInstructions * 15];
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
    /// raises RFLAGS.IF, a system instruction (I/O, control registers, MSRs...). With an interrupt shadow pending or
    /// RFLAGS.TF set it runs a single instruction. Needs a <see cref="Tlb"/> over <see cref="IGuestHostMemory"/>; without
    /// one it steps instruction by instruction.
    /// </summary>
    public StepResult Run(CpuState cpu, IGuestPorts? ports, int budget, out int executed)
    {
        executed = 0;
        var tlb = _mem.Walker.Tlb;
        var result = default(StepResult);
        while (executed < budget)
        {
            if (tlb is null || cpu.InterruptShadow != 0 || (cpu.Rflags & CpuState.FlagTf) != 0)
                return StepOne(cpu, ports, ref executed);
            _cpu = cpu;
            _ports = ports;
            int bits = cpu.CodeBitness;
            _bitness = bits;
            ulong rip = cpu.Rip;
            if (!Segmentation.Linearize(cpu, Seg.Cs, rip, 1, PageAccess.Execute, out ulong la).IsOk) return StepOne(cpu, ports, ref executed);
            if ((cpu.Efer & CpuState.EferLma) == 0 || (cpu.Cr0 & CpuState.Cr0Pg) == 0) la &= 0xffffffff;
            if (!tlb.Translate(cpu, la, PageAccess.Execute, out ulong gpa, out byte* page, out _).IsOk || page == null)
                return StepOne(cpu, ports, ref executed);
            var b = FindBlock(gpa, rip, bits, page);
            if (b is null || (bits != 64 && rip + (ulong)b.ByteLen - 1 > cpu.Segs[(int)Seg.Cs].Descriptor.Limit))
                return StepOne(cpu, ports, ref executed);

            ulong ifBefore = cpu.Rflags & CpuState.FlagIf;
            var mem = _mem;
            mem.WatchPage = gpa & ~0xffful;
            mem.WatchHit = false;
            int n = b.Count;
            var insns = b.Insns;
            var handlers = b.Handlers;
            var next = b.Next;
            Code code = Code.INVALID;
            bool stop = false;
            for (int k = 0; k < n; k++)
            {
                ref var ins = ref insns[k];
                _repDone = 0;
                var x = handlers[k](this, ref ins);
                if (x == Exec.Next)
                {
                    cpu.Rip = next[k];
                    executed++;
                    if (mem.WatchHit) { code = ins.Code; stop = true; break; }
                    continue;
                }
                code = ins.Code;
                switch (x)
                {
                    case Exec.Branch:
                    case Exec.Restart:
                        executed++;
                        break;
                    case Exec.Halt:
                        cpu.Rip = next[k];
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
            if (code == Code.INVALID) code = insns[n - 1].Code;
            result = new StepResult(StepStatus.Ok, default, 0, code);
            if (stop || b.EndsSystem || cpu.InterruptShadow != 0 || ((cpu.Rflags & CpuState.FlagIf) & ~ifBefore) != 0
                || code is Code.Iretw or Code.Iretd or Code.Iretq)
                return result;
        }
        return result;
    }

    private StepResult StepOne(CpuState cpu, IGuestPorts? ports, ref int executed)
    {
        var r = Step(cpu, ports);
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
            dec.Decode(out b.Insns[count]);
            ref var ins = ref b.Insns[count];
            if (dec.LastError != DecoderError.None) break;
            int il = ins.Length;
            if (bits != 64 && (ip + (ulong)il - 1 > limit || ip + (ulong)il > ipEnd)) break;
            var h = s_handlers[(int)ins.Code];
            if (h == null) break;
            var fast = FastHandler(ref ins);
            b.Handlers[count] = fast != null ? fast : h;
            ulong nx = ins.NextIP;
            b.Next[count] = bits == 64 ? nx : bits == 32 ? (uint)nx : (ushort)nx;
            len += il;
            count++;
            if (ins.FlowControl != FlowControl.Next) break;
            if (EndsBlock(ref ins)) { system = true; break; }
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
        switch (i.Mnemonic)
        {
            case Mnemonic.Popf: case Mnemonic.Lds: case Mnemonic.Les: case Mnemonic.Lfs: case Mnemonic.Lgs: case Mnemonic.Lss:
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
        if (i.HasLockPrefix || i.OpCount == 0 || i.Op0Kind != OpKind.Register) return null;
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

    private static delegate*<InstructionEngine, ref Instruction, Exec> Alu<TOp>(bool r32, bool reg) where TOp : struct, IAluOp
        => r32 ? (reg ? &Alu32<TOp, Rr> : &Alu32<TOp, Ri>) : (reg ? &Alu64<TOp, Rr> : &Alu64<TOp, Ri>);

    private interface ISrc { static abstract ulong Get(CpuState c, ref Instruction i, int size); }
    private struct Rr : ISrc
    {
        public static ulong Get(CpuState c, ref Instruction i, int size)
            => c.Gpr[size == 4 ? i.Op1Register - Register.EAX : i.Op1Register - Register.RAX];
    }
    private struct Ri : ISrc
    {
        public static ulong Get(CpuState c, ref Instruction i, int size) => size == 4 ? i.Immediate32 : i.Op1Kind switch
        {
            OpKind.Immediate8to64 => (ulong)(long)(sbyte)i.Immediate8,
            OpKind.Immediate32to64 => (ulong)(long)(int)i.Immediate32,
            _ => i.Immediate64,
        };
    }

    private interface IAluOp
    {
        static abstract bool Writes { get; }
        static abstract ulong Do(ulong a, ulong b, int bits, out ulong flags);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong FastSzp(ulong r, int bits)
        => (r == 0 ? ZF : 0) | (((r >> (bits - 1)) & 1) != 0 ? SF : 0) | ((BitOperations.PopCount(r & 0xff) & 1) == 0 ? PF : 0);

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
        var g = c.Gpr;
        int d = i.Op0Register - Register.EAX;
        ulong r = TOp.Do((uint)g[d], (uint)TSrc.Get(c, ref i, 4), 32, out ulong f);
        if (TOp.Writes) g[d] = (uint)r;
        c.Rflags = (c.Rflags & ~CpuState.StatusFlags) | f;
        return Exec.Next;
    }

    private static Exec Alu64<TOp, TSrc>(InstructionEngine e, ref Instruction i) where TOp : struct, IAluOp where TSrc : struct, ISrc
    {
        var c = e._cpu;
        var g = c.Gpr;
        int d = i.Op0Register - Register.RAX;
        ulong r = TOp.Do(g[d], TSrc.Get(c, ref i, 8), 64, out ulong f);
        if (TOp.Writes) g[d] = r;
        c.Rflags = (c.Rflags & ~CpuState.StatusFlags) | f;
        return Exec.Next;
    }

    private static Exec Mov32<TSrc>(InstructionEngine e, ref Instruction i) where TSrc : struct, ISrc
    {
        var c = e._cpu;
        c.Gpr[i.Op0Register - Register.EAX] = (uint)TSrc.Get(c, ref i, 4);
        return Exec.Next;
    }

    private static Exec Mov64<TSrc>(InstructionEngine e, ref Instruction i) where TSrc : struct, ISrc
    {
        var c = e._cpu;
        c.Gpr[i.Op0Register - Register.RAX] = TSrc.Get(c, ref i, 8);
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
        var g = c.Gpr;
        ulong f;
        ulong a = bits == 64 ? g[d] : (uint)g[d];
        if (delta == 1) AddOp.Do(a, 1, bits, out f);
        else SubOp.Do(a, 1, bits, out f);
        ulong r = bits == 64 ? a + delta : (uint)(a + delta);
        g[d] = r;
        c.Rflags = (c.Rflags & ~(CpuState.StatusFlags & ~CF)) | (f & ~CF);
        return Exec.Next;
    }
}
