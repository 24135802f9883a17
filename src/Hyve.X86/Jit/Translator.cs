// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Iced.Intel;

namespace Hyve.X86.Jit;

/// <summary>
/// The binary translator of one vCPU's engine: turns a run of guest integer instructions into the same host
/// instructions on the <see cref="StateBlock"/> (guest flags come from the host's ALU), caches the result by
/// guest-physical address, RIP and code size, and runs it. Anything it does not translate, and any memory access whose
/// inline TLB probe cannot be satisfied from RAM, is left to the interpreter, which is the reference.
/// </summary>
/// <remarks>
/// <para>Register use in translated code: RBX holds the state block, R12 the remaining self-loop budget, R13 the guest
/// instructions retired by earlier iterations; RAX, RCX, RDX, RSI, RDI, R8-R11 are scratch. Guest registers live in the
/// state block and are loaded and stored around each instruction (a register allocator is future work).</para>
/// <para>Flags: the guest's six status flags are live in the host RFLAGS between guest instructions. A TLB probe's
/// compare would clobber them, so it saves them first (PUSHFQ) and restores them (SAHF plus an ADD for OF) only where a
/// later read needs them (backward liveness over the block). Every exit writes them into the state block's RFLAGS.</para>
/// <para>Precise state: an instruction changes nothing before its memory probe succeeds, so a miss that cannot be filled
/// (fault, MMIO, a page-crossing access, a write to a page holding translated code) exits with RIP on that instruction
/// and everything before it committed; the interpreter then runs it, faulting exactly as it would have.</para>
/// <para>Self-modifying code: write entries of the translated code's TLB are never made for a guest-physical page
/// that holds translated code, so such a store leaves the block; every entry to a block compares the guest bytes.</para>
/// </remarks>
public sealed unsafe partial class Translator : IDisposable
{
    /// <summary>Most guest instructions in one block.</summary>
    public const int MaxInstructions = 32;
    private const int Slots = 4096;
    private const RflagsBits Status = RflagsBits.OF | RflagsBits.SF | RflagsBits.ZF | RflagsBits.AF | RflagsBits.CF | RflagsBits.PF;
    private const int HostStatusMask = 0x8d5; // the same six flags at their RFLAGS positions

    /// <summary>Block exit code: RIP in the state block is the next instruction to run.</summary>
    internal const int ExitNext = 0;
    /// <summary>Block exit code: the interpreter must run the instruction at RIP (a fault, MMIO, or a write to code).</summary>
    internal const int ExitInterpret = 1;

    private readonly JitBlock?[] _slots = new JitBlock?[Slots];
    private readonly Dictionary<BlockKey, JitBlock> _all = [];
    private readonly record struct BlockKey(ulong Gpa, ulong Rip, int Bits);
    private readonly HashSet<ulong> _codePages = [];
    private readonly CodeCache _cache;
    private readonly Decoder _dec16, _dec32, _dec64;
    private readonly PageReader _reader = new();
    private readonly BufferWriter _writer = new();
    private GCHandle _self;

    /// <summary>The engine whose memory the slow path uses (set by the engine).</summary>
    internal InstructionEngine? Engine;
    internal CpuState? Cpu;

    private sealed class PageReader : CodeReader
    {
        public byte* Ptr;
        public int Pos, Len;
        public override int ReadByte() => Pos < Len ? Ptr[Pos++] : -1;
    }

    private sealed class BufferWriter : CodeWriter
    {
        public byte[] Buf = new byte[64 << 10];
        public int Len;
        public override void WriteByte(byte value)
        {
            if (Len == Buf.Length) Array.Resize(ref Buf, Buf.Length * 2);
            Buf[Len++] = value;
        }
    }

    /// <summary>Creates a translator with its own code cache of <paramref name="cacheBytes"/> bytes.</summary>
    public Translator(long cacheBytes = CodeCache.DefaultSize)
    {
        _cache = new CodeCache(cacheBytes);
        _dec16 = Decoder.Create(16, _reader, 0, DecoderOptions.None);
        _dec32 = Decoder.Create(32, _reader, 0, DecoderOptions.None);
        _dec64 = Decoder.Create(64, _reader, 0, DecoderOptions.None);
        _self = GCHandle.Alloc(this, GCHandleType.Normal);
    }

