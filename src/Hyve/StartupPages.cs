// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Vmm.Native;

namespace Hyve;

/// <summary>
/// Lets go of the code and constants that only start-up ran. The kernel maps file pages 64 KiB around every fault, so
/// once the VM is built the resident set holds most of the executable and the C library: option parsing, ACPI and PCI
/// set-up, code the running VM never touches again. Dropping this process's mappings of read-only file pages
/// (MADV_DONTNEED) frees nothing from the page cache and changes no data; what the running VM executes faults back in
/// (a minor fault each 64 KiB), so the resident set becomes the running VM's working set. Mappings that hold private
/// copies (relocated read-only data, anything written) are left alone: dropping those would lose the copies.
/// The scan reads /proc/self/smaps with read(2) and parses bytes in this one method, so that the trim itself faults
/// back as little code as possible.
/// </summary>
internal static unsafe class StartupPages
{
    private const int BufferSize = 1 << 20;

    /// <summary>Drops the read-only file mappings' pages; returns how many KiB were resident in them (0 without /proc).</summary>
    public static long Trim()
    {
        byte* buf = (byte*)NativeMemory.Alloc(BufferSize);
        try
        {
            int fd = Libc.Open("/proc/self/smaps", 0);
            if (fd < 0) return 0;
            int length = 0;
            for (nint n; length < BufferSize && (n = Libc.Read(fd, buf + length, (nuint)(BufferSize - length))) > 0;) length += (int)n;
            Libc.Close(fd);
            return TrimFrom(buf, length);
        }
        finally
        {
            NativeMemory.Free(buf);
        }
    }

    // One mapping is a header line "start-end perms offset dev inode [path]" and "Key: value kB" lines ending with
    // VmFlags. A candidate is private, not writable and backed by a file (a path that is not a memfd); it is dropped
    // when it has resident pages and none of them anonymous.
    private static long TrimFrom(byte* s, int length)
    {
        long dropped = 0, rss = 0, anonymous = 0;
        ulong start = 0, end = 0;
        bool candidate = false;
        for (int i = 0; i < length;)
        {
            int eol = i;
            while (eol < length && s[eol] != (byte)'\n') eol++;
            int p = i;
            ulong a = Hex(s, ref p, eol);
            if (p < eol && s[p] == (byte)'-' && p > i)
            {
                p++;
                ulong b = Hex(s, ref p, eol);
                // perms at p+1..p+4: r w x p/s
                candidate = p + 5 < eol && s[p + 2] != (byte)'w' && s[p + 4] == (byte)'p' && IsFilePath(s, p + 5, eol);
                start = a;
                end = b;
                rss = anonymous = 0;
            }
            else if (StartsWith(s, i, eol, "Rss:"u8)) rss = Decimal(s, i, eol);
            else if (StartsWith(s, i, eol, "Anonymous:"u8)) anonymous = Decimal(s, i, eol);
            else if (StartsWith(s, i, eol, "VmFlags:"u8) && candidate && rss > 0 && anonymous == 0 && end > start
                && Libc.Madvise((nint)start, (nuint)(end - start), Libc.MadvDontNeed) == 0)
                dropped += rss;
            i = eol + 1;
        }
        return dropped;
    }

    private static ulong Hex(byte* s, ref int p, int eol)
    {
        ulong v = 0;
        for (; p < eol; p++)
        {
            int c = s[p], d = c is >= '0' and <= '9' ? c - '0' : c is >= 'a' and <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0) break;
            v = v << 4 | (uint)d;
        }
        return v;
    }

    private static long Decimal(byte* s, int i, int eol)
    {
        while (i < eol && (s[i] < '0' || s[i] > '9')) i++;
        long v = 0;
        for (; i < eol && s[i] >= '0' && s[i] <= '9'; i++) v = v * 10 + (s[i] - '0');
        return v;
    }

    private static bool StartsWith(byte* s, int i, int eol, ReadOnlySpan<byte> key) =>
        eol - i >= key.Length && new ReadOnlySpan<byte>(s + i, key.Length).SequenceEqual(key);

    // The path is the last field: the first '/' after the perms. "/memfd:" names guest memory and ROM segments.
    private static bool IsFilePath(byte* s, int i, int eol)
    {
        while (i < eol && s[i] != (byte)'/' && s[i] != (byte)'[') i++;
        return i < eol && s[i] == (byte)'/' && !StartsWith(s, i, eol, "/memfd:"u8);
    }
}
