// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.CompilerServices;

namespace Hyve.X86.Jit;

/// <summary>
/// The translated code's TLB inside the <see cref="StateBlock"/>: direct-mapped by linear page number, one table for reads
/// and one for writes, each entry (page number, host address minus linear address). Host code probes it inline; a miss
/// calls the slow path, which asks the engine's <see cref="Tlb"/> (walk, A/D bits, rights for the current CPL) and fills
/// the entry only for a RAM page the access may use. It is a cache of the <see cref="Tlb"/>, so it is flushed whenever
/// that TLB's epoch, the CPL or RFLAGS.AC (SMAP) may have changed what the answer would be.
/// </summary>
public static unsafe class JitTlb
{
    /// <summary>Tag of an empty entry: no linear page number is this large.</summary>
    public const ulong Empty = ulong.MaxValue;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong* Table(StateBlock* s, bool write) => (ulong*)((byte*)s + (write ? StateBlock.WriteTlbOffset : StateBlock.ReadTlbOffset));

    /// <summary>Empties both tables.</summary>
    public static void FlushAll(StateBlock* s)
    {
        FlushWrites(s);
        var t = Table(s, false);
        for (int i = 0; i < StateBlock.JitTlbEntries; i++) t[2 * i] = Empty;
    }

    /// <summary>Empties the write table (a page just gained translated code: its writes must take the slow path).</summary>
    public static void FlushWrites(StateBlock* s)
    {
        var t = Table(s, true);
        for (int i = 0; i < StateBlock.JitTlbEntries; i++) t[2 * i] = Empty;
    }

    /// <summary>Makes the linear page of <paramref name="la"/> map to host page <paramref name="hostPage"/>.</summary>
    public static void Fill(StateBlock* s, bool write, ulong la, byte* hostPage)
    {
        ulong vpn = la >> 12;
        var e = Table(s, write) + 2 * (int)(vpn & (StateBlock.JitTlbEntries - 1));
        e[0] = vpn;
        e[1] = (ulong)hostPage - (vpn << 12);
    }
}
