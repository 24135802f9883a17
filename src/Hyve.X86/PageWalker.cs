// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Hyve.X86;

/// <summary>What a linear-address access does, for permission checks (SDM Vol. 3 4.6).</summary>
[Flags]
public enum PageAccess
{
    /// <summary>Data read.</summary>
    Read = 0,
    /// <summary>Data write.</summary>
    Write = 1,
    /// <summary>Instruction fetch.</summary>
    Execute = 2,
    /// <summary>Implicit supervisor-mode access (descriptor tables, TSS): supervisor whatever the CPL, and SMAP applies regardless of RFLAGS.AC.</summary>
    Implicit = 4,
}

/// <summary>Outcome of a guest-memory access or translation, with the exception to deliver or the unbacked address.</summary>
/// <param name="Status">Ok, GuestFault or Unbacked.</param>
/// <param name="Exception">The exception to deliver when <paramref name="Status"/> is GuestFault.</param>
/// <param name="Address">The guest-physical address that no RAM or MMIO backs when <paramref name="Status"/> is Unbacked.</param>
public readonly record struct AccessResult(AccessStatus Status, PendingException Exception, ulong Address)
{
    /// <summary>Success.</summary>
    public static AccessResult Ok => default;
    /// <summary>True on success.</summary>
    public bool IsOk => Status == AccessStatus.Ok;
    /// <summary>A guest fault.</summary>
    public static AccessResult Fault(PendingException e) => new(AccessStatus.GuestFault, e, 0);
    /// <summary>An unbacked guest-physical address.</summary>
    public static AccessResult Unbacked(ulong gpa) => new(AccessStatus.Unbacked, default, gpa);
}

/// <summary>
/// Translates guest linear addresses to guest physical in every paging mode, with the permission and
/// reserved-bit checks of SDM Vol. 3 chapter 4. Paging structures are read from guest RAM through
/// <see cref="IGuestPhysicalMemory.TryGetSpan"/>; the faulting variant sets Accessed/Dirty atomically.
/// </summary>
public sealed class PageWalker
{
    private const ulong P = 1, RW = 2, US = 4, PS = 0x80, A = 0x20, D = 0x40;
    private const ulong XD = 1ul << 63;

    /// <summary>#PF error-code bits (SDM Vol. 3 Figure 4-12).</summary>
    public const uint PfPresent = 1, PfWrite = 2, PfUser = 4, PfReserved = 8, PfFetch = 16, PfProtectionKey = 32;

    private readonly IGuestPhysicalMemory _mem;

    /// <summary>Physical-address width (CPUID.80000008H:EAX[7:0]); entries with bits at or above it set fault with RSVD.</summary>
    public int MaxPhysAddr { get; }

    /// <summary>Creates a walker over guest memory with the given MAXPHYADDR (36..52).</summary>
    public PageWalker(IGuestPhysicalMemory memory, int maxPhysAddr = 48)
    {
        if (maxPhysAddr is < 32 or > 52) throw new ArgumentOutOfRangeException(nameof(maxPhysAddr));
        _mem = memory;
        MaxPhysAddr = maxPhysAddr;
    }

    /// <summary>The memory the walker reads paging structures from.</summary>
    public IGuestPhysicalMemory Memory => _mem;

    /// <summary>
    /// The translation cache consulted by <see cref="Translate"/> when set (the software CPU sets one per vCPU; an engine
    /// that only emulates single instructions for another CPU leaves it null, as it cannot see that CPU's invalidations).
    /// </summary>
    public Tlb? Tlb { get; set; }

    /// <summary>Translates as the processor does for an access: on success sets Accessed in every entry used and Dirty in the leaf for writes.</summary>
    public unsafe AccessResult Translate(CpuState cpu, ulong linear, PageAccess access, out ulong gpa)
    {
        if (Tlb is { } tlb) return tlb.Translate(cpu, linear, access, out gpa, out _, out _);
        return Walk(cpu, linear, access, true, out gpa, out _);
    }

