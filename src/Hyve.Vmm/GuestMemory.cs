// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Vmm.Control;
using Hyve.Vmm.Native;

namespace Hyve.Vmm;

/// <summary>Guest-physical access rights of a mapping (bhyve's PROT_* on vm_mmap_memseg).</summary>
[Flags]
public enum MemProt
{
    /// <summary>No access.</summary>
    None = 0,
    /// <summary>Readable.</summary>
    Read = 1,
    /// <summary>Writable.</summary>
    Write = 2,
    /// <summary>Executable.</summary>
    Exec = 4,
    /// <summary>Read, write and execute (system memory).</summary>
    All = Read | Write | Exec,
}

/// <summary>A memory segment: system memory, or a named device-memory segment such as "bootrom".
/// Backed by a memfd mapped once into the process; <see cref="Host"/> is that mapping.</summary>
public sealed unsafe class MemSegment
{
    internal MemSegment(int id, string name, ulong length, bool sysMem, int fd, byte* host)
    {
        Id = id; Name = name; Length = length; IsSysMem = sysMem; Fd = fd; Host = host;
    }

    /// <summary>Segment id (0 is system memory).</summary>
    public int Id { get; }
    /// <summary>Name ("sysmem" or the devmem name).</summary>
    public string Name { get; }
    /// <summary>Length in bytes (a multiple of 4 KiB).</summary>
    public ulong Length { get; }
    /// <summary>True for system memory.</summary>
    public bool IsSysMem { get; }
    /// <summary>The memfd backing the segment.</summary>
    public int Fd { get; }
    /// <summary>Host address of the segment's mapping.</summary>
    public byte* Host { get; }
    /// <summary>The mapping is a copy-on-write view of a snapshot file (<see cref="GuestMemory.MapFromFile"/>) rather
    /// than of <see cref="Fd"/>.</summary>
    public bool FromFile { get; internal set; }

    /// <summary>The segment's dirty-page log, once <see cref="GuestMemory.EnableDirtyLog"/> made one.</summary>
    public DirtyLog? DirtyLog { get; internal set; }

    /// <summary>The whole segment as a span (host side; for loaders and devices).</summary>
    public Span<byte> Span => new(Host, checked((int)Math.Min(Length, int.MaxValue)));

    /// <summary>Part of the segment as a span; throws on a range outside it (host-side use only).</summary>
    public Span<byte> Slice(ulong offset, int length)
    {
        if (offset > Length || (ulong)length > Length - offset) throw new ArgumentOutOfRangeException(nameof(offset));
        return new Span<byte>(Host + offset, length);
    }
}

/// <summary>One guest-physical mapping of (part of) a segment.</summary>
public sealed record GuestMapping(ulong Gpa, ulong Length, MemSegment Segment, ulong SegOffset, MemProt Prot)
{
    /// <summary>True when <paramref name="gpa"/> falls inside.</summary>
    public bool Contains(ulong gpa) => gpa >= Gpa && gpa - Gpa < Length;
}

/// <summary>
/// Guest memory: system memory split around the PCI hole (lowmem below 3 GiB, highmem from 4 GiB),
/// plus named device-memory segments that can be mapped, moved and unmapped at run time.
/// Everything is memfd-backed and mapped once; the guest-physical map records every mapping.
/// </summary>
public sealed unsafe class GuestMemory : IDisposable
{
    /// <summary>Where the PCI hole begins: system memory above this moves to 4 GiB.</summary>
    public const ulong LowMemLimit = 3ul << 30;
    /// <summary>Start of highmem.</summary>
    public const ulong HighMemBase = 4ul << 30;
    /// <summary>Largest guest memory accepted (1 TiB).</summary>
    public const ulong MaxSize = 1ul << 40;
    /// <summary>Smallest guest memory accepted (1 MiB: the real-mode address space every guest starts in, with the
    /// interrupt vectors, the BIOS data area and the shadowed ROM).</summary>
    public const ulong MinSize = 1ul << 20;

    private readonly List<MemSegment> _segments = [];
    private GuestMapping[] _map = [];
    private readonly object _gate = new();
    private readonly byte* _sys;
    private readonly bool _includeInCore;

    /// <summary>Raised after a mapping is added (true) or removed (false); the CPU backend mirrors it.</summary>
    public event Action<GuestMapping, bool>? MappingChanged;

    /// <summary>Raised after a dirty-log harvest found pages: software TLBs drop their host pointers so the next access
    /// marks again (see <see cref="DirtyLog"/>).</summary>
    public event Action? DirtyHarvested;

    /// <summary>The KVM backend's dirty log while it runs the VM (null: the software CPU marks pages itself).</summary>
    public IDirtyPageSource? DirtySource { get; set; }

    /// <summary>True once any segment has a dirty log (the software CPU then looks up the segment on each TLB fill).</summary>
    public bool DirtyLogging { get; private set; }

    /// <summary>Starts logging writes to <paramref name="seg"/> by page (before the VM runs, so every backend's mapping of it
    /// logs from the start); returns the log.</summary>
    public DirtyLog EnableDirtyLog(MemSegment seg)
    {
        ArgumentNullException.ThrowIfNull(seg);
        lock (_gate)
        {
            seg.DirtyLog ??= new DirtyLog(this, seg);
            DirtyLogging = true;
            return seg.DirtyLog;
        }
    }

