// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.CompilerServices;
using Iced.Intel;

namespace Hyve.X86;

/// <summary>What one instruction step of <see cref="InstructionEngine"/> did.</summary>
public enum StepStatus
{
    /// <summary>The instruction completed; RIP points past it (or at a branch target).</summary>
    Ok,
    /// <summary>The instruction faulted; RIP is unchanged and <see cref="StepResult.Exception"/> is to be delivered.</summary>
    Exception,
    /// <summary>HLT executed; RIP points past it.</summary>
    Halt,
    /// <summary>A valid instruction the engine does not implement; <see cref="StepResult.Exception"/> holds #UD should the caller deliver it.</summary>
    Unsupported,
    /// <summary>A guest-physical address touched is neither RAM nor MMIO (<see cref="StepResult.Address"/>); RIP is unchanged.</summary>
    Unbacked,
}

/// <summary>Result of one instruction step.</summary>
/// <param name="Status">What happened.</param>
/// <param name="Exception">Exception to inject (Exception and Unsupported).</param>
/// <param name="Address">The unbacked guest-physical address (Unbacked).</param>
/// <param name="Code">The decoded instruction's Iced code (Code.INVALID when nothing decoded).</param>
public readonly record struct StepResult(StepStatus Status, PendingException Exception, ulong Address, Code Code)
{
    /// <summary>True when the instruction completed normally.</summary>
    public bool IsOk => Status == StepStatus.Ok;
}

/// <summary>How a semantic handler finished.</summary>
internal enum Exec
{
    /// <summary>Advance RIP by the instruction length.</summary>
    Next,
    /// <summary>The handler set RIP itself.</summary>
    Branch,
    /// <summary>A fault or unbacked access is in the engine's pending result; RIP stays.</summary>
    Fault,
    /// <summary>HLT.</summary>
    Halt,
    /// <summary>Not implemented.</summary>
    Unsupported,
    /// <summary>Partial REP progress: leave RIP on the instruction to resume it.</summary>
    Restart,
}

/// <summary>
/// The x86 instruction engine: fetches through segmentation and paging, decodes with Iced, and executes
/// the semantics found in a table indexed by Iced's <see cref="Code"/> against a <see cref="CpuState"/>.
/// One engine per vCPU (it reuses its decoder and buffers); nothing on the step path allocates.
/// </summary>
/// <remarks>
/// Use: <c>var engine = new InstructionEngine(guestMemory);</c> once per vCPU, then per instruction
/// <c>var r = engine.Step(cpu, ports);</c> (or <c>engine.Step(cpu, ports, insnBytes)</c> when the caller already has the
/// bytes, as after a KVM emulation failure). On <see cref="StepStatus.Exception"/> inject <see cref="StepResult.Exception"/>
/// (CR2 is not written: delivery does that); on <see cref="StepStatus.Unsupported"/> the caller chooses between another
/// emulator and injecting the prepared #UD. A REP instruction that reaches <see cref="MaxRepIterations"/> returns Ok with RIP
/// still on it and the registers advanced, to be resumed by the next step.
/// System behaviour is pluggable: <see cref="Cpuid"/> (an <see cref="ICpuidModel"/>), <see cref="Msrs"/> (an <see cref="IMsrHandler"/>
/// asked before <see cref="ArchitecturalMsrs"/>; unknown to both = #GP(0)) and <see cref="Tsc"/> (an <see cref="ITscSource"/>).
/// <see cref="Deliver"/> delivers an exception or interrupt through the IVT/IDT. After MOV SS/POP SS/STI,
/// <see cref="CpuState.InterruptShadow"/> tells the caller to hold interrupts for one instruction.
/// </remarks>
public sealed unsafe partial class InstructionEngine
{
    private sealed class BufferReader : CodeReader
    {
        public readonly byte[] Buf = new byte[16];
        public int Pos, Len;
        public override int ReadByte() => Pos < Len ? Buf[Pos++] : -1;
    }

