// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm;

/// <summary>
/// Where a CPU backend keeps dirty bits a <see cref="DirtyLog"/> must pull rather than receive (KVM's per-slot log,
/// KVM_GET_DIRTY_LOG).
/// </summary>
public interface IDirtyPageSource
{
    /// <summary>ORs into <paramref name="pages"/> (bit N = page N of <paramref name="segment"/>) the pages the guest wrote
    /// since the last call, and clears them at the source.</summary>
    void CollectDirty(MemSegment segment, Span<ulong> pages);
}

/// <summary>
/// Per-page dirty bits of one memory segment a device watches (the framebuffer), as bhyve's and QEMU's displays use
/// KVM's dirty log. The software CPU marks a page when its TLB maps it (<see cref="Mark"/>: once per page between two
/// harvests, on the fill, so the store path costs nothing), and each harvest drops the software TLBs' host pointers
/// (<see cref="GuestMemory.DirtyHarvested"/>) so that the next access marks again; KVM write-protects the slot and is
/// asked through <see cref="IDirtyPageSource"/>. A marking on a TLB fill is conservative (a read maps the page too),
/// never late: a page the guest wrote is marked no later than the write. A reader that may sleep calls <see cref="Arm"/>
/// and is woken through <see cref="Dirtied"/> by the first mark or <see cref="Poke"/> after it.
/// </summary>
public sealed class DirtyLog
{
    private readonly GuestMemory _memory;
    private readonly ulong[] _bits;
    private int _armed;

    internal DirtyLog(GuestMemory memory, MemSegment segment)
    {
        _memory = memory;
        Segment = segment;
        Pages = (int)(segment.Length >> 12);
        _bits = new ulong[(Pages + 63) / 64];
    }

    /// <summary>The segment watched.</summary>
    public MemSegment Segment { get; }
    /// <summary>Pages in the segment (bits in a harvest).</summary>
    public int Pages { get; }
    /// <summary>Words a harvest bitmap needs.</summary>
    public int Words => _bits.Length;

    /// <summary>True when marks arrive without asking (the software CPU), so a reader may sleep until <see cref="Dirtied"/>;
    /// false while a backend's log must be polled (KVM).</summary>
    public bool Notifies => _memory.DirtySource is null;

    /// <summary>Raised (on the marking thread) by the first mark or poke after <see cref="Arm"/>.</summary>
    public event Action? Dirtied;

    /// <summary>Marks the page at byte <paramref name="segOffset"/> of the segment.</summary>
    public void Mark(ulong segOffset)
    {
        ulong page = segOffset >> 12;
        if (page >= (ulong)Pages) return;
        ref ulong w = ref _bits[page >> 6];
        ulong bit = 1ul << (int)(page & 63);
        if ((Volatile.Read(ref w) & bit) != 0) return;
        Interlocked.Or(ref w, bit);
        if (Volatile.Read(ref _armed) != 0) Poke();
    }

    /// <summary>Wakes an armed reader without marking a page (the device changed something that is not in memory: a mode,
    /// a palette).</summary>
    public void Poke()
    {
        if (Interlocked.Exchange(ref _armed, 0) != 0) Dirtied?.Invoke();
    }

    /// <summary>Asks for one <see cref="Dirtied"/> at the next mark or poke; returns false (not armed) when pages are
    /// already marked, so the caller harvests instead of sleeping.</summary>
    public bool Arm()
    {
        Volatile.Write(ref _armed, 1);
        Interlocked.MemoryBarrier();
        foreach (ref ulong w in _bits.AsSpan())
            if (Volatile.Read(ref w) != 0)
            {
                Volatile.Write(ref _armed, 0);
                return false;
            }
        return true;
    }

    /// <summary>Moves the marked pages into <paramref name="pages"/> (overwritten; <see cref="Words"/> long) and clears
    /// them; returns true when any was marked. After a harvest that found pages, software TLBs drop their host pointers.</summary>
    public bool Harvest(Span<ulong> pages)
    {
        pages = pages[.._bits.Length];
        pages.Clear();
        _memory.DirtySource?.CollectDirty(Segment, pages);
        bool any = false;
        for (int i = 0; i < _bits.Length; i++)
        {
            ulong v = Volatile.Read(ref _bits[i]) == 0 ? 0 : Interlocked.Exchange(ref _bits[i], 0);
            pages[i] |= v;
            any |= pages[i] != 0;
        }
        if (any) _memory.RaiseDirtyHarvested();
        return any;
    }
}
