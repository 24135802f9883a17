// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Hyve.X86;

/// <summary>Sees explicit data accesses by linear address before they are made (a debugger's data breakpoints).</summary>
public interface ILinearAccessObserver
{
    /// <summary>An instruction is about to access <paramref name="size"/> bytes at <paramref name="linear"/>.</summary>
    void OnDataAccess(ulong linear, int size, PageAccess access);
}

/// <summary>
/// Guest linear-address memory access: paging through a <see cref="PageWalker"/>, then RAM spans or MMIO.
/// Multi-page writes translate every page before writing any byte so a fault leaves memory untouched.
/// </summary>
public sealed unsafe class LinearMemory
{
    /// <summary>
    /// Guest-physical page (4 KiB aligned) whose cached decoded instructions are executing, or ulong.MaxValue; a write
    /// into it through this object sets <see cref="WatchHit"/> so the engine stops the block before running stale code.
    /// </summary>
    internal ulong WatchPage = ulong.MaxValue;

    /// <summary>Set when a write touched <see cref="WatchPage"/>.</summary>
    internal bool WatchHit;

    /// <summary>Records a write at <paramref name="gpa"/> for self-modifying-code detection.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void NoteWrite(ulong gpa)
    {
        if ((gpa & ~0xffful) == WatchPage) WatchHit = true;
    }

    private void NoteWrite(ulong gpa, int length)
    {
        if (WatchPage == ulong.MaxValue || length <= 0) return;
        ulong last = gpa + (ulong)(length - 1);
        if ((gpa & ~0xffful) <= WatchPage && (last & ~0xffful) >= WatchPage) WatchHit = true;
    }

    /// <summary>The page walker used for translation.</summary>
    public PageWalker Walker { get; }

    /// <summary>Guest-physical memory.</summary>
    public IGuestPhysicalMemory Physical { get; }

    /// <summary>Told of every explicit data access an instruction's operands make, once translated and before the access
    /// (null: nobody watches, and the operand path pays one null test).</summary>
    public ILinearAccessObserver? Observer { get; set; }

    /// <summary>Creates linear access over guest-physical memory.</summary>
    public LinearMemory(IGuestPhysicalMemory physical, int maxPhysAddr = 48)
    {
        Physical = physical;
        Walker = new PageWalker(physical, maxPhysAddr);
    }

    // Linear addresses are 64-bit whenever IA-32e mode is active: compatibility-mode segment arithmetic already wraps at
    // 4 GiB, but implicit accesses (GDT/LDT/IDT/TSS, whose bases are 64-bit) must not be truncated there.
    private static ulong LinearMask(CpuState cpu) => (cpu.Efer & CpuState.EferLma) != 0 && (cpu.Cr0 & CpuState.Cr0Pg) != 0 ? ulong.MaxValue : 0xffffffff;

    /// <summary>Copies guest linear memory into <paramref name="dest"/>; faults are reported, never thrown.</summary>
    public AccessResult CopyFromGuest(CpuState cpu, ulong linear, Span<byte> dest, PageAccess access = PageAccess.Read, bool setAccessed = true)
    {
        ulong mask = LinearMask(cpu);
        int done = 0;
        while (done < dest.Length)
        {
            ulong la = (linear + (ulong)done) & mask;
            int chunk = (int)Math.Min((ulong)(dest.Length - done), 0x1000 - (la & 0xfff));
            var r = setAccessed ? Walker.Translate(cpu, la, access, out ulong gpa) : Walker.Probe(cpu, la, access, out gpa);
            if (!r.IsOk) return r;
            r = ReadPhysical(gpa, dest.Slice(done, chunk));
            if (!r.IsOk) return r;
            done += chunk;
        }
        return AccessResult.Ok;
    }

    /// <summary>Copies <paramref name="src"/> into guest linear memory after checking every page is writable.</summary>
    public AccessResult CopyToGuest(CpuState cpu, ulong linear, ReadOnlySpan<byte> src, PageAccess access = PageAccess.Write, bool setAccessed = true)
    {
        ulong mask = LinearMask(cpu);
        for (int pass = 0; pass < 2; pass++)
        {
            int done = 0;
            while (done < src.Length)
            {
                ulong la = (linear + (ulong)done) & mask;
                int chunk = (int)Math.Min((ulong)(src.Length - done), 0x1000 - (la & 0xfff));
                // Pass 0 validates (and sets A/D) for every page; pass 1 writes, translating without side effects.
                var r = pass == 0 && setAccessed ? Walker.Translate(cpu, la, access, out ulong gpa) : Walker.Probe(cpu, la, access, out gpa);
                if (!r.IsOk) return r;
                if (pass == 1)
                {
                    r = WritePhysical(gpa, src.Slice(done, chunk));
                    if (!r.IsOk) return r;
                }
                done += chunk;
            }
        }
        return AccessResult.Ok;
    }