    private static readonly delegate*<InstructionEngine, ref Instruction, Exec>[] s_semantics = BuildSemantics();
    private static readonly delegate*<InstructionEngine, ref Instruction, Exec>[] s_handlers = BuildTable(CpuModel.Default);
    // The dispatch table of this engine's CPU model (Model).
    private delegate*<InstructionEngine, ref Instruction, Exec>[] _handlers = s_handlers;

    private readonly BufferReader _reader = new();
    private readonly Decoder _dec16, _dec32, _dec64;
    private readonly LinearMemory _mem;
    private CpuState _cpu = null!;
    private IGuestPorts? _ports;
    private AccessResult _fault;
    private int _bitness;
    private int _repDone;

    /// <summary>Upper bound on REP iterations per step; when reached the instruction is left to resume (as an interrupt window would).</summary>
    public int MaxRepIterations { get; set; } = 1 << 20;

    /// <summary>Linear-memory access (walker and physical memory) the engine uses.</summary>
    public LinearMemory Memory => _mem;

    /// <summary>Creates an engine over guest-physical memory with the given MAXPHYADDR.</summary>
    public InstructionEngine(IGuestPhysicalMemory memory, int maxPhysAddr = 48) : this(new LinearMemory(memory, maxPhysAddr)) { }

    /// <summary>Creates an engine over existing linear-memory access.</summary>
    public InstructionEngine(LinearMemory memory)
    {
        _mem = memory;
        _dec16 = Decoder.Create(16, _reader, 0, DecoderOptions.None);
        _dec32 = Decoder.Create(32, _reader, 0, DecoderOptions.None);
        _dec64 = Decoder.Create(64, _reader, 0, DecoderOptions.None);
    }

    /// <summary>True when the engine, with the default CPU model, executes <paramref name="code"/> or raises the
    /// architecture's exception for it (false: the "not implemented" stop).</summary>
    public static bool IsSupported(Code code) => (uint)code < (uint)s_handlers.Length && s_handlers[(int)code] != null;

    /// <summary>True when the engine has semantics of its own for <paramref name="code"/> (whatever the model).</summary>
    public static bool IsImplemented(Code code) => (uint)code < (uint)s_semantics.Length && s_semantics[(int)code] != null;