    internal void RaiseDirtyHarvested() => DirtyHarvested?.Invoke();

    /// <summary>Marks the pages of [<paramref name="gpa"/>, +<paramref name="length"/>) in the dirty log of the segment
    /// mapped there, if it has one (the software CPU's TLB fills and the engine's span writes call this).</summary>
    public void MarkDirty(ulong gpa, int length)
    {
        if (!DirtyLogging || length <= 0 || FindMapping(gpa) is not { Segment.DirtyLog: { } log } m) return;
        ulong end = Math.Min(gpa + (ulong)length, m.Gpa + m.Length);
        for (ulong p = gpa & ~0xffful; p < end; p += 0x1000) log.Mark(m.SegOffset + (Math.Max(p, m.Gpa) - m.Gpa));
    }

    /// <summary>Allocates <paramref name="size"/> bytes of system memory (rounded up to 4 KiB) and maps it.</summary>
    public GuestMemory(ulong size, bool includeInCore = false)
    {
        if (size == 0 || size > MaxSize) throw new ArgumentOutOfRangeException(nameof(size), $"memory size {size} out of range");
        size = (size + 0xfff) & ~0xffful;
        Size = size;
        LowMemSize = Math.Min(size, LowMemLimit);
        HighMemSize = size - LowMemSize;
        _includeInCore = includeInCore;
        var seg = CreateSegment("sysmem", size, sysMem: true, includeInCore);
        _sys = seg.Host;
        AddMapping(new GuestMapping(0, LowMemSize, seg, 0, MemProt.All));
        if (HighMemSize > 0) AddMapping(new GuestMapping(HighMemBase, HighMemSize, seg, LowMemSize, MemProt.All));
    }

    /// <summary>Total system memory in bytes.</summary>
    public ulong Size { get; }
    /// <summary>System memory below 3 GiB.</summary>
    public ulong LowMemSize { get; }
    /// <summary>System memory at 4 GiB and above.</summary>
    public ulong HighMemSize { get; }
    /// <summary>The system memory segment.</summary>
    public MemSegment SysMem => _segments[0];
    /// <summary>All segments by id.</summary>
    public IReadOnlyList<MemSegment> Segments => _segments;
    /// <summary>The current guest-physical map.</summary>
    public IReadOnlyList<GuestMapping> Mappings => Volatile.Read(ref _map);

    /// <summary>Creates a named device-memory segment (bhyve's devmem, e.g. "bootrom").</summary>
    public MemSegment CreateDevMem(string name, ulong length)
    {
        if (length == 0 || (length & 0xfff) != 0) throw new ArgumentException($"devmem {name}: length must be a non-zero multiple of 4 KiB");
        lock (_gate)
            foreach (var s in _segments)
                if (s.Name == name) throw new InvalidOperationException($"devmem {name} exists");
        return CreateSegment(name, length, sysMem: false, includeInCore: true);
    }