    /// <summary>Translates identically but changes no entry; the result tells whether the access would fault (for debuggers).</summary>
    public AccessResult Probe(CpuState cpu, ulong linear, PageAccess access, out ulong gpa)
        => Walk(cpu, linear, access, false, out gpa, out _);

    /// <summary>A full walk that also reports what a TLB entry needs (rights, global, dirty, page size).</summary>
    internal AccessResult WalkForTlb(CpuState cpu, ulong linear, PageAccess access, out ulong gpa, out WalkInfo info)
        => Walk(cpu, linear, access, true, out gpa, out info);

    /// <summary>What a successful walk found, for filling a TLB entry.</summary>
    internal struct WalkInfo
    {
        public bool Rw, Us, Xd, Global, Dirty, PkUser;
        public ulong PageMask;
    }

    private AccessResult Walk(CpuState cpu, ulong la, PageAccess access, bool update, out ulong gpa, out WalkInfo info)
    {
        var mode = cpu.Paging;
        info = default;
        if (mode == PagingMode.None)
        {
            gpa = la & 0xffffffff; // without paging the linear address space is 32 bits
            if ((cpu.Efer & CpuState.EferLma) != 0) gpa = la;
            info.Rw = info.Us = info.Dirty = true;
            info.PageMask = 0xfff;
            return AccessResult.Ok;
        }
        bool write = (access & PageAccess.Write) != 0;
        bool fetch = (access & PageAccess.Execute) != 0;
        bool user = (access & PageAccess.Implicit) == 0 && cpu.Cpl == 3;
        bool nxe = (cpu.Efer & CpuState.EferNxe) != 0;
        int m = MaxPhysAddr;
        ulong physMask = (1ul << m) - 1;

        uint ec = (write ? PfWrite : 0) | (user ? PfUser : 0);
        if (fetch && ((cpu.Cr4 & CpuState.Cr4Smep) != 0 || (mode != PagingMode.Bits32 && nxe))) ec |= PfFetch;

        Span<ulong> entryAddr = stackalloc ulong[5];
        int levels = 0;
        bool rw = true, us = true, xd = false;
        ulong leaf = 0;
        ulong pageMask; // offset bits within the final page
        ulong frame;

        if (mode == PagingMode.Bits32)
        {
            la &= 0xffffffff;
            ulong pdeAddr = (cpu.Cr3 & 0xfffff000) | ((la >> 22) << 2);
            if (!Read32(pdeAddr, out ulong pde)) { gpa = pdeAddr; return AccessResult.Unbacked(pdeAddr); }
            if ((pde & P) == 0) { gpa = 0; return Fault(ec, la); }
            entryAddr[levels++] = pdeAddr;
            rw &= (pde & RW) != 0; us &= (pde & US) != 0;
            if ((pde & PS) != 0 && (cpu.Cr4 & CpuState.Cr4Pse) != 0)
            {
                // 4 MiB page; PSE-36 puts PA bits 39:32 in PDE bits 20:13 (limited to min(MAXPHYADDR, 40)).
                int m36 = Math.Min(m, 40);
                ulong rsvd = (1ul << 22) - (1ul << (m36 - 19));
                if ((pde & rsvd) != 0) { gpa = 0; return Fault(ec | PfPresent | PfReserved, la); }
                frame = (pde & 0xffc00000) | (((pde >> 13) & 0xff) << 32);
                pageMask = (1ul << 22) - 1;
                leaf = pde;
            }
            else
            {
                ulong pteAddr = (pde & 0xfffff000) | (((la >> 12) & 0x3ff) << 2);
                if (!Read32(pteAddr, out ulong pte)) { gpa = pteAddr; return AccessResult.Unbacked(pteAddr); }
                if ((pte & P) == 0) { gpa = 0; return Fault(ec, la); }
                entryAddr[levels++] = pteAddr;
                rw &= (pte & RW) != 0; us &= (pte & US) != 0;
                frame = pte & 0xfffff000;
                pageMask = 0xfff;
                leaf = pte;
            }
            gpa = 0;
            var r32 = CheckRights(cpu, la, ec, user, write, fetch, rw, us, false, 0, false, (access & PageAccess.Implicit) != 0);
            if (!r32.IsOk) return r32;
            if (update) SetAccessedDirty(entryAddr[..levels], write, true);
            gpa = (frame | (la & pageMask)) & physMask;
            FillInfo(ref info, cpu, leaf, rw, us, false, false, write, pageMask);
            return AccessResult.Ok;
        }

        ulong xdRsvd = nxe ? 0 : XD;
        ulong table;
        int level;
        // Reserved bits above MAXPHYADDR: 4-level/5-level reserve 51:M, PAE reserves 62:M.
        ulong highRsvd;
        if (mode == PagingMode.Pae)
        {
            la &= 0xffffffff;
            ulong pdpteAddr = (cpu.Cr3 & 0xffffffe0) + ((la >> 30) << 3);
            if (!Read64(pdpteAddr, out ulong pdpte)) { gpa = pdpteAddr; return AccessResult.Unbacked(pdpteAddr); }
            if ((pdpte & P) == 0) { gpa = 0; return Fault(ec, la); }
            ulong pdpteRsvd = ~physMask | 0x1e6; // 63:M, 8:5, 2:1
            if ((pdpte & pdpteRsvd) != 0) { gpa = 0; return Fault(ec | PfPresent | PfReserved, la); }
            // PDPTEs carry no R/W, U/S, XD or Accessed bit and are not updated.
            table = pdpte & physMask & ~0xffful;
            level = 2;
            highRsvd = ((1ul << 63) - 1) & ~physMask;
        }
        else
        {
            level = mode == PagingMode.Level5 ? 5 : 4;
            table = cpu.Cr3 & physMask & ~0xffful;
            highRsvd = ((1ul << 52) - 1) & ~physMask;
        }
        highRsvd |= xdRsvd;

        while (true)
        {
            int shift = 12 + 9 * (level - 1);
            ulong eAddr = table | (((la >> shift) & 0x1ff) << 3);
            if (!Read64(eAddr, out ulong e)) { gpa = eAddr; return AccessResult.Unbacked(eAddr); }
            if ((e & P) == 0) { gpa = 0; return Fault(ec, la); }
            ulong rsvd = highRsvd;
            bool large = (e & PS) != 0;
            if (level >= 4) rsvd |= PS; // PML5E/PML4E: PS reserved
            else if (large && level == 3) rsvd |= 0x3fffe000; // 1 GiB page: 29:13
            else if (large && level == 2) rsvd |= 0x1fe000; // 2 MiB page: 20:13
            if ((e & rsvd) != 0) { gpa = 0; return Fault(ec | PfPresent | PfReserved, la); }
            entryAddr[levels++] = eAddr;
            rw &= (e & RW) != 0; us &= (e & US) != 0;
            if (nxe) xd |= (e & XD) != 0;
            if (level == 1 || (large && level <= 3))
            {
                pageMask = (1ul << shift) - 1;
                frame = e & physMask & ~pageMask;
                leaf = e;
                break;
            }
            table = e & physMask & ~0xffful;
            level--;
        }
        gpa = 0;
        bool pk = mode >= PagingMode.Level4 && (cpu.Cr4 & CpuState.Cr4Pke) != 0;
        var r = CheckRights(cpu, la, ec, user, write, fetch, rw, us, xd, (int)((leaf >> 59) & 0xf), pk, (access & PageAccess.Implicit) != 0);
        if (!r.IsOk) return r;
        if (update) SetAccessedDirty(entryAddr[..levels], write, false);
        gpa = frame | (la & pageMask);
        FillInfo(ref info, cpu, leaf, rw, us, xd, pk, write, pageMask);
        return AccessResult.Ok;
    }