    /// <summary>Translates the one or two pages an access of <paramref name="size"/> (≤ 4096) bytes touches.</summary>
    internal AccessResult TranslateSpan(CpuState cpu, ulong linear, int size, PageAccess access, out ulong gpa0, out int len0, out ulong gpa1)
    {
        ulong mask = LinearMask(cpu);
        linear &= mask;
        len0 = (int)Math.Min((ulong)size, 0x1000 - (linear & 0xfff));
        gpa1 = 0;
        var r = Walker.Translate(cpu, linear, access, out gpa0);
        if (!r.IsOk || len0 == size) return r;
        return Walker.Translate(cpu, (linear + (ulong)len0) & mask, access, out gpa1);
    }

    /// <summary>
    /// As <see cref="TranslateSpan(CpuState, ulong, int, PageAccess, out ulong, out int, out ulong)"/>, and with a TLB over
    /// host memory also the host address of an access that stays in one RAM page (null otherwise: use the physical path).
    /// </summary>
    internal AccessResult TranslateSpan(CpuState cpu, ulong linear, int size, PageAccess access, out ulong gpa0, out int len0, out ulong gpa1, out byte* host)
    {
        host = null;
        if (Walker.Tlb is not { } tlb) return TranslateSpan(cpu, linear, size, access, out gpa0, out len0, out gpa1);
        ulong mask = LinearMask(cpu);
        linear &= mask;
        len0 = (int)Math.Min((ulong)size, 0x1000 - (linear & 0xfff));
        gpa1 = 0;
        var r = tlb.Translate(cpu, linear, access, out gpa0, out byte* page, out bool writable);
        if (!r.IsOk) return r;
        if (len0 == size)
        {
            if (page != null && (writable || (access & PageAccess.Write) == 0)) host = page + (gpa0 & 0xfff);
            return r;
        }
        return tlb.Translate(cpu, (linear + (ulong)len0) & mask, access, out gpa1, out _, out _);
    }

    /// <summary>Reads 1, 2, 4 or 8 little-endian bytes at a host address.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong ReadHost(byte* p, int size) => size switch
    {
        1 => *p,
        2 => Unsafe.ReadUnaligned<ushort>(p),
        4 => Unsafe.ReadUnaligned<uint>(p),
        _ => Unsafe.ReadUnaligned<ulong>(p),
    };

    /// <summary>Writes the low 1, 2, 4 or 8 bytes of a value at a host address.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void WriteHost(byte* p, int size, ulong v)
    {
        switch (size)
        {
            case 1: *p = (byte)v; break;
            case 2: Unsafe.WriteUnaligned(p, (ushort)v); break;
            case 4: Unsafe.WriteUnaligned(p, (uint)v); break;
            default: Unsafe.WriteUnaligned(p, v); break;
        }
    }

    /// <summary>Reads a value of 1, 2, 4 or 8 bytes at a linear address.</summary>
    internal AccessResult Read(CpuState cpu, ulong linear, int size, PageAccess access, out ulong value)
    {
        value = 0;
        var r = TranslateSpan(cpu, linear, size, access, out ulong g0, out int l0, out ulong g1);
        if (!r.IsOk) return r;
        if (l0 == size && Physical.TryGetSpan(g0, size, out var s)) { value = PageWalker.ReadLe(s, size); return AccessResult.Ok; }
        if (l0 == size && Physical.TryReadMmio(g0, size, out value)) { value &= SizeMask(size); return AccessResult.Ok; }
        Span<byte> buf = stackalloc byte[8];
        buf.Clear();
        r = ReadPhysical(g0, buf[..l0]);
        if (r.IsOk && l0 < size) r = ReadPhysical(g1, buf[l0..size]);
        value = BinaryPrimitives.ReadUInt64LittleEndian(buf);
        return r;
    }

