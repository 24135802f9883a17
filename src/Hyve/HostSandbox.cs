// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Config;
using Hyve.Vmm;
using Hyve.Vmm.Native;

namespace Hyve;

/// <summary>
/// hyve's syscall sandbox (key <c>sandbox</c>, default on; <c>-o sandbox=off</c> for debugging). Once start-up is over
/// (devices open, sockets bound, guest memory mapped, the VM about to run) hyve sets no_new_privs and installs a
/// seccomp allow-list on every thread (SECCOMP_FILTER_FLAG_TSYNC; threads created later inherit it), and each vCPU
/// thread stacks a narrower one on top before its first instruction. A call outside the list is not made: SIGSYS's
/// handler writes one line naming it ("hyve: sandbox: system call 59 (execve) is not allowed; stopping") and hyve
/// exits with status 4.
/// </summary>
/// <remarks>
/// The lists were measured (scripts/sandbox-profile: strace -f of hyve once the filter is in, over guests with virtio
/// disk and console, VNC, GDB, snapshots and every hyvectl request) and compared with Firecracker's and Cloud
/// Hypervisor's filters; calls nothing made were dropped. They
/// are wider than Firecracker's because hyve does more after start-up: snapshots open, write, fsync and rename files,
/// the control, GDB and VNC servers accept connections, slirp opens the guest's outbound sockets, a guest reset reads
/// the kernel again, and the .NET runtime (GC, thread pool, timers) creates threads and maps memory. What no thread
/// may do: execute programs, create processes, trace, mount, load modules, change credentials, open raw or packet
/// sockets, use 32-bit or x32 system calls. The vCPU threads (and threads they start) additionally may not create,
/// bind or connect sockets. ioctl is allowed by number only (KVM, terminal, FIONBIO), as is openat (a file's checks are the kernel's).
/// </remarks>
public static partial class HostSandbox
{
    // Linux constants for the argument checks.
    private const uint AfUnix = 1, AfInet = 2, AfInet6 = 10, AfNetlink = 16;
    private const uint CloneThread = 0x10000;
    private const int ENoSys = 38;
    private const uint PrSetName = 15, PrGetName = 16, PrSetVma = 0x53564d41, PrGetDumpable = 3, PrSetNoNewPrivs = 38;

    // Measured with scripts/sandbox-profile (strace -f of hyve once the filter is in, over a Linux boot from virtio-blk
    // with virtio-rng and hvc0, a Linux guest with VNC and the virtio tablet, GDB sessions, checkpoints and a restore,
    // every hyvectl request, and peers that vanish mid-message; then again over networking: Debian on slirp (DHCP, an
    // outbound HTTP fetch, a hostfwd listener accepting a connection), on a tap in a network namespace, and the GDB and
    // VNC servers on TCP, which added nothing), plus what hyve's own P/Invokes and the .NET runtime's
    // rarer paths (a GC's memory query, a new socket engine, a sleep) can call. Left out because nothing in hyve makes
    // them after start-up: io_uring, inotify, sendfile and copy_file_range, mlock and mincore, readlink, getdents,
    // mkdir, dup, select, the *mmsg calls, preadv2/pwritev2, credential queries beyond the uid, priorities, fadvise.
    private static readonly string[] Anything =
    [
        // Memory and the runtime (GC, thread pool, timers, signals)
        "futex", "mmap", "munmap", "mprotect", "madvise", "mremap", "brk", "membarrier",
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack", "tgkill", "tkill",
        "gettid", "getpid", "clock_gettime", "clock_getres", "gettimeofday", "clock_nanosleep", "nanosleep",
        "sched_yield", "sched_getaffinity", "sched_setaffinity", "set_robust_list", "rseq", "exit", "exit_group",
        "restart_syscall", "getrandom", "sysinfo", "getrusage", "getuid", "geteuid", "prlimit64",
        // Files: consoles, disks (discard and write-zeroes through fallocate), snapshots and core dumps written to a
        // temporary file and renamed, the kernel read again after a guest reset, guest memory segments (memfd)
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "openat", "open", "close", "fstat", "stat", "lstat", "newfstatat", "statx", "lseek", "fsync", "fdatasync",
        "ftruncate", "fallocate", "rename", "renameat", "renameat2", "unlink", "unlinkat", "fchmod", "fchmodat",
        "getcwd", "flock", "statfs", "fstatfs", "fcntl", "pipe2", "eventfd2", "memfd_create",
        "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "poll", "ppoll", "ioctl",
        // Sockets already open, and their options
        "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "getsockname", "getpeername", "getsockopt", "setsockopt",
    ];

    // Creating, binding and connecting sockets: slirp connects the guest's sockets, and a console or server may bind.
    private static readonly string[] Networking = ["connect", "bind", "listen"];

    /// <summary>The allow-list every thread of hyve gets once the VM is about to run.</summary>
    public static List<SyscallRule> ProcessRules()
    {
        var rules = Common();
        foreach (var n in Networking) rules.Add(new(n));
        // Only the families hyve uses: UNIX (control socket, consoles), IPv4 and IPv6 (GDB, VNC, slirp's sockets).
        rules.Add(new("socket", new ArgCheck(0, [AfUnix, AfInet, AfInet6])));
        rules.Add(new("socketpair", new ArgCheck(0, [AfUnix])));
        return rules;
    }