    /// <summary>
    /// Replaces a segment's contents with a copy-on-write view of the segment's length of a file at
    /// <paramref name="fileOffset"/> (MAP_PRIVATE over the same host addresses): pages are read from the file when first
    /// touched and copied when first written, so a restore costs one mmap rather than a read of guest RAM
    /// (Firecracker's approach). Holes in the file read as zero pages.
    /// </summary>
    public void MapFromFile(MemSegment seg, int fd, long fileOffset)
    {
        ArgumentNullException.ThrowIfNull(seg);
        if ((fileOffset & 0xfff) != 0) throw new ArgumentException("file offset must be page aligned");
        nint p = Libc.Mmap((nint)seg.Host, (nuint)seg.Length, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapFixed | Libc.MapNoReserve, fd, fileOffset);
        if (p == Libc.MapFailed || p != (nint)seg.Host)
            throw new IOException($"cannot map {seg.Name} from the snapshot: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
        // A new mapping loses MADV_DONTDUMP: guest RAM stays out of hyve's core dumps unless -C asked for it.
        if (!_includeInCore && seg.IsSysMem) Libc.Madvise(p, (nuint)seg.Length, Libc.MadvDontDump);
        seg.FromFile = true;
    }

    /// <summary>Maps [<paramref name="segOffset"/>, +<paramref name="length"/>) of a segment at <paramref name="gpa"/>.</summary>
    public GuestMapping Map(MemSegment seg, ulong segOffset, ulong gpa, ulong length, MemProt prot)
    {
        if (((gpa | segOffset | length) & 0xfff) != 0 || length == 0) throw new ArgumentException("mapping must be page aligned and non-empty");
        if (segOffset > seg.Length || length > seg.Length - segOffset) throw new ArgumentException("mapping exceeds its segment");
        var m = new GuestMapping(gpa, length, seg, segOffset, prot);
        AddMapping(m);
        return m;
    }

    /// <summary>Removes a mapping (the segment and its contents stay).</summary>
    public void Unmap(GuestMapping mapping)
    {
        lock (_gate)
        {
            var list = new List<GuestMapping>(_map);
            if (!list.Remove(mapping)) return;
            Volatile.Write(ref _map, list.ToArray());
        }
        MappingChanged?.Invoke(mapping, false);
    }

    /// <summary>Moves a mapping to another guest-physical address (a PCI BAR being reprogrammed).</summary>
    public GuestMapping Move(GuestMapping mapping, ulong newGpa)
    {
        Unmap(mapping);
        return Map(mapping.Segment, mapping.SegOffset, newGpa, mapping.Length, mapping.Prot);
    }

    /// <summary>
    /// Host span for guest-physical [<paramref name="gpa"/>, +<paramref name="length"/>) when it lies inside one
    /// mapping with the needed access; false for MMIO, holes, or a range that straddles mappings.
    /// </summary>
    public bool TryGetSpan(ulong gpa, int length, MemProt need, out Span<byte> span)
    {
        ulong len = (ulong)length;
        if (length >= 0)
        {
            // Fast paths: lowmem and highmem are one segment mapped read/write/execute.
            if (gpa < LowMemSize && len <= LowMemSize - gpa)
            {
                span = new Span<byte>(_sys + gpa, length);
                return true;
            }
            if (gpa >= HighMemBase && gpa - HighMemBase < HighMemSize && len <= HighMemSize - (gpa - HighMemBase))
            {
                span = new Span<byte>(_sys + LowMemSize + (gpa - HighMemBase), length);
                return true;
            }
            var map = Volatile.Read(ref _map);
            for (int i = 0; i < map.Length; i++)
            {
                var m = map[i];
                if (!m.Contains(gpa) || len > m.Length - (gpa - m.Gpa) || (m.Prot & need) != need) continue;
                span = new Span<byte>(m.Segment.Host + m.SegOffset + (gpa - m.Gpa), length);
                return true;
            }
        }
        span = default;
        return false;
    }

    /// <summary>The mapping holding <paramref name="gpa"/>, if any.</summary>
    public GuestMapping? FindMapping(ulong gpa)
    {
        var map = Volatile.Read(ref _map);
        foreach (var m in map) if (m.Contains(gpa)) return m;
        return null;
    }

    /// <summary>bhyvectl --get-memseg view.</summary>
    public IReadOnlyList<MemSegInfo> SegmentInfo()
    {
        var list = new List<MemSegInfo>();
        foreach (var s in _segments) list.Add(new MemSegInfo(s.Id, s.Length, s.IsSysMem, s.IsSysMem ? "" : s.Name));
        return list;
    }

    /// <summary>bhyvectl --get-memmap view.</summary>
    public IReadOnlyList<MemMapInfo> MapInfo()
    {
        var list = new List<MemMapInfo>();
        foreach (var m in Mappings) list.Add(new MemMapInfo(m.Gpa, m.Length, m.Segment.Id, m.SegOffset, (int)m.Prot));
        list.Sort((a, b) => a.Gpa.CompareTo(b.Gpa));
        return list;
    }

    private void AddMapping(GuestMapping m)
    {
        lock (_gate)
        {
            foreach (var o in _map)
                if (m.Gpa < o.Gpa + o.Length && o.Gpa < m.Gpa + m.Length)
                    throw new InvalidOperationException($"mapping at 0x{m.Gpa:x} overlaps {o.Segment.Name} at 0x{o.Gpa:x}");
            var next = new GuestMapping[_map.Length + 1];
            _map.CopyTo(next, 0);
            next[^1] = m;
            Volatile.Write(ref _map, next);
        }
        MappingChanged?.Invoke(m, true);
    }

    private MemSegment CreateSegment(string name, ulong length, bool sysMem, bool includeInCore)
    {
        int fd = Libc.MemfdCreate("hyve-" + name);
        if (fd < 0) throw new IOException($"memfd_create: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
        if (Libc.Ftruncate(fd, (long)length) != 0)
        {
            int e = Marshal.GetLastPInvokeError();
            Libc.Close(fd);
            throw new IOException($"cannot size {name} to {length} bytes: {Libc.ErrnoText(e)}");
        }
        nint p = Libc.Mmap(0, (nuint)length, Libc.ProtRead | Libc.ProtWrite, Libc.MapShared | Libc.MapNoReserve, fd, 0);
        if (p == Libc.MapFailed)
        {
            int e = Marshal.GetLastPInvokeError();
            Libc.Close(fd);
            throw new IOException($"cannot map {name} ({length} bytes): {Libc.ErrnoText(e)}");
        }
        if (!includeInCore) Libc.Madvise(p, (nuint)length, Libc.MadvDontDump);
        MemSegment seg;
        lock (_gate)
        {
            seg = new MemSegment(_segments.Count, name, length, sysMem, fd, (byte*)p);
            _segments.Add(seg);
        }
        return seg;
    }

    /// <summary>Unmaps and closes every segment.</summary>
    public void Dispose()
    {
        foreach (var s in _segments)
        {
            Libc.Munmap((nint)s.Host, (nuint)s.Length);
            Libc.Close(s.Fd);
        }
        _segments.Clear();
    }
}