    private static void FillInfo(ref WalkInfo info, CpuState cpu, ulong leaf, bool rw, bool us, bool xd, bool pk, bool write, ulong pageMask)
    {
        const ulong G = 0x100;
        info.Rw = rw; info.Us = us; info.Xd = xd;
        info.Global = (leaf & G) != 0 && (cpu.Cr4 & Tlb.Cr4Pge) != 0;
        info.Dirty = write || (leaf & D) != 0;
        info.PkUser = pk && us;
        info.PageMask = pageMask;
    }

    private static AccessResult CheckRights(CpuState cpu, ulong la, uint ec, bool user, bool write, bool fetch,
        bool rw, bool us, bool xd, int pkey, bool pkEnabled, bool implicitAccess)
    {
        uint prot = ec | PfPresent;
        if (fetch)
        {
            if (xd) return Fault(prot, la);
            if (user) { if (!us) return Fault(prot, la); }
            else if (us && (cpu.Cr4 & CpuState.Cr4Smep) != 0) return Fault(prot, la);
            return AccessResult.Ok;
        }
        if (user)
        {
            if (!us || (write && !rw)) return Fault(prot, la);
        }
        else
        {
            // SMAP: explicit supervisor accesses to user pages are allowed only with RFLAGS.AC=1; implicit ones never.
            if (us && (cpu.Cr4 & CpuState.Cr4Smap) != 0 && (implicitAccess || cpu.Cpl == 3 || (cpu.Rflags & CpuState.FlagAc) == 0))
                return Fault(prot, la);
            if (write && !rw && (cpu.Cr0 & CpuState.Cr0Wp) != 0) return Fault(prot, la);
        }
        if (pkEnabled && us)
        {
            uint bits = cpu.Pkru >> (2 * pkey);
            bool ad = (bits & 1) != 0, wd = (bits & 2) != 0;
            if (ad || (write && wd && (user || (cpu.Cr0 & CpuState.Cr0Wp) != 0))) return Fault(prot | PfProtectionKey, la);
        }
        return AccessResult.Ok;
    }

