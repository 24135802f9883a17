// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Hyve.Vmm;

namespace Hyve.Virtio;

/// <summary>Saved state of one split virtqueue (the explicit fields a snapshot needs).</summary>
public readonly record struct VirtqueueState(ushort Size, bool Enabled, ulong Desc, ulong Driver, ulong Device,
    ushort MsixVector, ushort LastAvail, ushort UsedIdx, bool ResetPending);

/// <summary>What <see cref="Virtqueue.Pop"/> found.</summary>
public enum PopResult
{
    /// <summary>No new buffer in the available ring.</summary>
    Empty,
    /// <summary>A checked descriptor chain is in the chain object.</summary>
    Chain,
    /// <summary>The guest broke the ring's rules; <see cref="Virtqueue.Error"/> says how. The device must need reset.</summary>
    Broken,
}

/// <summary>
/// One descriptor chain taken from a queue, flattened and checked: every element lies wholly inside guest RAM
/// (readable elements readable, writable ones writable), none is empty, device-readable elements come before
/// device-writable ones. Arrays are preallocated per queue, so taking a chain allocates nothing.
/// </summary>
public sealed class DescriptorChain
{
    internal readonly ulong[] Addr;
    internal readonly uint[] Len;
    private readonly GuestMemory _memory;

    internal DescriptorChain(GuestMemory memory, int capacity)
    {
        _memory = memory;
        Addr = new ulong[capacity];
        Len = new uint[capacity];
    }

    /// <summary>Index of the head descriptor (what goes back in the used ring).</summary>
    public ushort Head { get; internal set; }
    /// <summary>Number of elements.</summary>
    public int Count { get; internal set; }
    /// <summary>Index of the first device-writable element (== Count when none).</summary>
    public int FirstWritable { get; internal set; }
    /// <summary>Bytes in the device-readable elements.</summary>
    public long ReadableBytes { get; internal set; }
    /// <summary>Bytes in the device-writable elements.</summary>
    public long WritableBytes { get; internal set; }

    /// <summary>Guest address of element <paramref name="i"/>.</summary>
    public ulong Address(int i) => Addr[i];
    /// <summary>Length of element <paramref name="i"/>.</summary>
    public uint Length(int i) => Len[i];
    /// <summary>True when element <paramref name="i"/> is device-writable.</summary>
    public bool IsWritable(int i) => i >= FirstWritable;

    /// <summary>Host span of element <paramref name="i"/> (false if the guest's memory map changed under it).</summary>
    public bool TryGetSpan(int i, out Span<byte> span) =>
        _memory.TryGetSpan(Addr[i], (int)Len[i], i >= FirstWritable ? MemProt.Write : MemProt.Read, out span);

    /// <summary>Copies up to <paramref name="dest"/>.Length readable bytes starting at byte <paramref name="offset"/> of the
    /// readable part; returns how many were copied.</summary>
    public int ReadReadable(long offset, Span<byte> dest)
    {
        int done = 0;
        for (int i = 0; i < FirstWritable && done < dest.Length; i++)
        {
            if (offset >= Len[i]) { offset -= Len[i]; continue; }
            if (!TryGetSpan(i, out var s)) return done;
            int n = (int)Math.Min(s.Length - offset, dest.Length - done);
            s.Slice((int)offset, n).CopyTo(dest[done..]);
            done += n;
            offset = 0;
        }
        return done;
    }

    /// <summary>Copies <paramref name="src"/> into the writable part starting at byte <paramref name="offset"/>; returns bytes written.</summary>
    public int WriteWritable(long offset, ReadOnlySpan<byte> src)
    {
        int done = 0;
        for (int i = FirstWritable; i < Count && done < src.Length; i++)
        {
            if (offset >= Len[i]) { offset -= Len[i]; continue; }
            if (!TryGetSpan(i, out var s)) return done;
            int n = (int)Math.Min(s.Length - offset, src.Length - done);
            src.Slice(done, n).CopyTo(s[(int)offset..]);
            done += n;
            offset = 0;
        }
        return done;
    }
}