    /// <summary>The code cache (for statistics and tests).</summary>
    public CodeCache Cache => _cache;

    /// <summary>Blocks translated so far.</summary>
    public long BlocksTranslated { get; private set; }

    /// <summary>Guest instructions run by translated code.</summary>
    public long InstructionsRun { get; internal set; }

    /// <summary>Run every translated block in lockstep with the interpreter and report divergences on stderr (slow; for
    /// finding a bad translation on a real guest). Set from HYVE_JIT_CHECK=1 or by a test.</summary>
    public bool CheckAgainstInterpreter { get; set; } = s_checkFromEnvironment;

    private static readonly bool s_checkFromEnvironment = Environment.GetEnvironmentVariable("HYVE_JIT_CHECK") == "1";

    internal bool Checking;
    internal readonly List<LoggedStore> WriteLog = [];

    internal struct LoggedStore
    {
        public ulong La;
        public byte* Host;
        public int Size;
        public ulong Old;
    }

    /// <summary>Test hook: chained entries compare no guest bytes, to check that the chaining tests can fail.</summary>
    public bool BreakGuardForTests { get; set; }

    /// <summary>Test hook: emit SUB for ADD, to check that the differential tests can fail.</summary>
    public bool BreakAddForTests { get; set; }

    // ---- block lookup ------------------------------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Slot(ulong gpa, ulong rip) => (int)(((gpa ^ (rip << 7)) * 0x9E3779B97F4A7C15ul) >> (64 - 12));

    /// <summary>The block at <paramref name="gpa"/>/<paramref name="rip"/>, translated now if need be; Count is 0 when the
    /// first instruction is not translatable.</summary>
    internal JitBlock? Find(ulong gpa, ulong rip, int bits, byte* page)
    {
        int slot = Slot(gpa, rip);
        var b = _slots[slot];
        if (b is not null && b.Gpa == gpa && b.Rip == rip && b.Bitness == bits
            && new ReadOnlySpan<byte>(page + (gpa & 0xfff), b.ByteLen).SequenceEqual(new ReadOnlySpan<byte>(b.Bytes, 0, b.ByteLen)))
            return b;
        // The direct-mapped slots are only the front: two hot blocks sharing a slot would otherwise be translated again
        // on every entry (Linux's alternatives pass ran for a minute that way), and every translation costs cache space.
        if (_all.TryGetValue(new BlockKey(gpa, rip, bits), out var old)
            && new ReadOnlySpan<byte>(page + (gpa & 0xfff), old.ByteLen).SequenceEqual(new ReadOnlySpan<byte>(old.Bytes, 0, old.ByteLen)))
        {
            _slots[slot] = old;
            return old;
        }
        if (JitStats.On) JitStats.Translation(old is not null);
        return Translate(slot, gpa, rip, bits, page);
    }

    // ---- chaining -----------------------------------------------------------------------------------------------

    private ulong _pendingSlot, _pendingRip;
    private long _pendingGeneration;

    /// <summary>Blocks linked to a successor so far.</summary>
    public long Links { get; private set; }

    /// <summary>Notes the chaining slot of the exit a block just left through (from the state block), to be pointed at the
    /// block the dispatcher runs next if that block starts at <paramref name="rip"/>.</summary>
    internal void NoteExit(ulong slot, ulong rip)
    {
        _pendingSlot = slot;
        _pendingRip = rip;
        _pendingGeneration = _cache.Flushes;
    }

    /// <summary>Forgets the noted slot (the dispatcher did something else first: the interpreter, an interrupt).</summary>
    internal void DropExit() => _pendingSlot = 0;