    /// <summary>
    /// The CPU model: which instruction forms execute and which raise #UD, the writable CR4 and EFER bits, and the
    /// vendor-specific behaviours. Set it before running (blocks decoded under another model are dropped).
    /// </summary>
    public CpuModel Model
    {
        get => _model;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            _model = value;
            _handlers = value == CpuModel.Default ? s_handlers : BuildTable(value);
            Cr4Writable = value.Cr4Writable;
            Array.Clear(_blocks);
        }
    }

    private CpuModel _model = CpuModel.Default;

    /// <summary>Fetches, decodes and executes one instruction at CS:RIP.</summary>
    public StepResult Step(CpuState cpu, IGuestPorts? ports = null)
    {
        _cpu = cpu;
        _ports = ports;
        _bitness = cpu.CodeBitness;
        var buf = _reader.Buf;
        AccessResult fetchFault = default;
        int got = Fetch(buf, 0, ref fetchFault);
        if (got == 0) return FromAccess(fetchFault, Code.INVALID);
        return DecodeAndExecute(got, fetchFault);
    }

    /// <summary>
    /// Executes one instruction whose bytes the caller already has (for example from a KVM emulation-failure exit);
    /// bytes beyond <paramref name="bytes"/> are fetched from guest memory if the decoder needs them.
    /// </summary>
    public StepResult Step(CpuState cpu, IGuestPorts? ports, ReadOnlySpan<byte> bytes)
    {
        _cpu = cpu;
        _ports = ports;
        _bitness = cpu.CodeBitness;
        int n = Math.Min(bytes.Length, 15);
        bytes[..n].CopyTo(_reader.Buf);
        AccessResult fetchFault = default;
        if (n < 15) n = Fetch(_reader.Buf, n, ref fetchFault);
        if (n == 0) return FromAccess(fetchFault, Code.INVALID);
        return DecodeAndExecute(n, fetchFault);
    }

    private StepResult DecodeAndExecute(int got, AccessResult fetchFault)
    {
        var cpu = _cpu;
        var dec = _bitness == 64 ? _dec64 : _bitness == 32 ? _dec32 : _dec16;
        _reader.Pos = 0;
        _reader.Len = got;
        dec.IP = cpu.Rip;
        dec.Decode(out var instr);
        var err = dec.LastError;
        if (err != DecoderError.None)
        {
            if (err == DecoderError.NoMoreBytes && fetchFault.Status != AccessStatus.Ok) return FromAccess(fetchFault, Code.INVALID);
            // More than 15 bytes of prefixes and opcode: #GP(0), not #UD (SDM Vol. 2 2.3.11).
            if (got == 15 && _reader.Pos >= 15) return new StepResult(StepStatus.Exception, PendingException.Gp0, 0, Code.INVALID);
            return new StepResult(StepStatus.Exception, PendingException.Ud, 0, Code.INVALID);
        }
        var code = instr.Code;
        var h = _handlers[(int)code];
        if (h == null) return new StepResult(StepStatus.Unsupported, PendingException.Ud, 0, code);
        _fault = default;
        _repDone = 0;
        // A shadow covers only the instruction after MOV SS/STI: starting this one ends it (the handler may set it again).
        cpu.InterruptShadow = 0;
        // RF is cleared at the start of every instruction, after the instruction-breakpoint check (SDM Vol. 3 17.3.1.1).
        cpu.Rflags &= ~CpuState.FlagRf;
        ulong next = instr.NextIP;
        switch (h(this, ref instr))
        {
            case Exec.Next:
                cpu.Rip = _bitness == 64 ? next : _bitness == 32 ? (uint)next : (ushort)next;
                return new StepResult(StepStatus.Ok, default, 0, code);
            case Exec.Branch:
            case Exec.Restart:
                return new StepResult(StepStatus.Ok, default, 0, code);
            case Exec.Halt:
                cpu.Rip = _bitness == 64 ? next : _bitness == 32 ? (uint)next : (ushort)next;
                return new StepResult(StepStatus.Halt, default, 0, code);
            case Exec.Unsupported:
                return new StepResult(StepStatus.Unsupported, PendingException.Ud, 0, code);
            default:
                return FromAccess(_fault, code);
        }
    }

    private static StepResult FromAccess(AccessResult r, Code code) => r.Status switch
    {
        AccessStatus.Unbacked => new StepResult(StepStatus.Unbacked, default, r.Address, code),
        _ => new StepResult(StepStatus.Exception, r.Exception, 0, code),
    };

    // Reads up to 15 instruction bytes at CS:RIP; stops at the first byte that cannot be fetched and records why.
    private int Fetch(byte[] buf, int got, ref AccessResult fault)
    {
        var cpu = _cpu;
        while (got < 15)
        {
            ulong off = cpu.Rip + (ulong)got;
            if (_bitness != 64) off &= 0xffffffff;
            var r = Segmentation.Linearize(cpu, Seg.Cs, off, 1, PageAccess.Execute, out ulong la);
            if (!r.IsOk) { fault = r; break; }
            int n = (int)Math.Min((ulong)(15 - got), 0x1000 - (la & 0xfff));
            if (_bitness != 64)
            {
                ulong lim = cpu.Segs[(int)Seg.Cs].Descriptor.Limit;
                n = (int)Math.Min((ulong)n, lim - off + 1);
            }
            r = _mem.Walker.Translate(cpu, la, PageAccess.Execute, out ulong gpa);
            if (!r.IsOk) { fault = r; break; }
            r = _mem.ReadPhysical(gpa, buf.AsSpan(got, n));
            if (!r.IsOk) { fault = r; break; }
            got += n;
        }
        return got;
    }

    // ---- operand access ------------------------------------------------------------------------------

    private Exec Fail(AccessResult r) { _fault = r; return Exec.Fault; }
    private Exec Raise(PendingException e) { _fault = AccessResult.Fault(e); return Exec.Fault; }

    /// <summary>Size in bytes of operand <paramref name="op"/>.</summary>
    private static int OpSize(ref Instruction i, int op)
    {
        var k = i.GetOpKind(op);
        if (k == OpKind.Register) return RegisterSize(i.GetOpRegister(op));
        if (k == OpKind.Memory || k >= OpKind.MemorySegSI) return MemorySizeBytes(i.MemorySize);
        return k switch
        {
            OpKind.Immediate8 or OpKind.Immediate8_2nd => 1,
            OpKind.Immediate16 or OpKind.Immediate8to16 => 2,
            OpKind.Immediate32 or OpKind.Immediate8to32 => 4,
            _ => 8,
        };
    }

    private static bool IsGpr(Register r) => r >= Register.AL && r <= Register.R15;

    // Iced's Register.GetSize() and MemorySize.GetSize() look up a table of info structs on every call; the engine asks
    // for operand sizes on every generic-path instruction, so general-purpose registers are sized by their place in the
    // enum (AL..R15L, AX..R15W, EAX..R15D, RAX..R15) and memory sizes come from one byte table.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int RegisterSize(Register r) => r > Register.R15 || r < Register.AL ? r.GetSize()
        : r >= Register.RAX ? 8 : r >= Register.EAX ? 4 : r >= Register.AX ? 2 : 1;

    private static readonly byte[] s_memorySizeBytes = BuildMemorySizes();

    private static byte[] BuildMemorySizes()
    {
        int count = 0;
        foreach (var m in Enum.GetValues<MemorySize>()) count = Math.Max(count, (int)m + 1);
        var t = new byte[count];
        for (int m = 0; m < t.Length; m++) t[m] = (byte)Math.Min(((MemorySize)m).GetSize(), 255);
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int MemorySizeBytes(MemorySize m) => (uint)m < (uint)s_memorySizeBytes.Length && s_memorySizeBytes[(int)m] != 255
        ? s_memorySizeBytes[(int)m] : m.GetSize();

    /// <summary>Reads a general-purpose register in Iced's naming.</summary>
    internal static ulong GetGpr(CpuState c, Register r)
    {
        if (r >= Register.RAX) return c.Gpr[r - Register.RAX];
        if (r >= Register.EAX) return (uint)c.Gpr[r - Register.EAX];
        if (r >= Register.AX) return (ushort)c.Gpr[r - Register.AX];
        if (r >= Register.SPL) return (byte)c.Gpr[r - Register.SPL + 4];
        if (r >= Register.AH) return (byte)(c.Gpr[r - Register.AH] >> 8);
        return (byte)c.Gpr[r - Register.AL];
    }

    /// <summary>Writes a general-purpose register: 32-bit writes zero-extend, 8/16-bit writes merge (SDM Vol. 1 3.4.1.1).</summary>
    internal static void SetGpr(CpuState c, Register r, ulong v)
    {
        var g = c.Gpr;
        if (r >= Register.RAX) g[r - Register.RAX] = v;
        else if (r >= Register.EAX) g[r - Register.EAX] = (uint)v;
        else if (r >= Register.AX) { int n = r - Register.AX; g[n] = (g[n] & ~0xfffful) | (ushort)v; }
        else if (r >= Register.SPL) { int n = r - Register.SPL + 4; g[n] = (g[n] & ~0xfful) | (byte)v; }
        else if (r >= Register.AH) { int n = r - Register.AH; g[n] = (g[n] & ~0xff00ul) | ((ulong)(byte)v << 8); }
        else { int n = r - Register.AL; g[n] = (g[n] & ~0xfful) | (byte)v; }
    }

    /// <summary>Writes a register of the given size by number (0=RAX...), as string ops and IN do.</summary>
    private static void SetGprSized(CpuState c, int n, int size, ulong v)
    {
        var g = c.Gpr;
        g[n] = size switch
        {
            1 => (g[n] & ~0xfful) | (byte)v,
            2 => (g[n] & ~0xfffful) | (ushort)v,
            4 => (uint)v,
            _ => v,
        };
    }

    private static ulong Mask(int size) => size >= 8 ? ulong.MaxValue : (1ul << (8 * size)) - 1;

    /// <summary>Effective address of the ModRM/moffs memory operand, reduced to the address size.</summary>
    private ulong EffectiveAddress(ref Instruction i, out int addrSize)
    {
        var b = i.MemoryBase;
        var x = i.MemoryIndex;
        if (b == Register.RIP) { addrSize = 8; return i.MemoryDisplacement64; }
        if (b == Register.EIP) { addrSize = 4; return (uint)i.MemoryDisplacement64; }
        var sizing = b != Register.None ? b : x;
        if (sizing != Register.None) addrSize = RegisterSize(sizing);
        else addrSize = i.MemoryDisplSize switch { 2 => 2, 4 => 4, 8 => 8, _ => _bitness / 8 };
        ulong ea = i.MemoryDisplacement64;
        if (b != Register.None) ea += GetGpr(_cpu, b);
        if (x != Register.None) ea += GetGpr(_cpu, x) * (ulong)i.MemoryIndexScale;
        return ea & Mask(addrSize);
    }

    private static Seg SegOf(Register r) => (Seg)(r - Register.ES);

    /// <summary>Resolved memory operand: linear address and the one or two guest-physical pieces.</summary>
    private struct MemLoc
    {
        public ulong Linear, Gpa0, Gpa1;
        public int Len0, Size;
        // Host address of the whole access when it lies in one RAM page the TLB maps (writable when the access is a write).
        public byte* Host;
    }

    /// <summary>Segment-checks and translates a memory access of <paramref name="size"/> bytes at seg:offset.</summary>
    private bool Resolve(Seg seg, ulong offset, int size, PageAccess access, out MemLoc loc)
    {
        bool cacheable = LastPageApplies(seg, access);
        if (cacheable && (offset & 0xfff) + (ulong)size <= 0x1000 && (_cpu.Rflags & CpuState.FlagAc) == 0)
        {
            ref var last = ref access == PageAccess.Read ? ref _lastRead : ref _lastWrite;
            if (last.Page1 == (offset >> 12) + 1 && last.Epoch == _mem.Walker.Tlb!.Epoch)
            {
                loc = new MemLoc { Linear = offset, Gpa0 = last.GpaPage | (offset & 0xfff), Len0 = size, Size = size, Host = last.Host + (offset & 0xfff) };
                return true;
            }
        }
        loc = default;
        var r = Segmentation.Linearize(_cpu, seg, offset, size, access, out ulong la);
        if (r.IsOk) r = AlignmentCheck(la, size);
        if (r.IsOk) r = _mem.TranslateSpan(_cpu, la, size, access, out loc.Gpa0, out loc.Len0, out loc.Gpa1, out loc.Host);
        if (!r.IsOk) { _fault = r; return false; }
        loc.Linear = la;
        loc.Size = size;
        // A debugger's data breakpoints (the software CPU's DR0-DR3) see operand accesses; nothing to do otherwise.
        if (_mem.Observer is { } watch) watch.OnDataAccess(la, size, access);
        else if (cacheable && loc.Host != null && loc.Len0 == size)
        {
            ref var last = ref access == PageAccess.Read ? ref _lastRead : ref _lastWrite;
            last = new LastPage((la >> 12) + 1, loc.Gpa0 & ~0xffful, loc.Host - (la & 0xfff), _mem.Walker.Tlb!.Epoch);
        }
        return true;
    }

    // The last RAM page read and the last written inside one Run call in 64-bit code, so that the next access to the
    // same page skips segmentation (no bases or limits but FS and GS, which are not cached), the canonical check (an
    // access inside a page already found canonical) and the TLB. Valid while the TLB's epoch and the memory map stand
    // (RunBlocks looks at the map's version at every block); CPL, paging and the code size cannot change inside a Run
    // call (whatever changes them ends it), nor can the debugger's observer appear. RFLAGS.AC set (alignment checks at
    // CPL 3) and implicit supervisor accesses take the full path.
    private readonly struct LastPage(ulong page1, ulong gpaPage, byte* host, ulong epoch)
    {
        public readonly ulong Page1 = page1, GpaPage = gpaPage, Epoch = epoch;
        public readonly byte* Host = host;
    }
    private LastPage _lastRead, _lastWrite;
    private bool _lastPages;

    private bool LastPageApplies(Seg seg, PageAccess access) =>
        _lastPages && seg is not (Seg.Fs or Seg.Gs) && access is PageAccess.Read or PageAccess.Write;

    // #AC(0) for misaligned data at CPL 3 with CR0.AM and RFLAGS.AC (SDM Vol. 3 6.15, interrupt 17).
    private AccessResult AlignmentCheck(ulong la, int size)
    {
        var c = _cpu;
        if (size > 1 && (la & (ulong)(size - 1)) != 0 && (c.Cr0 & CpuState.Cr0Am) != 0 && (c.Rflags & CpuState.FlagAc) != 0 && c.Cpl == 3)
            return AccessResult.Fault(new PendingException(Vector.AC, true, 0, 0));
        return AccessResult.Ok;
    }

    private bool ReadLoc(in MemLoc loc, out ulong v)
    {
        if (loc.Host != null && loc.Size <= 8) { v = LinearMemory.ReadHost(loc.Host, loc.Size); return true; }
        if (loc.Len0 == loc.Size && _mem.Physical.TryGetReadSpan(loc.Gpa0, loc.Size, out var s)) { v = PageWalker.ReadLe(s, loc.Size); return true; }
        if (loc.Len0 == loc.Size && _mem.Physical.TryReadMmio(loc.Gpa0, loc.Size, out v)) { v &= Mask(loc.Size); return true; }
        Span<byte> buf = stackalloc byte[8];
        buf.Clear();
        var r = _mem.ReadPhysical(loc.Gpa0, buf[..loc.Len0]);
        if (r.IsOk && loc.Len0 < loc.Size) r = _mem.ReadPhysical(loc.Gpa1, buf[loc.Len0..loc.Size]);
        v = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(buf);
        if (!r.IsOk) { _fault = r; return false; }
        return true;
    }

    private bool WriteLoc(in MemLoc loc, ulong v)
    {
        if (loc.Host != null && loc.Size <= 8)
        {
            LinearMemory.WriteHost(loc.Host, loc.Size, v);
            _mem.NoteWrite(loc.Gpa0);
            return true;
        }
        var r = _mem.WriteTranslated(loc.Gpa0, loc.Len0, loc.Gpa1, loc.Size, v);
        if (!r.IsOk) { _fault = r; return false; }
        return true;
    }

    /// <summary>Resolves the ModRM memory operand of <paramref name="i"/>.</summary>
    private bool ResolveModrm(ref Instruction i, int size, PageAccess access, out MemLoc loc)
    {
        ulong ea = EffectiveAddress(ref i, out _);
        return Resolve(SegOf(i.MemorySegment), ea, size, access, out loc);
    }

    /// <summary>Reads operand <paramref name="op"/> (register, immediate or memory) zero-extended from <paramref name="size"/>.</summary>
    private bool ReadOp(ref Instruction i, int op, int size, out ulong v)
    {
        switch (i.GetOpKind(op))
        {
            case OpKind.Register:
                v = GetGpr(_cpu, i.GetOpRegister(op)) & Mask(size);
                return true;
            case OpKind.Memory:
                if (!ResolveModrm(ref i, size, PageAccess.Read, out var loc)) { v = 0; return false; }
                return ReadLoc(loc, out v);
            default:
                v = i.GetImmediate(op) & Mask(size);
                return true;
        }
    }

    /// <summary>Writes operand <paramref name="op"/> (register or memory).</summary>
    private bool WriteOp(ref Instruction i, int op, int size, ulong v)
    {
        if (i.GetOpKind(op) == OpKind.Register) { SetGpr(_cpu, i.GetOpRegister(op), v); return true; }
        if (!ResolveModrm(ref i, size, PageAccess.Write, out var loc)) return false;
        return WriteLoc(loc, v);
    }

    /// <summary>True when every register operand is a general-purpose register (the handlers' precondition).</summary>
    private static bool GprOperandsOnly(ref Instruction i)
    {
        for (int k = 0; k < i.OpCount; k++)
            if (i.GetOpKind(k) == OpKind.Register && !IsGpr(i.GetOpRegister(k))) return false;
        return true;
    }
}
