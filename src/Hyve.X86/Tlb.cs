// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.X86;

/// <summary>
/// A software TLB for one vCPU: linear page to guest-physical page (and, over <see cref="IGuestHostMemory"/>, to the host
/// address of the page), with the rights the walk found, tagged by PCID and the global bit. It is invalidated as SDM Vol. 3
/// 4.10.4 says a processor's TLB is: MOV to CR3 (non-global entries; with CR4.PCIDE only the new PCID's, and not at all
/// when bit 63 of the source is set), INVLPG (the page, global or not, in every PCID), and any change of CR0.PG/WP/PE,
/// CR4.PSE/PAE/PGE/PCIDE/SMEP/SMAP/PKE/LA57 or EFER.NXE/LME/LMA (everything). Like hardware it is not invalidated when a
/// guest edits a paging entry: until INVLPG or a CR3 write the old translation may be used. Accessed and Dirty bits are set
/// by the walk that fills an entry; a write through an entry filled while the page was clean walks again to set Dirty.
/// </summary>
/// <remarks>
/// Control-register changes made outside the engine (a debugger, a snapshot restore, INIT) are noticed on the next
/// lookup by comparing the registers with the ones the TLB last saw, so no caller has to remember to flush.
/// </remarks>
public sealed unsafe class Tlb
{
    /// <summary>CR4.PGE (global pages).</summary>
    public const ulong Cr4Pge = 1ul << 7;

    private const int Size = 512;
    private const ulong Cr0Relevant = CpuState.Cr0Pg | CpuState.Cr0Wp | CpuState.Cr0Pe;
    private const ulong Cr4Relevant = CpuState.Cr4Pse | CpuState.Cr4Pae | Cr4Pge | CpuState.Cr4Pcide | CpuState.Cr4Smep
        | CpuState.Cr4Smap | CpuState.Cr4Pke | CpuState.Cr4La57;
    private const ulong EferRelevant = CpuState.EferNxe | CpuState.EferLme | CpuState.EferLma;

    private struct Entry
    {
        public ulong Vpn1;      // linear page number + 1; 0 = empty
        public ulong GpaPage;
        public byte* Host;      // host address of the 4 KiB guest-physical page, or null (MMIO, unbacked, no host memory)
        public ulong LargeMask; // offset mask of the page the walk found (0xfff, or a large page's)
        public ulong Gen;
        public ushort Pcid;
        public byte Allowed;    // bit (user ? 3 : 0) + (fetch ? 2 : write ? 1 : 0): that access needs no walk
        public bool Global;
        public bool Writable;   // Host may be written (RAM rather than ROM)
    }

    private readonly Entry[] _e = new Entry[Size];
    private readonly PageWalker _walker;
    private readonly IGuestHostMemory? _host;
    private readonly MapVersion? _version;
    private int _seenVersion;
    private ulong _gen = 1, _globalGen = 1;
    private ulong _cr0 = ulong.MaxValue, _cr3, _cr4, _efer;
    private ushort _pcid;
    private bool _hasLarge;

    /// <summary>Creates a TLB that fills through <paramref name="walker"/> and attaches itself to it.</summary>
    public Tlb(PageWalker walker)
    {
        _walker = walker;
        _host = walker.Memory as IGuestHostMemory;
        _version = _host?.Version;
        walker.Tlb = this;
    }

    /// <summary>Changes whenever any entry may have been dropped (callers caching a translation compare it).</summary>
    public ulong Epoch { get; private set; }

    /// <summary>True while the guest-physical map the host pointers come from is the one the entries were made under
    /// (a moved BAR or remapped segment changes it; the next translation then drops everything and moves the epoch).</summary>
    public bool MapUnchanged => _version is null || Volatile.Read(ref _version.Value) == _seenVersion;

    /// <summary>Lookups that needed a page walk (for tests and statistics).</summary>
    public long Walks { get; private set; }

    /// <summary>
    /// Translates <paramref name="la"/> for <paramref name="access"/>: from a cached entry when it allows the access, by a
    /// page walk (which sets A/D, faults as the walker does, and refills the entry) otherwise.
    /// </summary>
    public AccessResult Translate(CpuState cpu, ulong la, PageAccess access, out ulong gpa, out byte* host, out bool writable)
    {
        Sync(cpu);
        ulong vpn = la >> 12;
        ref var e = ref _e[(int)(vpn & (Size - 1))];
        int bit = ((access & PageAccess.Execute) != 0 ? 2 : (int)(access & PageAccess.Write))
            + ((access & PageAccess.Implicit) == 0 && cpu.Cpl == 3 ? 3 : 0);
        if (e.Vpn1 == vpn + 1 && ((e.Allowed >> bit) & 1) != 0 && ((e.Gen == _gen && e.Pcid == _pcid) || (e.Global && e.Gen >= _globalGen)))
        {
            gpa = e.GpaPage | (la & 0xfff);
            host = e.Host;
            writable = e.Writable;
            return AccessResult.Ok;
        }
        return Fill(cpu, la, access, ref e, out gpa, out host, out writable);
    }