    /// <summary>Points the noted slot at <paramref name="next"/>'s guard when <paramref name="next"/> is the block at the
    /// noted RIP and both belong to the code cache's current generation. The slot's exit is to its own block's page, so
    /// the two blocks share a page and with it the translation the dispatcher checked.</summary>
    internal void LinkNoted(JitBlock next)
    {
        ulong slot = _pendingSlot;
        _pendingSlot = 0;
        if (slot == 0 || next.ChainEntry == 0 || next.Rip != _pendingRip || CheckAgainstInterpreter
            || _pendingGeneration != _cache.Flushes || next.Generation != _cache.Flushes) return;
        _linked.TryAdd(slot, _cache.Read((nint)slot)); // the first value is the slot's own stop path
        _cache.Patch((nint)slot, (ulong)next.ChainEntry);
        Links++;
    }

    private readonly Dictionary<ulong, ulong> _linked = [];
    private int _mapVersion = int.MinValue;

    /// <summary>Undoes every link when the guest-physical map has changed since <paramref name="version"/> was last seen: a
    /// guard compares through the host address its page had when translated, which is only the page's while the map is
    /// the same (host memory never moves, but a remap can put other memory at the address). Blocks stay translated: the
    /// dispatcher checks them against the current map and links them again.</summary>
    internal void SeeMapVersion(int version)
    {
        if (version == _mapVersion) return;
        _mapVersion = version;
        foreach (var (slot, stop) in _linked) _cache.Patch((nint)slot, stop);
        _linked.Clear();
    }

    /// <summary>Drops every translation (cache full, or asked by a test or the debugger).</summary>
    public void FlushAll()
    {
        if (JitStats.On) JitStats.Flush();
        Array.Clear(_slots);
        _all.Clear();
        _linked.Clear();
        _pendingSlot = 0;
        _codePages.Clear();
        _cache.Reset();
    }

    // ---- the slow path -----------------------------------------------------------------------------------------

    /// <summary>Called by translated code when its TLB probe misses: fills the entry and returns the host address of the
    /// access, or null when the interpreter must run the instruction. <paramref name="arg"/> = size | write &lt;&lt; 8.</summary>
    [UnmanagedCallersOnly]
    private static byte* SlowAccess(StateBlock* s, ulong la, uint arg)
    {
        try
        {
            var h = GCHandle.FromIntPtr(s->Owner);
            return ((Translator)h.Target!).Fill(la, (int)(arg & 0xff), (arg & 0x100) != 0);
        }
        catch
        {
            return null; // never unwind through host code: the interpreter will redo the access and report it
        }
    }

    private byte* Fill(ulong la, int size, bool write)
    {
        var cpu = Cpu!;
        var mem = Engine!.Memory;
        if ((la & 0xfff) + (ulong)size > 0x1000) return null; // crossing a page: the interpreter's two-piece path
        if (!Segmentation.IsCanonical(cpu, la)) return null;   // #GP/#SS: the interpreter decides which
        if (mem.Walker.Tlb is not { } tlb) return null;
        var r = tlb.Translate(cpu, la, write ? PageAccess.Write : PageAccess.Read, out ulong gpa, out byte* host, out bool writable);
        if (!r.IsOk || host == null) return null;                // fault or MMIO
        if (write && (!writable || _codePages.Contains(gpa >> 12))) return null;
        if (Checking && write)
        {
            // The lockstep check sees every store: log it (with the bytes it replaces) and leave the entry unfilled.
            byte* at = host + (la & 0xfff);
            ulong old = size switch { 1 => *at, 2 => *(ushort*)at, 4 => *(uint*)at, _ => *(ulong*)at };
            WriteLog.Add(new LoggedStore { La = la, Host = at, Size = size, Old = old });
            return at;
        }
        JitTlb.Fill(cpu.Block, write, la, host);
        return host + (la & 0xfff);
    }

    internal nint SelfHandle => GCHandle.ToIntPtr(_self);

    /// <summary>Frees the code cache.</summary>
    public void Dispose()
    {
        if (_self.IsAllocated) _self.Free();
        _cache.Dispose();
    }
}