    private static AccessResult Fault(uint ec, ulong la) => AccessResult.Fault(PendingException.PageFault(ec, la));

    private bool Read32(ulong gpa, out ulong v)
    {
        if (_mem.TryGetSpan(gpa, 4, out var s)) { v = Volatile.Read(ref Unsafe.As<byte, uint>(ref MemoryMarshal.GetReference(s))); return true; }
        v = 0; return false;
    }

    private bool Read64(ulong gpa, out ulong v)
    {
        if (_mem.TryGetSpan(gpa, 8, out var s)) { v = Volatile.Read(ref Unsafe.As<byte, ulong>(ref MemoryMarshal.GetReference(s))); return true; }
        v = 0; return false;
    }

    private void SetAccessedDirty(ReadOnlySpan<ulong> entries, bool write, bool is32)
    {
        for (int i = 0; i < entries.Length; i++)
        {
            long bits = (long)(A | (write && i == entries.Length - 1 ? D : 0));
            if (!_mem.TryGetSpan(entries[i], is32 ? 4 : 8, out var s)) continue;
            // Other vCPUs may update the same entry: set the bits with a locked OR, as the processor does.
            if (is32)
            {
                ref int e = ref Unsafe.As<byte, int>(ref MemoryMarshal.GetReference(s));
                if ((Volatile.Read(ref e) & (int)bits) != (int)bits) Interlocked.Or(ref e, (int)bits);
            }
            else
            {
                ref long e = ref Unsafe.As<byte, long>(ref MemoryMarshal.GetReference(s));
                if ((Volatile.Read(ref e) & bits) != bits) Interlocked.Or(ref e, bits);
            }
        }
    }

    /// <summary>Reads a little-endian value of 1..8 bytes from a span (helper shared with the engine).</summary>
    internal static ulong ReadLe(ReadOnlySpan<byte> s, int size) => size switch
    {
        1 => s[0],
        2 => BinaryPrimitives.ReadUInt16LittleEndian(s),
        4 => BinaryPrimitives.ReadUInt32LittleEndian(s),
        _ => BinaryPrimitives.ReadUInt64LittleEndian(s),
    };
}
