// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.Vmm.Native;

/// <summary>The few libc calls the VMM needs (Linux x86-64), bound at compile time for NativeAOT.</summary>
public static partial class Libc
{
    /// <summary>PROT_READ.</summary>
    public const int ProtRead = 1;
    /// <summary>PROT_WRITE.</summary>
    public const int ProtWrite = 2;
    /// <summary>PROT_EXEC.</summary>
    public const int ProtExec = 4;
    /// <summary>MAP_SHARED.</summary>
    public const int MapShared = 1;
    /// <summary>MAP_PRIVATE.</summary>
    public const int MapPrivate = 2;
    /// <summary>MAP_ANONYMOUS.</summary>
    public const int MapAnonymous = 0x20;
    /// <summary>MAP_NORESERVE.</summary>
    public const int MapNoReserve = 0x4000;
    /// <summary>MFD_CLOEXEC.</summary>
    public const uint MfdCloexec = 1;
    /// <summary>O_RDWR.</summary>
    public const int ORdWr = 2;
    /// <summary>O_CLOEXEC.</summary>
    public const int OCloexec = 0x80000;
    /// <summary>MADV_DONTDUMP: keep guest memory out of core dumps unless -C asks for it.</summary>
    public const int MadvDontDump = 16;
    /// <summary>MADV_DONTNEED: drop the range's page-table entries; file pages stay in the page cache.</summary>
    public const int MadvDontNeed = 4;
    /// <summary>EINTR.</summary>
    public const int EIntr = 4;
    /// <summary>EAGAIN.</summary>
    public const int EAgain = 11;
    /// <summary>SIGUSR2: the signal that kicks a vCPU thread out of KVM_RUN.</summary>
    public const int SigKick = 12;
    /// <summary>SIG_BLOCK for pthread_sigmask.</summary>
    public const int SigBlock = 0;
    /// <summary>SIG_UNBLOCK for pthread_sigmask.</summary>
    public const int SigUnblock = 1;

    /// <summary>The value mmap returns on failure.</summary>
    public static readonly nint MapFailed = -1;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int memfd_create(string name, uint flags);

    /// <summary>Creates an anonymous memory file.</summary>
    public static int MemfdCreate(string name) => memfd_create(name, MfdCloexec);

    /// <summary>MAP_FIXED.</summary>
    public const int MapFixed = 0x10;
    /// <summary>lseek whence: next data at or after the offset.</summary>
    public const int SeekData = 3;
    /// <summary>lseek whence: next hole at or after the offset.</summary>
    public const int SeekHole = 4;

    /// <summary>fsync(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "fsync")]
    public static partial int Fsync(int fd);

    /// <summary>lseek(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "lseek")]
    public static partial long Lseek(int fd, long offset, int whence);

    /// <summary>ftruncate(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "ftruncate")]
    public static partial int Ftruncate(int fd, long length);

    /// <summary>mmap(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "mmap")]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    /// <summary>munmap(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "munmap")]
    public static partial int Munmap(nint addr, nuint length);

    /// <summary>madvise(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "madvise")]
    public static partial int Madvise(nint addr, nuint length, int advice);

    /// <summary>close(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "close")]
    public static partial int Close(int fd);

    /// <summary>open(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    /// <summary>read(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "read")]
    public static unsafe partial nint Read(int fd, byte* buffer, nuint count);

    /// <summary>ioctl(2) with no argument or an integer argument.</summary>
    /// <summary>write(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "write")]
    public static unsafe partial nint Write(int fd, byte* buffer, nuint count);

    /// <summary>eventfd(2).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "eventfd")]
    public static partial int EventFd(uint initval, int flags);

    /// <summary>eventfd(2) flags: EFD_CLOEXEC and EFD_NONBLOCK.</summary>
    public const int EfdCloexec = 0x80000, EfdNonblock = 0x800;

    [LibraryImport("libc", SetLastError = true, EntryPoint = "ioctl")]
    public static partial int Ioctl(int fd, nuint request, nint arg);

    /// <summary>ioctl(2) with a pointer argument.</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "ioctl")]
    public static unsafe partial int Ioctl(int fd, nuint request, void* arg);

    /// <summary>gettid(2): the kernel thread id, for directed signals.</summary>
    [LibraryImport("libc", EntryPoint = "gettid")]
    public static partial int Gettid();

    /// <summary>getpid(2).</summary>
    [LibraryImport("libc", EntryPoint = "getpid")]
    public static partial int Getpid();

    /// <summary>geteuid(2).</summary>
    [LibraryImport("libc", EntryPoint = "geteuid")]
    public static partial uint Geteuid();

    /// <summary>umask(2): returns the previous mask.</summary>
    [LibraryImport("libc", EntryPoint = "umask")]
    public static partial uint Umask(uint mask);

    /// <summary>tgkill(2) through syscall(2) (glibc 2.30+ also exports it, but the syscall always exists).</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "syscall")]
    private static partial long Syscall3(long number, long a, long b, long c);

    /// <summary>Sends <paramref name="sig"/> to one thread of this process.</summary>
    public static int Tgkill(int pid, int tid, int sig) => (int)Syscall3(234, pid, tid, sig);

    /// <summary>pthread_sigmask(3) with a 64-bit kernel-style set (glibc's sigset_t is larger but only the first word matters for signals 1-64).</summary>
    [LibraryImport("libc", EntryPoint = "pthread_sigmask")]
    private static unsafe partial int pthread_sigmask(int how, ulong* set, ulong* oldset);

    /// <summary>Blocks or unblocks one signal in the calling thread.</summary>
    public static unsafe int SigMask(int how, int sig)
    {
        // glibc's sigset_t is 128 bytes; pass a full-size zeroed buffer with our bit set.
        ulong* set = stackalloc ulong[16];
        for (int i = 0; i < 16; i++) set[i] = 0;
        set[0] = 1ul << (sig - 1);
        return pthread_sigmask(how, set, null);
    }

    [LibraryImport("libc", EntryPoint = "sigtimedwait")]
    private static unsafe partial int sigtimedwait(ulong* set, void* info, Timespec* timeout);

    private struct Timespec { public long Sec; public long Nsec; }

    /// <summary>Consumes a pending (blocked) <paramref name="sig"/> without waiting; true if one was pending.</summary>
    public static unsafe bool ConsumePendingSignal(int sig)
    {
        ulong* set = stackalloc ulong[16];
        for (int i = 0; i < 16; i++) set[i] = 0;
        set[0] = 1ul << (sig - 1);
        byte* info = stackalloc byte[128];
        var ts = new Timespec();
        return sigtimedwait(set, info, &ts) == sig;
    }

    /// <summary>sched_setaffinity(2) for the calling thread with a CPU mask of up to 1024 CPUs.</summary>
    [LibraryImport("libc", SetLastError = true, EntryPoint = "sched_setaffinity")]
    public static unsafe partial int SchedSetaffinity(int pid, nuint size, ulong* mask);

    /// <summary>The errno of the last failed call, as a message-friendly string.</summary>
    public static string ErrnoText(int errno) => errno switch
    {
        1 => "EPERM", 2 => "ENOENT", 4 => "EINTR", 5 => "EIO", 9 => "EBADF", 11 => "EAGAIN", 12 => "ENOMEM",
        13 => "EACCES", 14 => "EFAULT", 16 => "EBUSY", 17 => "EEXIST", 19 => "ENODEV", 22 => "EINVAL",
        25 => "ENOTTY", 27 => "EFBIG (the file-size limit, ulimit -f)", 28 => "ENOSPC", 95 => "EOPNOTSUPP", _ => $"errno {errno}",
    };
}
