// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.Net;

/// <summary>
/// A single-producer, single-consumer queue of frames in one block of native memory: each record is a 4-byte length
/// followed by the frame, padded to 8 bytes, laid out contiguously (a record that would cross the end leaves a wrap
/// marker and starts again at offset 0). The producer and the consumer are different threads (libslirp's thread and the
/// device's I/O thread); nothing is allocated per frame and the consumer reads a frame in place
/// (<see cref="Peek"/> then <see cref="Consume"/>).
/// </summary>
public sealed unsafe class FrameRing : IDisposable
{
    private const uint WrapMarker = uint.MaxValue;
    private readonly byte* _buf;
    private readonly long _capacity;
    private long _head; // consumer position (monotonic byte count)
    private long _tail; // producer position

    /// <summary>A ring of <paramref name="capacity"/> bytes (a power of two, at least 64 KiB).</summary>
    public FrameRing(int capacity)
    {
        if (capacity < 65536 || (capacity & (capacity - 1)) != 0) throw new ArgumentOutOfRangeException(nameof(capacity));
        _capacity = capacity;
        // Untouched pages stay unresident until traffic needs them.
        _buf = (byte*)NativeMemory.Alloc((nuint)capacity);
    }

    /// <summary>The largest frame <see cref="TryEnqueue"/> accepts.</summary>
    public int MaxFrame => (int)(_capacity / 4);

    /// <summary>Frames <see cref="TryEnqueue"/> refused because the ring was full.</summary>
    public long Dropped;

    private static long Record(int len) => (4 + len + 7) & ~7L;

    /// <summary>Producer: copies the concatenation of <paramref name="a"/> and <paramref name="b"/> in as one frame;
    /// false (and counted in <see cref="Dropped"/>) when there is no room.</summary>
    public bool TryEnqueue(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b = default)
    {
        if (!TryReserve(a.Length + b.Length, out var dest)) { Dropped++; return false; }
        a.CopyTo(dest);
        b.CopyTo(dest[a.Length..]);
        Commit();
        return true;
    }

    private long _reservedEnd;

    /// <summary>Producer: reserves room for a frame of <paramref name="len"/> bytes and gives the span to fill; publish it with
    /// <see cref="Commit"/>. False when there is no room.</summary>
    public bool TryReserve(int len, out Span<byte> dest)
    {
        dest = default;
        if (len <= 0 || len > MaxFrame) return false;
        long rec = Record(len);
        long head = Volatile.Read(ref _head);
        long tail = _tail;
        long off = tail & (_capacity - 1);
        long pad = off + rec > _capacity ? _capacity - off : 0; // wrap: the rest of the block is skipped
        if (_capacity - (tail - head) < pad + rec) return false;
        if (pad != 0)
        {
            *(uint*)(_buf + off) = WrapMarker;
            tail += pad;
            off = 0;
        }
        *(uint*)(_buf + off) = (uint)len;
        dest = new Span<byte>(_buf + off + 4, len);
        _reservedEnd = tail + rec;
        return true;
    }

    /// <summary>Producer: publishes the frame <see cref="TryReserve"/> reserved.</summary>
    public void Commit() => Volatile.Write(ref _tail, _reservedEnd); // the record is complete before the consumer can see it

    /// <summary>Producer: true when a frame of <see cref="MaxFrame"/> bytes fits whatever the wrap position.</summary>
    public bool HasRoomForLargest => _capacity - (_tail - Volatile.Read(ref _head)) >= 2 * Record(MaxFrame);

    /// <summary>Consumer: the oldest frame, or an empty span when the ring is empty. Valid until <see cref="Consume"/>.</summary>
    public ReadOnlySpan<byte> Peek()
    {
        long tail = Volatile.Read(ref _tail);
        long head = _head;
        if (head == tail) return default;
        long off = head & (_capacity - 1);
        uint len = *(uint*)(_buf + off);
        if (len == WrapMarker)
        {
            head += _capacity - off;
            Volatile.Write(ref _head, head);
            if (head == tail) return default;
            off = 0;
            len = *(uint*)_buf;
        }
        return new ReadOnlySpan<byte>(_buf + off + 4, (int)len);
    }

    /// <summary>Consumer: drops the frame <see cref="Peek"/> returned.</summary>
    public void Consume()
    {
        long head = _head;
        long off = head & (_capacity - 1);
        uint len = *(uint*)(_buf + off);
        if (len == WrapMarker) { head += _capacity - off; off = 0; len = *(uint*)_buf; }
        if (head == Volatile.Read(ref _tail)) return;
        Volatile.Write(ref _head, head + Record((int)len));
    }

    /// <summary>Consumer: true when no frame is queued.</summary>
    public bool IsEmpty
    {
        get
        {
            return Peek().IsEmpty;
        }
    }

    /// <summary>Consumer: drops every queued frame.</summary>
    public void Clear() => Volatile.Write(ref _head, Volatile.Read(ref _tail));

    /// <summary>Frees the memory.</summary>
    public void Dispose()
    {
        NativeMemory.Free(_buf);
        GC.SuppressFinalize(this);
    }
}
