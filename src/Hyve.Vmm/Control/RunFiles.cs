// SPDX-License-Identifier: BSD-2-Clause
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Hyve.Vmm.Control;

/// <summary>
/// The sockets hyve creates in the run directory (the control socket, a -G unix: debugger socket): what may be
/// replaced and what may be removed. Nothing is followed through a symlink (lstat semantics throughout). Only a
/// socket may be replaced, and only after a connect to it is refused (its process is gone); a regular file, a
/// symlink, a directory or a live socket is an error naming the path. On exit hyve removes a socket only if it is
/// still the one it bound (same device and inode), so a file someone put there meanwhile is left alone.
/// </summary>
public static unsafe partial class RunFiles
{
    private const int AtFdcwd = -100;
    private const int AtSymlinkNofollow = 0x100;
    private const uint StatxBasic = 0x7ff;
    private const int SIfmt = 0xF000, SIfsock = 0xC000, SIflnk = 0xA000, SIfdir = 0x4000, SIfreg = 0x8000;

    private static readonly object Gate = new();
    private static readonly Dictionary<string, (ulong Dev, ulong Ino)> Bound = [];

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx(int dirfd, string path, int flags, uint mask, byte* buf);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int unlink(string path);

    /// <summary>File type bits (S_IFMT) of <paramref name="path"/> itself (a symlink is not followed), device and inode; false when absent.</summary>
    private static bool Lstat(string path, out int type, out ulong dev, out ulong ino)
    {
        byte* b = stackalloc byte[256];
        type = 0; dev = ino = 0;
        if (statx(AtFdcwd, path, AtSymlinkNofollow, StatxBasic, b) != 0) return false;
        type = *(ushort*)(b + 0x1c) & SIfmt;
        ino = *(ulong*)(b + 0x20);
        dev = (ulong)*(uint*)(b + 0x88) << 32 | *(uint*)(b + 0x8c);
        return true;
    }

    private static string Describe(int type) => type switch
    {
        SIflnk => "a symbolic link",
        SIfdir => "a directory",
        SIfreg => "a regular file",
        _ => "not a socket",
    };

    /// <summary>
    /// Makes <paramref name="path"/> free for a new listening socket: absent is fine; a socket nobody accepts on
    /// (its process died) is removed; a live socket throws <see cref="VmAlreadyRunningException"/> when
    /// <paramref name="vmName"/> is given (else <see cref="ControlServerException"/>); anything else throws
    /// <see cref="ControlServerException"/> naming the path and what is there.
    /// </summary>
    public static void ReplaceStaleSocket(string path, string? vmName = null)
    {
        if (!Lstat(path, out int type, out _, out _)) return;
        if (type != SIfsock)
            throw new ControlServerException($"{path} exists and is {Describe(type)}, not a stale socket: remove it or choose another name");
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.AddressNotAvailable)
        {
            // Nobody listens: the socket was left by a process that died. Check again that it is still a socket
            // (not swapped for something else since), then remove it; unlink(2) never follows a symlink.
            if (Lstat(path, out type, out _, out _) && type != SIfsock)
                throw new ControlServerException($"{path} exists and is {Describe(type)}, not a stale socket: remove it or choose another name");
            if (unlink(path) != 0 && Marshal.GetLastPInvokeError() != 2)
                throw new ControlServerException($"cannot remove the stale socket {path}: {Native.Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
            return;
        }
        catch (SocketException e)
        {
            throw new ControlServerException($"socket {path} exists and cannot be probed ({e.SocketErrorCode})");
        }
        if (vmName is not null) throw new VmAlreadyRunningException(vmName, path);
        throw new ControlServerException($"{path} is a socket another process is listening on");
    }

    /// <summary>Remembers the socket just bound at <paramref name="path"/> so <see cref="DeleteOwnSocket"/> removes only it.</summary>
    public static void RecordOwnSocket(string path)
    {
        if (!Lstat(path, out int type, out ulong dev, out ulong ino) || type != SIfsock) return;
        lock (Gate) Bound[path] = (dev, ino);
    }

    /// <summary>Removes <paramref name="path"/> if it is still the socket this process bound there.</summary>
    public static void DeleteOwnSocket(string path)
    {
        (ulong Dev, ulong Ino) mine;
        lock (Gate)
        {
            if (!Bound.Remove(path, out mine)) return;
        }
        if (Lstat(path, out int type, out ulong dev, out ulong ino) && type == SIfsock && dev == mine.Dev && ino == mine.Ino)
            unlink(path);
    }

    /// <summary>Removes every socket this process bound and still owns (the last thing done on an exit path).</summary>
    public static void DeleteAllOwnSockets()
    {
        string[] paths;
        lock (Gate) paths = [.. Bound.Keys];
        foreach (var p in paths) DeleteOwnSocket(p);
    }
}