    /// <summary>Writes a value of 1, 2, 4 or 8 bytes at a linear address (all pages checked first).</summary>
    internal AccessResult Write(CpuState cpu, ulong linear, int size, ulong value)
    {
        var r = TranslateSpan(cpu, linear, size, PageAccess.Write, out ulong g0, out int l0, out ulong g1);
        if (!r.IsOk) return r;
        return WriteTranslated(g0, l0, g1, size, value);
    }

    /// <summary>Writes a value to already-translated pages.</summary>
    internal AccessResult WriteTranslated(ulong g0, int l0, ulong g1, int size, ulong value)
    {
        if (WatchPage != ulong.MaxValue) { NoteWrite(g0, l0); if (l0 < size) NoteWrite(g1, size - l0); }
        if (l0 == size && Physical.TryGetSpan(g0, size, out var s)) { WriteLe(s, size, value); return AccessResult.Ok; }
        if (l0 == size && Physical.TryWriteMmio(g0, size, value & SizeMask(size))) return AccessResult.Ok;
        Span<byte> buf = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(buf, value);
        var r = WritePhysical(g0, buf[..l0]);
        if (r.IsOk && l0 < size) r = WritePhysical(g1, buf[l0..size]);
        return r;
    }

    /// <summary>Reads guest-physical bytes: RAM spans where possible, otherwise naturally sized MMIO reads.</summary>
    public AccessResult ReadPhysical(ulong gpa, Span<byte> dest)
    {
        if (Physical.TryGetReadSpan(gpa, dest.Length, out var s)) { s.CopyTo(dest); return AccessResult.Ok; }
        int off = 0;
        bool bytewise = false;
        while (off < dest.Length)
        {
            ulong a = gpa + (ulong)off;
            int n = bytewise ? 1 : Piece(a, dest.Length - off);
            if (Physical.TryGetReadSpan(a, n, out s)) s.CopyTo(dest.Slice(off, n));
            else if (Physical.TryReadMmio(a, n, out ulong v))
            {
                for (int i = 0; i < n; i++) dest[off + i] = (byte)(v >> (8 * i));
            }
            else if (n > 1) { bytewise = true; continue; } // maybe RAM and MMIO meet inside the piece: retry bytewise
            else return AccessResult.Unbacked(a);
            off += n;
        }
        return AccessResult.Ok;
    }

    /// <summary>Writes guest-physical bytes: RAM spans where possible, otherwise naturally sized MMIO writes.</summary>
    public AccessResult WritePhysical(ulong gpa, ReadOnlySpan<byte> src)
    {
        NoteWrite(gpa, src.Length);
        if (Physical.TryGetSpan(gpa, src.Length, out var s)) { src.CopyTo(s); return AccessResult.Ok; }
        int off = 0;
        bool bytewise = false;
        while (off < src.Length)
        {
            ulong a = gpa + (ulong)off;
            int n = bytewise ? 1 : Piece(a, src.Length - off);
            if (Physical.TryGetSpan(a, n, out s)) src.Slice(off, n).CopyTo(s);
            else
            {
                ulong v = 0;
                for (int i = 0; i < n; i++) v |= (ulong)src[off + i] << (8 * i);
                if (!Physical.TryWriteMmio(a, n, v))
                {
                    if (n > 1) { bytewise = true; continue; }
                    return AccessResult.Unbacked(a);
                }
            }
            off += n;
        }
        return AccessResult.Ok;
    }

    // Largest naturally aligned power-of-two piece (≤ 8) starting at a that fits in remaining.
    private static int Piece(ulong a, int remaining)
    {
        int n = 8;
        while (n > 1 && ((a & (ulong)(n - 1)) != 0 || n > remaining)) n >>= 1;
        return n;
    }

    internal static ulong SizeMask(int size) => size >= 8 ? ulong.MaxValue : (1ul << (8 * size)) - 1;

    internal static void WriteLe(Span<byte> s, int size, ulong v)
    {
        switch (size)
        {
            case 1: s[0] = (byte)v; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(s, (ushort)v); break;
            case 4: BinaryPrimitives.WriteUInt32LittleEndian(s, (uint)v); break;
            default: BinaryPrimitives.WriteUInt64LittleEndian(s, v); break;
        }
    }
}