/// <summary>
/// A split virtqueue (virtio 1.2 section 2.7): descriptor table, driver (available) ring and device (used) ring in
/// guest memory. Every index, address and length the guest supplies is checked before use: a head or next index out
/// of range, a chain longer than the queue (which is also how a loop shows), a nested or malformed indirect table, an
/// empty element, an element outside RAM (MMIO, holes, past the end) or a writable one in read-only memory (ROM),
/// readable elements after writable ones, an available index that runs more than the queue size ahead, and rings that
/// are not in writable RAM all end in <see cref="PopResult.Broken"/> with a fixed reason, never an exception.
/// The fields are the whole queue state (see <see cref="Save"/>).
/// </summary>
public sealed class Virtqueue
{
    /// <summary>VIRTQ_DESC_F_NEXT.</summary>
    public const ushort DescNext = 1;
    /// <summary>VIRTQ_DESC_F_WRITE.</summary>
    public const ushort DescWrite = 2;
    /// <summary>VIRTQ_DESC_F_INDIRECT.</summary>
    public const ushort DescIndirect = 4;
    /// <summary>VIRTQ_AVAIL_F_NO_INTERRUPT.</summary>
    public const ushort AvailNoInterrupt = 1;
    /// <summary>VIRTIO_MSI_NO_VECTOR.</summary>
    public const ushort NoVector = 0xffff;

    private readonly GuestMemory _memory;

    /// <summary>Creates queue <paramref name="index"/> of at most <paramref name="maxSize"/> entries (a power of two up to 32768).</summary>
    public Virtqueue(GuestMemory memory, int index, ushort maxSize)
    {
        if (maxSize == 0 || maxSize > 32768 || (maxSize & (maxSize - 1)) != 0) throw new ArgumentOutOfRangeException(nameof(maxSize));
        _memory = memory;
        Index = index;
        MaxSize = maxSize;
        Chain = new DescriptorChain(memory, maxSize);
        Reset();
    }

    /// <summary>Queue index within its device.</summary>
    public int Index { get; }
    /// <summary>Largest size the device offers.</summary>
    public ushort MaxSize { get; }
    /// <summary>The chain object <see cref="Pop"/> fills (reused).</summary>
    public DescriptorChain Chain { get; }

    /// <summary>Queue size the driver chose (power of two, at most <see cref="MaxSize"/>).</summary>
    public ushort Size;
    /// <summary>queue_enable (modern) or a non-zero PFN (legacy).</summary>
    public bool Enabled;
    /// <summary>Guest address of the descriptor table.</summary>
    public ulong Desc;
    /// <summary>Guest address of the driver (available) ring.</summary>
    public ulong Driver;
    /// <summary>Guest address of the device (used) ring.</summary>
    public ulong Device;
    /// <summary>MSI-X vector, or <see cref="NoVector"/>.</summary>
    public ushort MsixVector;
    /// <summary>The next available-ring index the device will read.</summary>
    public ushort LastAvail;
    /// <summary>The device's used-ring index (the next it will publish).</summary>
    public ushort UsedIdx;
    /// <summary>queue_reset reads 1 from a reset until the driver enables the queue again (VIRTIO_F_RING_RESET).</summary>
    public bool ResetPending;
    /// <summary>VIRTIO_F_RING_EVENT_IDX negotiated.</summary>
    public bool EventIdx;
    /// <summary>VIRTIO_F_INDIRECT_DESC negotiated.</summary>
    public bool IndirectDesc;
    /// <summary>The eventfd a notify signals (-1 before the device's I/O thread exists).</summary>
    public int NotifyFd = -1;

    /// <summary>Why the queue broke (a fixed string; null while healthy).</summary>
    public string? Error { get; private set; }

    /// <summary>Back to the reset state: disabled, size = max, no vector, indices zero.</summary>
    public void Reset()
    {
        Size = MaxSize;
        Enabled = false;
        Desc = Driver = Device = 0;
        MsixVector = NoVector;
        LastAvail = UsedIdx = 0;
        ResetPending = false;
        Error = null;
    }

    /// <summary>The queue's state for a snapshot.</summary>
    public VirtqueueState Save() => new(Size, Enabled, Desc, Driver, Device, MsixVector, LastAvail, UsedIdx, ResetPending);

    /// <summary>Restores <see cref="Save"/>'s state.</summary>
    public void Restore(VirtqueueState s)
    {
        if (s.Size == 0 || s.Size > MaxSize || (s.Size & (s.Size - 1)) != 0) throw new InvalidDataException($"virtqueue {Index}: bad size {s.Size}");
        (Size, Enabled, Desc, Driver, Device, MsixVector, LastAvail, UsedIdx, ResetPending) =
            (s.Size, s.Enabled, s.Desc, s.Driver, s.Device, s.MsixVector, s.LastAvail, s.UsedIdx, s.ResetPending);
        Error = null;
    }

