// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.Virtio;

/// <summary>One entry of a scatter/gather list for preadv(2)/pwritev(2) (struct iovec).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct IoVec
{
    /// <summary>Host address.</summary>
    public nint Base;
    /// <summary>Length in bytes.</summary>
    public nuint Length;
}

/// <summary>x86-64's struct epoll_event, which the kernel declares packed (12 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct EpollEvent
{
    /// <summary>EPOLL* event bits.</summary>
    public uint Events;
    /// <summary>The caller's cookie.</summary>
    public ulong Data;
}

/// <summary>The Linux calls the virtio devices and their I/O threads make (eventfd, epoll, vectored file I/O, getrandom).</summary>
public static unsafe partial class VirtioNative
{
    /// <summary>eventfd(2) EFD_NONBLOCK.</summary>
    public const int EfdNonBlock = 0x800;
    /// <summary>eventfd(2)/epoll_create1(2) close-on-exec.</summary>
    public const int CloExec = 0x80000;
    /// <summary>epoll_ctl(2) EPOLL_CTL_ADD.</summary>
    public const int EpollCtlAdd = 1;
    /// <summary>EPOLLIN.</summary>
    public const uint EpollIn = 1;
    /// <summary>EPOLLET (edge-triggered).</summary>
    public const uint EpollEt = 1u << 31;
    /// <summary>open(2) O_RDONLY.</summary>
    public const int ORdOnly = 0;
    /// <summary>open(2) O_RDWR.</summary>
    public const int ORdWr = 2;
    /// <summary>open(2) O_DIRECT (x86-64).</summary>
    public const int ODirect = 0x4000;
    /// <summary>open(2) O_SYNC (x86-64).</summary>
    public const int OSync = 0x101000;
    /// <summary>fallocate(2) FALLOC_FL_KEEP_SIZE.</summary>
    public const int FallocKeepSize = 1;
    /// <summary>fallocate(2) FALLOC_FL_PUNCH_HOLE.</summary>
    public const int FallocPunchHole = 2;
    /// <summary>fallocate(2) FALLOC_FL_ZERO_RANGE.</summary>
    public const int FallocZeroRange = 0x10;
    /// <summary>ioctl BLKSSZGET: a block device's logical sector size.</summary>
    public const nuint BlkSszGet = 0x1268;
    /// <summary>ioctl BLKPBSZGET: a block device's physical sector size.</summary>
    public const nuint BlkPbszGet = 0x127b;
    /// <summary>ioctl BLKDISCARD: discard a byte range of a block device.</summary>
    public const nuint BlkDiscard = 0x1277;
    /// <summary>ioctl BLKZEROOUT: zero a byte range of a block device.</summary>
    public const nuint BlkZeroOut = 0x127f;

    /// <summary>eventfd(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "eventfd")]
    public static partial int EventFd(uint initval, int flags);

    /// <summary>epoll_create1(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "epoll_create1")]
    public static partial int EpollCreate1(int flags);

    /// <summary>epoll_ctl(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "epoll_ctl")]
    public static partial int EpollCtl(int epfd, int op, int fd, EpollEvent* ev);

    /// <summary>epoll_wait(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "epoll_wait")]
    public static partial int EpollWait(int epfd, EpollEvent* events, int max, int timeout);

    /// <summary>read(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "read")]
    public static partial nint Read(int fd, void* buf, nuint count);

    /// <summary>write(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "write")]
    public static partial nint Write(int fd, void* buf, nuint count);

    /// <summary>close(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "close")]
    public static partial int Close(int fd);

    /// <summary>open(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags, int mode);

    /// <summary>lseek(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "lseek")]
    public static partial long Lseek(int fd, long offset, int whence);

    /// <summary>preadv(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "preadv")]
    public static partial nint Preadv(int fd, IoVec* iov, int iovcnt, long offset);

    /// <summary>pwritev(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "pwritev")]
    public static partial nint Pwritev(int fd, IoVec* iov, int iovcnt, long offset);

    /// <summary>fdatasync(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "fdatasync")]
    public static partial int Fdatasync(int fd);

    /// <summary>fallocate(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "fallocate")]
    public static partial int Fallocate(int fd, int mode, long offset, long length);

    /// <summary>ioctl(2) with a pointer argument.</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "ioctl")]
    public static partial int Ioctl(int fd, nuint request, void* arg);

    /// <summary>getrandom(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "getrandom")]
    public static partial nint GetRandom(void* buf, nuint length, uint flags);

    /// <summary>Adds one to an eventfd's counter (wakes its reader).</summary>
    public static void Signal(int eventFd)
    {
        ulong one = 1;
        Write(eventFd, &one, 8);
    }

    /// <summary>Reads and clears an eventfd's counter (non-blocking fds return 0 when it was already clear).</summary>
    public static ulong Drain(int eventFd)
    {
        ulong v = 0;
        return Read(eventFd, &v, 8) == 8 ? v : 0;
    }

    /// <summary>The text of the last error of a call that set errno.</summary>
    public static string LastError() => Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError());
}