    private AccessResult Fill(CpuState cpu, ulong la, PageAccess access, ref Entry e, out ulong gpa, out byte* host, out bool writable)
    {
        Walks++;
        host = null;
        writable = false;
        var r = _walker.WalkForTlb(cpu, la, access, out gpa, out var info);
        if (!r.IsOk) return r;
        e.Vpn1 = (la >> 12) + 1;
        e.GpaPage = gpa & ~0xffful;
        e.LargeMask = info.PageMask;
        if (info.PageMask != 0xfff) _hasLarge = true;
        e.Global = info.Global;
        e.Pcid = _pcid;
        e.Gen = _gen;
        e.Allowed = Rights(cpu, info);
        e.Host = _host is null ? null : _host.HostPage(e.GpaPage, out e.Writable);
        if (e.Host == null) e.Writable = false;
        host = e.Host;
        writable = e.Writable;
        return r;
    }

    // Which accesses the entry may serve without a walk. Anything the cache cannot decide alone (SMAP, whose answer depends
    // on RFLAGS.AC; protection keys, which depend on PKRU; a write to a clean page, which must set Dirty) is left to a walk,
    // which faults or succeeds exactly as the walker does.
    private static byte Rights(CpuState cpu, in PageWalker.WalkInfo i)
    {
        bool wp = (cpu.Cr0 & CpuState.Cr0Wp) != 0;
        bool smap = (cpu.Cr4 & CpuState.Cr4Smap) != 0, smep = (cpu.Cr4 & CpuState.Cr4Smep) != 0;
        int a = 0;
        if (!i.PkUser && !(i.Us && smap))
        {
            a |= 1;
            if ((i.Rw || !wp) && i.Dirty) a |= 2;
        }
        if (!i.Xd && !(i.Us && smep)) a |= 4;
        if (i.Us)
        {
            if (!i.PkUser)
            {
                a |= 8;
                if (i.Rw && i.Dirty) a |= 16;
            }
            if (!i.Xd) a |= 32;
        }
        return (byte)a;
    }

    // Notices control-register and guest-map changes made since the last lookup.
    private void Sync(CpuState cpu)
    {
        if (cpu.Cr0 != _cr0 || cpu.Cr3 != _cr3 || cpu.Cr4 != _cr4 || cpu.Efer != _efer
            || (_version is not null && Volatile.Read(ref _version.Value) != _seenVersion))
            Resync(cpu);
    }

    private void Resync(CpuState cpu)
    {
        bool all = ((cpu.Cr0 ^ _cr0) & Cr0Relevant) != 0 || ((cpu.Cr4 ^ _cr4) & Cr4Relevant) != 0 || ((cpu.Efer ^ _efer) & EferRelevant) != 0
            || cpu.Cr3 != _cr3; // a CR3 changed behind the engine's back (debugger, restore): drop everything
        if (_version is not null)
        {
            int v = Volatile.Read(ref _version.Value);
            if (v != _seenVersion) { _seenVersion = v; all = true; }
        }
        _cr0 = cpu.Cr0; _cr3 = cpu.Cr3; _cr4 = cpu.Cr4; _efer = cpu.Efer;
        Epoch++;
        _pcid = (ushort)((cpu.Cr4 & CpuState.Cr4Pcide) != 0 ? cpu.Cr3 & 0xfff : 0);
        if (all) FlushAll();
    }

    /// <summary>Drops every entry, global ones too.</summary>
    public void FlushAll()
    {
        _gen++;
        _globalGen = _gen;
        _hasLarge = false;
        Epoch++;
    }

    /// <summary>
    /// MOV to CR3 (after the engine stored the new CR3): without CR4.PCIDE drops every non-global entry; with it drops the
    /// new PCID's non-global entries unless <paramref name="noFlush"/> (source bit 63) is set (SDM Vol. 3 4.10.4.1).
    /// </summary>
    public void MovToCr3(CpuState cpu, bool noFlush)
    {
        Sync(cpu); // CR0/CR4 changes first; a CR3 difference alone is handled here rather than as a full flush
        _cr3 = cpu.Cr3;
        Epoch++;
        bool pcide = (cpu.Cr4 & CpuState.Cr4Pcide) != 0;
        _pcid = (ushort)(pcide ? cpu.Cr3 & 0xfff : 0);
        if (noFlush && pcide) return;
        if (!pcide) { _gen++; return; }
        for (int k = 0; k < Size; k++)
        {
            ref var e = ref _e[k];
            if (!e.Global && e.Pcid == _pcid) e.Vpn1 = 0;
        }
    }

    /// <summary>INVLPG: drops the entries of the page holding <paramref name="la"/> (global too, any PCID, the whole large page).</summary>
    public void InvalidatePage(ulong la)
    {
        ulong vpn = la >> 12;
        ref var e = ref _e[(int)(vpn & (Size - 1))];
        if (e.Vpn1 == vpn + 1) e.Vpn1 = 0;
        Epoch++;
        if (!_hasLarge) return;
        for (int k = 0; k < Size; k++)
        {
            ref var x = ref _e[k];
            if (x.Vpn1 != 0 && x.LargeMask != 0xfff && ((((x.Vpn1 - 1) << 12) ^ la) & ~x.LargeMask) == 0) x.Vpn1 = 0;
        }
    }
}