    /// <summary>The narrower list each vCPU thread adds: no socket is created, bound or connected there. A thread
    /// inherits its creator's filters, and the .NET runtime starts thread-pool and timer threads from whichever thread
    /// needs one first, a vCPU thread included; so this list keeps what those threads do for the control server and the
    /// consoles (accepting connections, reading and writing files and sockets). A filter per I/O or control thread kind
    /// would leak into runtime threads the same way, which is why there are two lists and not four.</summary>
    public static List<SyscallRule> VcpuRules() => Common();

    private static List<SyscallRule> Common()
    {
        var rules = new List<SyscallRule>();
        foreach (var n in Anything) rules.Add(new(n));
        // Threads only: a clone without CLONE_THREAD would be a new process (fork). clone3 hides its flags from BPF
        // (they are behind a pointer), so it answers ENOSYS and glibc falls back to clone.
        rules.Add(new("clone", new ArgCheck(0, [], CloneThread)));
        rules.Add(new("clone3", Errno: ENoSys));
        // Thread names, VMA names (the runtime labels its mappings), dumpability queries; not PR_SET_SECCOMP & co.
        rules.Add(new("prctl", new ArgCheck(0, [PrSetName, PrGetName, PrSetVma, PrGetDumpable, PrSetNoNewPrivs])));
        // seccomp itself: a vCPU thread stacks its own filter (filters only ever narrow).
        rules.Add(new("seccomp"));
        // Accepting a connection on a socket bound at start-up (control, GDB, VNC): on their threads or on a
        // thread-pool thread, which may have been born on a vCPU thread.
        rules.Add(new("accept"));
        rules.Add(new("accept4"));
        return rules;
    }

    private static readonly string[] AllowedValues = ["on", "off", "true", "false"];

    /// <summary>True when key <c>sandbox</c> asks for the sandbox (the default); a value other than on/off/true/false
    /// throws <see cref="ConfigException"/>.</summary>
    public static bool Wanted(ConfigTree config)
    {
        string v = config.Get("sandbox") ?? "on";
        if (Array.IndexOf(AllowedValues, v) < 0) throw new ConfigException($"sandbox={v}: expected on or off");
        return v is "on" or "true";
    }

    /// <summary>Installs the process-wide list (all threads) and arranges for each vCPU thread to add its own. Call
    /// when start-up is over and the VM is about to run.</summary>
    public static void Enter(ConfigTree config, Vm vm)
    {
        if (!Wanted(config))
        {
            vm.VcpuThreadStarting = Probe;
            return;
        }
        Seccomp.InstallAuditTrap("hyve: sandbox: ");
        int r = Seccomp.Install(Seccomp.Compile(ProcessRules()), Seccomp.FlagTsync);
        if (r != 0) throw new HostConfigException($"sandbox: seccomp could not be installed (error {r}); -o sandbox=off runs without it");
        var vcpu = Seccomp.Compile(VcpuRules());
        vm.VcpuThreadStarting = id =>
        {
            int e = Seccomp.Install(vcpu, 0);
            if (e != 0) vm.SetError($"sandbox: the vCPU {id} filter could not be installed (error {e})");
            Probe(id);
        };
    }

    // Test hook: HYVE_TEST_SANDBOX_PROBE=CALL makes vCPU 0 really make that call once its filter is in place, so a
    // test can watch the sandbox stop it (and, with sandbox=off, watch it happen).
    private static void Probe(int id)
    {
        if (id != 0) return;
        string? probe = Environment.GetEnvironmentVariable("HYVE_TEST_SANDBOX_PROBE");
        switch (probe)
        {
            case null or "": return;
            case "execve":
                // /bin/true: without the sandbox the process becomes it and exits with status 0.
                unsafe
                {
                    byte* path = stackalloc byte[] { (byte)'/', (byte)'b', (byte)'i', (byte)'n', (byte)'/', (byte)'t', (byte)'r', (byte)'u', (byte)'e', 0 };
                    nint* argv = stackalloc nint[2];
                    argv[0] = (nint)path;
                    argv[1] = 0;
                    execve(path, argv, argv + 1);
                }
                break;
            case "socket-packet":
                socket(17 /* AF_PACKET */, 3 /* SOCK_RAW */, 0);
                break;
            case "socket-unix":
                // Allowed to the I/O and control threads, refused on a vCPU thread.
                socket((int)AfUnix, 1 /* SOCK_STREAM */, 0);
                break;
            case "inotify":
                // Dropped from the lists by measurement: nothing in hyve watches files.
                inotify_init1(0);
                break;
            case "netlink":
                socket((int)AfNetlink, 3, 0);
                break;
        }
        Console.Error.WriteLine($"hyve: sandbox probe {probe}: the call returned (error {Marshal.GetLastPInvokeError()})");
    }

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int execve(byte* path, nint* argv, nint* envp);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int inotify_init1(int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int socket(int domain, int type, int protocol);
}
