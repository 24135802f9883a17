// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.X86.Jit;

/// <summary>
/// Executable memory for translated code: one memfd mapped twice, once read-write (where the translator writes) and
/// once read-execute (where the host CPU runs it), so no page is ever writable and executable at once (W^X). Space is
/// handed out by a bump pointer; when it runs out the owner drops every translation and calls <see cref="Reset"/>
/// (QEMU's tb_flush does the same), which bounds the memory to the configured size.
/// </summary>
/// <remarks>
/// x86 keeps instruction fetch coherent with stores to the same physical page through any mapping, so code written
/// through the RW view runs from the RX view without an explicit flush. Pages of the memfd are only backed once written,
/// so a large cache costs address space, not memory, until translations fill it.
/// </remarks>
public sealed unsafe partial class CodeCache : IDisposable
{
    /// <summary>The default size (64 MiB), as QEMU's TCG default region.</summary>
    public const long DefaultSize = 64L << 20;

    private readonly int _fd;
    private readonly byte* _rw, _rx;
    private long _used;

    /// <summary>Bytes of address space the cache spans.</summary>
    public long Capacity { get; }

    /// <summary>Bytes handed out since the last <see cref="Reset"/>.</summary>
    public long Used => _used;

    /// <summary>Times the cache filled up and was emptied.</summary>
    public long Flushes { get; private set; }

    /// <summary>Creates a cache of <paramref name="capacity"/> bytes (rounded up to whole pages; at least 64 KiB).</summary>
    public CodeCache(long capacity = DefaultSize)
    {
        capacity = Math.Max(64 << 10, (capacity + 0xfff) & ~0xfffL);
        Capacity = capacity;
        _fd = MemfdCreate("hyve-jit", 1 /* MFD_CLOEXEC */);
        if (_fd < 0) throw new InvalidOperationException($"memfd_create for the code cache failed (errno {Marshal.GetLastPInvokeError()})");
        if (Ftruncate(_fd, capacity) != 0) { Close(_fd); throw new InvalidOperationException($"ftruncate of the code cache failed (errno {Marshal.GetLastPInvokeError()})"); }
        const int ProtRead = 1, ProtWrite = 2, ProtExec = 4, MapShared = 1;
        _rw = (byte*)Mmap(null, (nuint)capacity, ProtRead | ProtWrite, MapShared, _fd, 0);
        _rx = (byte*)Mmap(null, (nuint)capacity, ProtRead | ProtExec, MapShared, _fd, 0);
        if (_rw == (byte*)-1 || _rx == (byte*)-1)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (_rw != (byte*)-1) Munmap(_rw, (nuint)capacity);
            if (_rx != (byte*)-1) Munmap(_rx, (nuint)capacity);
            Close(_fd);
            throw new InvalidOperationException($"mapping the code cache failed (errno {errno})");
        }
    }

    /// <summary>The executable address the next allocation will start at.</summary>
    public ulong NextAddress => (ulong)(_rx + _used);

    /// <summary>Bytes still free.</summary>
    public long Free => Capacity - _used;

    /// <summary>Copies <paramref name="code"/> (encoded for <see cref="NextAddress"/>) in and returns its executable address,
    /// or 0 when it does not fit (the owner then flushes and translates again).</summary>
    public nint Commit(ReadOnlySpan<byte> code)
    {
        if (code.Length > Free) return 0;
        code.CopyTo(new Span<byte>(_rw + _used, code.Length));
        nint at = (nint)(_rx + _used);
        _used = (_used + code.Length + 15) & ~15L; // 16-byte aligned entries
        if (_used > Capacity) _used = Capacity;
        return at;
    }

    /// <summary>Writes the 8-byte <paramref name="value"/> at executable address <paramref name="address"/> (a chaining slot:
    /// data the code reads, written through the read-write view).</summary>
    public void Patch(nint address, ulong value)
    {
        long off = (byte*)address - _rx;
        if (off < 0 || off + 8 > _used) throw new ArgumentOutOfRangeException(nameof(address));
        *(ulong*)(_rw + off) = value;
    }

    /// <summary>The 8 bytes at executable address <paramref name="address"/>.</summary>
    public ulong Read(nint address)
    {
        long off = (byte*)address - _rx;
        if (off < 0 || off + 8 > _used) throw new ArgumentOutOfRangeException(nameof(address));
        return *(ulong*)(_rw + off);
    }

    /// <summary>Forgets every translation's code (the caller has dropped all pointers into it).</summary>
    public void Reset()
    {
        _used = 0;
        Flushes++;
    }

    /// <summary>True when <paramref name="address"/> lies in the executable view (for tests).</summary>
    public bool Contains(nint address) => (byte*)address >= _rx && (byte*)address < _rx + Capacity;

    /// <summary>Unmaps both views and closes the memfd.</summary>
    public void Dispose()
    {
        if (_fd < 0) return;
        Munmap(_rw, (nuint)Capacity);
        Munmap(_rx, (nuint)Capacity);
        Close(_fd);
        GC.SuppressFinalize(this);
    }

    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MemfdCreate(string name, uint flags);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int Ftruncate(int fd, long length);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial void* Mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int Munmap(void* addr, nuint length);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);
}
