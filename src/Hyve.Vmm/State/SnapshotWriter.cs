// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Vmm.Native;
using Microsoft.Win32.SafeHandles;

namespace Hyve.Vmm.State;

/// <summary>
/// Writes a snapshot file: the header (last, at offset 0), the sections from offset 4096, each memory segment
/// page-aligned with its zero pages left as holes (a sparse file), and the manifest at the end. Everything goes to a
/// temporary name beside the target, is fsynced and renamed over it (then the directory is fsynced): a crash or a full
/// disk leaves the previous file whole.
/// </summary>
public static unsafe class SnapshotWriter
{
    private const int Page = 4096;
    private const int MaxRun = 64 << 20;

    /// <summary>Writes the snapshot; throws <see cref="IOException"/> naming what failed (the target is then untouched).</summary>
    public static void Write(string path, SnapshotHeader header, SnapshotManifest manifest, IReadOnlyList<StateSection> sections, GuestMemory memory)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        string full = System.IO.Path.GetFullPath(path);
        string dir = System.IO.Path.GetDirectoryName(full) ?? "/";
        string tmp = System.IO.Path.Combine(dir, $".{System.IO.Path.GetFileName(full)}.tmp{Libc.Getpid()}");
        SafeFileHandle? file = null;
        try
        {
            try { File.Delete(tmp); } catch (IOException) { }
            file = File.OpenHandle(tmp, FileMode.CreateNew, FileAccess.ReadWrite);
            long at = Page;
            manifest.Sections.Clear();
            foreach (var s in sections)
            {
                RandomAccess.Write(file, s.Data, at);
                manifest.Sections.Add(new SectionEntry(s.Name, s.Instance, s.Version, s.Oldest, at, s.Data.Length, Crc32C.Compute(s.Data)));
                at = (at + s.Data.Length + 7) & ~7L;
            }
            manifest.Segments.Clear();
            manifest.Ranges.Clear();
            foreach (var seg in memory.Segments)
            {
                at = (at + Page - 1) & ~(long)(Page - 1);
                manifest.Segments.Add(new SegmentEntry(seg.Id, seg.Name, seg.IsSysMem, seg.Length, at));
                WriteSegment(file, seg, at);
                at += (long)seg.Length;
            }
            foreach (var m in memory.Mappings)
                manifest.Ranges.Add(new RangeEntry(m.Gpa, m.Length, m.Segment.Id, m.SegOffset, (int)m.Prot));
            manifest.Ranges.Sort((a, b) => a.Gpa.CompareTo(b.Gpa));
            var json = manifest.ToJson();
            RandomAccess.Write(file, json, at);
            RandomAccess.SetLength(file, at + json.Length);
            var h = header with { Major = SnapshotHeader.CurrentMajor, Minor = SnapshotHeader.CurrentMinor, ManifestOffset = at, ManifestLength = json.Length, ManifestCrc = Crc32C.Compute(json) };
            RandomAccess.Write(file, h.Encode(), 0);
            Sync(file, tmp);
            file.Dispose();
            file = null;
            File.Move(tmp, full, overwrite: true);
            SyncDirectory(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentOutOfRangeException)
        {
            // .NET reports EFBIG (a write past RLIMIT_FSIZE, whose SIGXFSZ hyve ignores) as ArgumentOutOfRangeException.
            file?.Dispose();
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw new IOException($"{full}: {SnapshotWriter.WriteError(e)}", e);
        }
    }

    /// <summary>The reason a file write failed, in words: EFBIG (which .NET throws as ArgumentOutOfRangeException, with
    /// a message that is a resource key under NativeAOT) is named as the file-size limit.</summary>
    public static string WriteError(Exception e) =>
        e is ArgumentOutOfRangeException ? "the file would exceed the file-size limit (EFBIG, ulimit -f)" : e.Message;

    private static void WriteSegment(SafeFileHandle file, MemSegment seg, long at) => WriteRange(file, seg, 0, seg.Length, at);

    /// <summary>
    /// Writes the non-zero pages of [<paramref name="start"/>, <paramref name="end"/>) of a segment at
    /// <paramref name="at"/> + (position - start), leaving zero pages as holes. A memfd-backed segment is asked where its
    /// data is (SEEK_DATA/SEEK_HOLE: pages never touched are holes and are not even read); a file-backed one is scanned.
    /// </summary>
    internal static void WriteRange(SafeFileHandle file, MemSegment seg, ulong start, ulong end, long at)
    {
        ulong pos = start;
        while (pos < end)
        {
            ulong dataStart = pos, dataEnd = end;
            if (!seg.FromFile)
            {
                long d = Libc.Lseek(seg.Fd, (long)pos, Libc.SeekData);
                if (d < 0) break; // ENXIO: no data after pos
                long hEnd = Libc.Lseek(seg.Fd, d, Libc.SeekHole);
                dataStart = Math.Max(pos, (ulong)d & ~0xffful);
                dataEnd = hEnd < 0 ? end : Math.Min(end, ((ulong)hEnd + 0xfff) & ~0xffful);
                if (dataStart >= end) break;
            }
            WriteNonZero(file, seg.Host, dataStart, dataEnd, at - (long)start);
            pos = dataEnd;
        }
    }

    // Writes the non-zero pages of [start, end) at at + position.
    private static void WriteNonZero(SafeFileHandle file, byte* host, ulong start, ulong end, long at)
    {
        ulong run = ulong.MaxValue;
        for (ulong p = start; p < end; p += Page)
        {
            bool zero = new ReadOnlySpan<byte>(host + p, Page).IndexOfAnyExcept((byte)0) < 0;
            if (!zero && run == ulong.MaxValue) run = p;
            if (run != ulong.MaxValue && (zero || p - run >= MaxRun))
            {
                RandomAccess.Write(file, new ReadOnlySpan<byte>(host + run, (int)(p - run)), at + (long)run);
                run = zero ? ulong.MaxValue : p;
            }
        }
        if (run != ulong.MaxValue) RandomAccess.Write(file, new ReadOnlySpan<byte>(host + run, (int)(end - run)), at + (long)run);
    }

    internal static void Sync(SafeFileHandle file, string what)
    {
        if (Libc.Fsync((int)file.DangerousGetHandle()) != 0)
            throw new IOException($"fsync {what}: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
    }

    internal static void SyncDirectory(string dir)
    {
        int fd = Libc.Open(dir, Libc.OCloexec); // O_RDONLY
        if (fd < 0) return;
        Libc.Fsync(fd);
        Libc.Close(fd);
    }
}
