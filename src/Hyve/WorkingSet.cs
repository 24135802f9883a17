// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Vmm.Native;

namespace Hyve;

/// <summary>
/// Drops the start-up part of hyve's working set once the guest runs. Code and read-only data are mapped from
/// files (the hyve image, libc, libm, ld.so), and the kernel maps up to 64 KiB of cached file pages around every
/// page fault, so after start-up nearly whole images count as resident though a running VM uses a small part
/// of them. Unmapping the clean read-only file mappings (MADV_DONTNEED) loses nothing: the pages stay in the page
/// cache, and what is still used comes back with a minor fault. Mappings with private copies (relocations,
/// debugger breakpoints), writable ones and guest memory are left alone.
/// </summary>
internal static unsafe partial class WorkingSet
{
    private const int MadvDontNeed = 4;

    [LibraryImport("libc", SetLastError = true, EntryPoint = "read")]
    private static partial nint Read(int fd, byte* buffer, nuint count);

    /// <summary>Trims the read-only file mappings; returns how many KiB were resident in them before. Never throws.</summary>
    public static long TrimReadOnlyFileMappings()
    {
        // Read smaps into native memory and parse it in place: the GC heap does not grow for a one-off job.
        const int Capacity = 1 << 20;
        byte* buf = (byte*)NativeMemory.Alloc(Capacity);
        try
        {
            int fd = Libc.Open("/proc/self/smaps", Libc.OCloexec);
            if (fd < 0) return 0;
            int length = 0;
            try
            {
                while (length < Capacity)
                {
                    nint n = Read(fd, buf + length, (nuint)(Capacity - length));
                    if (n <= 0) break;
                    length += (int)n;
                }
            }
            finally
            {
                Libc.Close(fd);
            }
            if (length >= Capacity) return 0; // cut short: the last mapping's figures would be missing
            return Trim(new ReadOnlySpan<byte>(buf, length));
        }
        finally
        {
            NativeMemory.Free(buf);
        }
    }

    // smaps: a header line per mapping ("start-end perms offset dev inode path"), then "Key: value kB" lines.
    private static long Trim(ReadOnlySpan<byte> text)
    {
        long trimmedKb = 0, rss = 0, anonymous = -1;
        ulong start = 0, end = 0;
        bool candidate = false;
        while (!text.IsEmpty)
        {
            int nl = text.IndexOf((byte)'\n');
            var line = nl < 0 ? text : text[..nl];
            text = nl < 0 ? default : text[(nl + 1)..];
            int space = line.IndexOf((byte)' ');
            int colon = line.IndexOf((byte)':');
            int dash = line.IndexOf((byte)'-');
            if (space > 0 && (colon < 0 || colon > space) && dash > 0 && dash < space)
            {
                trimmedKb += Flush(start, end, candidate, rss, anonymous);
                candidate = ParseHeader(line, dash, space, out start, out end);
                rss = 0;
                anonymous = -1;
            }
            else if (candidate && line.StartsWith("Rss:"u8)) rss = Kb(line);
            else if (candidate && line.StartsWith("Anonymous:"u8)) anonymous = Kb(line);
        }
        return trimmedKb + Flush(start, end, candidate, rss, anonymous);
    }

    private static long Flush(ulong start, ulong end, bool candidate, long rss, long anonymous)
    {
        // Anonymous must be known and zero: a private copy of a file page would be discarded, not dropped.
        if (!candidate || anonymous != 0 || rss <= 0 || end <= start) return 0;
        return Libc.Madvise((nint)start, (nuint)(end - start), MadvDontNeed) == 0 ? rss : 0;
    }

    // Read-only (r--p or r-xp), private, backed by a file on disk: code and constant data.
    private static bool ParseHeader(ReadOnlySpan<byte> line, int dash, int space, out ulong start, out ulong end)
    {
        start = end = 0;
        if (!Hex(line[..dash], out start) || !Hex(line[(dash + 1)..space], out end)) return false;
        var rest = line[(space + 1)..];
        if (!(rest.StartsWith("r--p "u8) || rest.StartsWith("r-xp "u8))) return false;
        int slash = rest.IndexOf((byte)'/');
        if (slash < 0) return false; // anonymous, [heap], [vdso], anon_inode:...
        var path = rest[slash..].TrimEnd((byte)' ');
        return !path.StartsWith("/memfd:"u8) && !path.StartsWith("/dev/"u8) && !path.EndsWith(" (deleted)"u8);
    }

    private static bool Hex(ReadOnlySpan<byte> s, out ulong value)
    {
        value = 0;
        if (s.IsEmpty || s.Length > 16) return false;
        foreach (byte c in s)
        {
            int d = c is >= (byte)'0' and <= (byte)'9' ? c - '0' : c is >= (byte)'a' and <= (byte)'f' ? c - 'a' + 10 : -1;
            if (d < 0) return false;
            value = value << 4 | (uint)d;
        }
        return true;
    }

    private static long Kb(ReadOnlySpan<byte> line)
    {
        long v = -1;
        foreach (byte c in line[(line.IndexOf((byte)':') + 1)..])
        {
            if (c == ' ' && v < 0) continue;
            if (c is < (byte)'0' or > (byte)'9') break;
            v = (v < 0 ? 0 : v * 10) + (c - '0');
        }
        return v;
    }
}
