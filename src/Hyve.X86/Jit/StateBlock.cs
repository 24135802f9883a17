// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.X86.Jit;

/// <summary>
/// The guest state that translated code addresses directly: one unmanaged, 64-byte-aligned block per
/// <see cref="CpuState"/>, at fixed offsets (the constants below), so that host code can reach every field as
/// <c>[rbx + offset]</c> with the block's address in RBX. The interpreter reads and writes the same memory through
/// <see cref="CpuState.Gpr"/>, <see cref="CpuState.Rip"/> and <see cref="CpuState.Rflags"/>, so there is nothing to copy
/// when control passes between the interpreter and translated code.
/// </summary>
/// <remarks>
/// Native rather than a GC array: the address must never move while host code holds it, and a field layout written as
/// constants is easier to check against the emitter than a managed object's. The block also holds the translated
/// code's own small TLB (<see cref="JitTlbEntries"/> entries each for reads and writes): guest-linear page number to the
/// difference between the host address and the linear address, filled and flushed by C# from the engine's
/// <see cref="Tlb"/> (see <see cref="JitTlb"/>).
/// </remarks>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct StateBlock
{
    /// <summary>RAX..R15 at offset 0, 8 bytes each.</summary>
    public fixed ulong Gpr[16];
    /// <summary>RIP (offset <see cref="RipOffset"/>).</summary>
    public ulong Rip;
    /// <summary>RFLAGS (offset <see cref="RflagsOffset"/>).</summary>
    public ulong Rflags;
    /// <summary>FS base as of the last entry into translated code (64-bit mode: the only segment bases that count).</summary>
    public ulong FsBase;
    /// <summary>GS base, as <see cref="FsBase"/>.</summary>
    public ulong GsBase;
    /// <summary>Host RFLAGS saved around a TLB probe (the probe's compare clobbers the live guest flags).</summary>
    public ulong FlagSave;
    /// <summary>Executable address of the chaining slot of the exit translated code last left through (0: an exit that
    /// cannot be chained); the dispatcher points the slot at the next block (see <see cref="Translator"/>).</summary>
    public ulong ChainSlot;
    /// <summary>GCHandle of the <see cref="Translator"/> running on this state, for the slow path to find it.</summary>
    public nint Owner;
    /// <summary>Guest instructions retired by the translated code since the dispatcher last cleared it.</summary>
    public long Retired;

    /// <summary>Entries in each of the two translated-code TLBs (a power of two).</summary>
    public const int JitTlbEntries = 256;

    /// <summary>Offset of RAX; register n is at 8*n.</summary>
    public const int GprOffset = 0;
    /// <summary>Offset of <see cref="Rip"/>.</summary>
    public const int RipOffset = 128;
    /// <summary>Offset of <see cref="Rflags"/>.</summary>
    public const int RflagsOffset = 136;
    /// <summary>Offset of <see cref="FsBase"/>.</summary>
    public const int FsBaseOffset = 144;
    /// <summary>Offset of <see cref="GsBase"/>.</summary>
    public const int GsBaseOffset = 152;
    /// <summary>Offset of <see cref="FlagSave"/>.</summary>
    public const int FlagSaveOffset = 160;
    /// <summary>Offset of <see cref="ChainSlot"/>.</summary>
    public const int ChainSlotOffset = 168;
    /// <summary>Offset of <see cref="Owner"/>.</summary>
    public const int OwnerOffset = 176;
    /// <summary>Offset of <see cref="Retired"/>.</summary>
    public const int RetiredOffset = 184;
    /// <summary>Offset of the read TLB: <see cref="JitTlbEntries"/> pairs of (linear page number, host minus linear).</summary>
    public const int ReadTlbOffset = 192;
    /// <summary>Offset of the write TLB, laid out as the read TLB.</summary>
    public const int WriteTlbOffset = ReadTlbOffset + JitTlbEntries * 16;
    /// <summary>Bytes in the whole block.</summary>
    public const int Size = WriteTlbOffset + JitTlbEntries * 16;

    /// <summary>Allocates a zeroed block (freed with <see cref="Free"/>) with both TLBs empty.</summary>
    public static StateBlock* Allocate()
    {
        var p = (StateBlock*)NativeMemory.AlignedAlloc(Size, 64);
        NativeMemory.Clear(p, Size);
        JitTlb.FlushAll(p);
        return p;
    }

    /// <summary>Releases a block from <see cref="Allocate"/>.</summary>
    public static void Free(StateBlock* p) => NativeMemory.AlignedFree(p);
}