    /// <summary>Bytes of the descriptor table, driver ring and device ring for the current size.</summary>
    public int DescBytes => 16 * Size;
    /// <summary>Bytes of the driver ring (flags, idx, ring, used_event).</summary>
    public int DriverBytes => 6 + 2 * Size;
    /// <summary>Bytes of the device ring (flags, idx, ring, avail_event).</summary>
    public int DeviceBytes => 6 + 8 * Size;

    /// <summary>Sets the three ring addresses the legacy interface derives from a page frame number (virtio 0.9.5 layout).</summary>
    public void SetLegacyPfn(uint pfn)
    {
        Desc = (ulong)pfn << 12;
        Driver = Desc + (ulong)DescBytes;
        Device = (Driver + (ulong)DriverBytes + 4095) & ~4095ul;
        Enabled = pfn != 0;
    }

    /// <summary>Checks that the rings lie in RAM (the device ring writable) and are aligned; false with <see cref="Error"/> set otherwise.</summary>
    public bool CheckRings()
    {
        if ((Desc & 15) != 0 || (Driver & 1) != 0 || (Device & 3) != 0) return Fail("ring address misaligned");
        if (!_memory.TryGetSpan(Desc, DescBytes, MemProt.Read, out _)) return Fail("descriptor table outside guest RAM");
        if (!_memory.TryGetSpan(Driver, DriverBytes, MemProt.Read, out _)) return Fail("driver ring outside guest RAM");
        if (!_memory.TryGetSpan(Device, DeviceBytes, MemProt.Write, out _)) return Fail("device ring outside writable guest RAM");
        return true;
    }

    /// <summary>Marks the queue broken for a device-level rule the guest broke (a request without its header, say).</summary>
    public void MarkBroken(string reason) => Error ??= reason;

    private bool Fail(string reason)
    {
        Error ??= reason;
        return false;
    }

    private PopResult Broken(string reason)
    {
        Error ??= reason;
        return PopResult.Broken;
    }

    /// <summary>Takes the next available chain into <see cref="Chain"/>, checking all of it.</summary>
    public PopResult Pop()
    {
        if (Error is not null) return PopResult.Broken;
        if (!Enabled) return PopResult.Empty;
        if (!_memory.TryGetSpan(Driver, DriverBytes, MemProt.Read, out var avail)) return Broken("driver ring outside guest RAM");
        ushort availIdx = Volatile.Read(ref Unsafe16(avail, 2));
        ushort pending = (ushort)(availIdx - LastAvail);
        if (pending == 0) return PopResult.Empty;
        if (pending > Size) return Broken("available index ran more than the queue size ahead");
        // The ring entry is read after the index (x86 keeps loads in order; Volatile stops the compiler reordering).
        ushort head = BinaryPrimitives.ReadUInt16LittleEndian(avail.Slice(4 + 2 * (LastAvail & (Size - 1))));
        if (head >= Size) return Broken("head descriptor index out of range");
        if (!_memory.TryGetSpan(Desc, DescBytes, MemProt.Read, out var table)) return Broken("descriptor table outside guest RAM");
        var r = Walk(table, head);
        if (r != PopResult.Chain) return r;
        LastAvail++;
        return PopResult.Chain;
    }

