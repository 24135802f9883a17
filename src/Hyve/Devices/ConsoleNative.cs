// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.Devices;

/// <summary>The few libc calls the console backends need (Linux x86-64 ABI), through LibraryImport so NativeAOT needs no marshalling stubs.</summary>
internal static unsafe partial class ConsoleNative
{
    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int ECONNREFUSED = 111;

    public const int O_RDWR = 0x2;
    public const int O_NOCTTY = 0x100;
    public const int O_NONBLOCK = 0x800;
    public const int O_CLOEXEC = 0x80000;

    public const short POLLIN = 0x1;
    public const short POLLOUT = 0x4;
    public const short POLLERR = 0x8;
    public const short POLLHUP = 0x10;
    public const short POLLNVAL = 0x20;

    public const int TCSANOW = 0;
    public const uint CLOCAL = 0x800;        // octal 04000
    public const int TermiosSize = 60;       // glibc struct termios; buffers are 64 bytes for slack
    public const int TermiosCflagOffset = 8; // c_iflag, c_oflag, c_cflag, c_lflag are 4-byte words

    public const int AT_FDCWD = -100;
    public const uint STATX_TYPE = 0x1;
    public const int StatxSize = 256;
    public const int StatxModeOffset = 0x1c; // struct statx is laid out the same on every architecture
    public const int S_IFMT = 0xF000;
    public const int S_IFSOCK = 0xC000;
    public const int S_IFCHR = 0x2000;
    public const int S_IFIFO = 0x1000;
    public const int O_WRONLY = 0x1;

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint read(int fd, byte* buf, nint count);

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint write(int fd, byte* buf, nint count);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int poll(PollFd* fds, nuint nfds, int timeout);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int pipe2(int* fds, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string path, int flags, int mode);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int isatty(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int tcgetattr(int fd, byte* termios);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int tcsetattr(int fd, int optionalActions, byte* termios);

    [LibraryImport("libc")]
    public static partial void cfmakeraw(byte* termios);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int statx(int dirfd, string path, int flags, uint mask, byte* statxbuf);

    /// <summary>The file type bits (S_IFMT) of <paramref name="path"/>, following symlinks, or -1 when it does not exist.</summary>
    public static int FileType(string path)
    {
        byte* buf = stackalloc byte[StatxSize];
        if (statx(AT_FDCWD, path, 0, STATX_TYPE, buf) != 0) return -1;
        return *(ushort*)(buf + StatxModeOffset) & S_IFMT;
    }

    /// <summary>Writes all of <paramref name="data"/> to <paramref name="fd"/>, retrying on EINTR and waiting out EAGAIN;
    /// false when the descriptor fails (the reader went away), in which case the rest is dropped.</summary>
    public static bool WriteAll(int fd, ReadOnlySpan<byte> data) => WriteAll(fd, data, null);

    /// <summary>As <see cref="WriteAll(int, ReadOnlySpan{byte})"/>, giving up (false) once <paramref name="stop"/> returns true.</summary>
    public static bool WriteAll(int fd, ReadOnlySpan<byte> data, Func<bool>? stop)
    {
        fixed (byte* p = data)
        {
            int off = 0;
            while (off < data.Length)
            {
                nint n = write(fd, p + off, data.Length - off);
                if (n > 0) { off += (int)n; continue; }
                int errno = Marshal.GetLastPInvokeError();
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && errno == EAGAIN)
                {
                    if (stop is not null && stop()) return false;
                    var pfd = new PollFd { Fd = fd, Events = POLLOUT };
                    poll(&pfd, 1, 100);
                    continue;
                }
                return false;
            }
        }
        return true;
    }
}