    private PopResult Walk(Span<byte> table, ushort head)
    {
        var c = Chain;
        c.Head = head;
        c.Count = 0;
        c.FirstWritable = -1;
        c.ReadableBytes = c.WritableBytes = 0;
        int max = Size; // a chain, indirect elements included, is at most the queue size long (spec 2.7.5.3.1)
        Span<byte> tab = table;
        int tabEntries = Size;
        int i = head;
        bool inIndirect = false;
        while (true)
        {
            var d = tab.Slice(16 * i, 16);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(d);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(d[8..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d[12..]);
            ushort next = BinaryPrimitives.ReadUInt16LittleEndian(d[14..]);
            if ((flags & DescIndirect) != 0)
            {
                if (!IndirectDesc) return Broken("indirect descriptor without VIRTIO_F_INDIRECT_DESC");
                if (inIndirect) return Broken("indirect descriptor inside an indirect table");
                if ((flags & DescNext) != 0) return Broken("indirect descriptor with NEXT set");
                if (len == 0 || (len & 15) != 0 || len / 16 > (uint)max) return Broken("indirect table length invalid");
                if ((addr & 15) != 0 || !_memory.TryGetSpan(addr, (int)len, MemProt.Read, out tab))
                    return Broken("indirect table outside guest RAM");
                tabEntries = (int)(len / 16);
                inIndirect = true;
                i = 0;
                continue;
            }
            if (c.Count >= max) return Broken("descriptor chain longer than the queue (a loop?)");
            if (len == 0) return Broken("zero-length descriptor");
            if (len > int.MaxValue) return Broken("descriptor length too large");
            bool write = (flags & DescWrite) != 0;
            if (!_memory.TryGetSpan(addr, (int)len, write ? MemProt.Write : MemProt.Read, out _))
                return Broken(write ? "writable buffer outside writable guest RAM" : "buffer outside guest RAM");
            if (write) { if (c.FirstWritable < 0) c.FirstWritable = c.Count; c.WritableBytes += len; }
            else
            {
                if (c.FirstWritable >= 0) return Broken("device-readable descriptor after a device-writable one");
                c.ReadableBytes += len;
            }
            c.Addr[c.Count] = addr;
            c.Len[c.Count] = len;
            c.Count++;
            if ((flags & DescNext) == 0) break;
            if (next >= tabEntries) return Broken("next descriptor index out of range");
            i = next;
        }
        if (c.FirstWritable < 0) c.FirstWritable = c.Count;
        return PopResult.Chain;
    }

    /// <summary>Publishes a used element (<paramref name="written"/> bytes written by the device); false if the ring moved out of RAM.</summary>
    public bool Push(ushort head, uint written)
    {
        if (!_memory.TryGetSpan(Device, DeviceBytes, MemProt.Write, out var used)) return Fail("device ring outside writable guest RAM");
        var e = used.Slice(4 + 8 * (UsedIdx & (Size - 1)), 8);
        BinaryPrimitives.WriteUInt32LittleEndian(e, head);
        BinaryPrimitives.WriteUInt32LittleEndian(e[4..], written);
        UsedIdx++;
        // The element is visible before the index (a release store).
        Volatile.Write(ref Unsafe16(used, 2), UsedIdx);
        return true;
    }

    /// <summary>
    /// After publishing from <paramref name="oldUsed"/> up to <see cref="UsedIdx"/>: whether the driver wants an interrupt
    /// (used_event with EVENT_IDX, else the NO_INTERRUPT flag).
    /// </summary>
    public bool NeedsInterrupt(ushort oldUsed)
    {
        if (oldUsed == UsedIdx) return false;
        Interlocked.MemoryBarrier(); // the used index is globally visible before the driver's suppression is read
        if (!_memory.TryGetSpan(Driver, DriverBytes, MemProt.Read, out var avail)) return true;
        if (EventIdx)
        {
            ushort usedEvent = Volatile.Read(ref Unsafe16(avail, 4 + 2 * Size));
            return (ushort)(UsedIdx - usedEvent - 1) < (ushort)(UsedIdx - oldUsed);
        }
        return (BinaryPrimitives.ReadUInt16LittleEndian(avail) & AvailNoInterrupt) == 0;
    }

    /// <summary>With EVENT_IDX: asks for a notification once the driver makes the next buffer available; returns true
    /// when buffers arrived meanwhile (process again before sleeping).</summary>
    public bool ArmNotification()
    {
        if (!EventIdx || !Enabled || Error is not null) return false;
        if (!_memory.TryGetSpan(Device, DeviceBytes, MemProt.Write, out var used)) return false;
        Volatile.Write(ref Unsafe16(used, 4 + 8 * Size), LastAvail);
        Interlocked.MemoryBarrier();
        if (!_memory.TryGetSpan(Driver, DriverBytes, MemProt.Read, out var avail)) return false;
        return Volatile.Read(ref Unsafe16(avail, 2)) != LastAvail;
    }

    /// <summary>True when the driver has made buffers available that the device has not taken.</summary>
    public bool HasPending()
    {
        if (!Enabled || Error is not null) return false;
        if (!_memory.TryGetSpan(Driver, DriverBytes, MemProt.Read, out var avail)) return false;
        return Volatile.Read(ref Unsafe16(avail, 2)) != LastAvail;
    }

    private static ref ushort Unsafe16(Span<byte> s, int offset) =>
        ref MemoryMarshal.Cast<byte, ushort>(s.Slice(offset, 2))[0];
}
