// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using Hyve.Config;
using Hyve.Vmm.Native;
using Xunit;

namespace Hyve.Tests.Host;

/// <summary>
/// issue 18, the syscall sandbox: the compiled seccomp programs decide as the policy says (checked by a classic-BPF
/// interpreter written here, apart from the compiler), and a real hyve stops a forbidden call that a test hook makes
/// on a vCPU thread with one audit line and status 4, while the guest runs to its end when nothing forbidden happens.
/// </summary>
public class SandboxTests
{
    private const uint I386 = 0x40000003; // AUDIT_ARCH_I386
    private const uint X8664 = Seccomp.AuditArchX8664;
    private const uint Errno = Seccomp.RetErrno;

    // seccomp_data as the kernel fills it, run through the program as the kernel's BPF interpreter would.
    private static uint Run(BpfInstruction[] program, string call, uint arch = X8664, params ulong[] args)
        => Run(program, SyscallNames.Number(call), arch, args);

    private static uint Run(BpfInstruction[] program, int nr, uint arch, ulong[] args)
    {
        var data = new byte[64];
        BitConverter.TryWriteBytes(data.AsSpan(0), nr);
        BitConverter.TryWriteBytes(data.AsSpan(4), arch);
        for (int i = 0; i < args.Length; i++) BitConverter.TryWriteBytes(data.AsSpan(16 + 8 * i), args[i]);
        uint acc = 0;
        for (int pc = 0, steps = 0; pc < program.Length; pc++, steps++)
        {
            Assert.True(steps < 4096);
            var ins = program[pc];
            switch (ins.Code)
            {
                case 0x20: // BPF_LD|BPF_W|BPF_ABS
                    Assert.True(ins.K % 4 == 0 && ins.K < 64, $"load at {ins.K}");
                    acc = BitConverter.ToUInt32(data, (int)ins.K);
                    break;
                case 0x15: pc += acc == ins.K ? ins.Jt : ins.Jf; break; // JEQ
                case 0x35: pc += acc >= ins.K ? ins.Jt : ins.Jf; break; // JGE
                case 0x45: pc += (acc & ins.K) != 0 ? ins.Jt : ins.Jf; break; // JSET
                case 0x06: return ins.K; // RET
                default: throw new InvalidOperationException($"opcode {ins.Code:x}");
            }
        }
        throw new InvalidOperationException("ran off the end");
    }

    private static readonly BpfInstruction[] Process = Seccomp.Compile(HostSandbox.ProcessRules());
    private static readonly BpfInstruction[] Vcpu = Seccomp.Compile(HostSandbox.VcpuRules());

    [Theory]
    [InlineData("read")]
    [InlineData("write")]
    [InlineData("futex")]
    [InlineData("ioctl")]
    [InlineData("mmap")]
    [InlineData("openat")]
    [InlineData("renameat")]
    [InlineData("fsync")]
    [InlineData("accept4")]
    [InlineData("epoll_pwait")]
    [InlineData("rt_sigtimedwait")]
    [InlineData("exit_group")]
    public void WhatARunningVmNeedsIsAllowed(string call) => Assert.Equal(Seccomp.RetAllow, Run(Process, call));

    [Theory]
    [InlineData("execve")]
    [InlineData("execveat")]
    [InlineData("fork")]
    [InlineData("vfork")]
    [InlineData("ptrace")]
    [InlineData("mount")]
    [InlineData("init_module")]
    [InlineData("finit_module")]
    [InlineData("setuid")]
    [InlineData("kexec_load")]
    [InlineData("process_vm_writev")]
    [InlineData("bpf")]
    [InlineData("chroot")]
    [InlineData("unshare")]
    public void WhatNoVmNeedsTraps(string call)
    {
        Assert.Equal(Seccomp.RetTrap, Run(Process, call));
        Assert.Equal(Seccomp.RetTrap, Run(Vcpu, call));
    }

    // Calls the measurement (scripts/sandbox-profile over guests with virtio disk and console, VNC, GDB, snapshots and
    // hyvectl) found nothing in hyve making once the sandbox is in: refused everywhere, as a stray one must be.
    [Theory]
    [InlineData("io_uring_setup")]
    [InlineData("inotify_init1")]
    [InlineData("sendfile")]
    [InlineData("copy_file_range")]
    [InlineData("getdents64")]
    [InlineData("mlock")]
    [InlineData("readlinkat")]
    [InlineData("mkdirat")]
    [InlineData("dup")]
    [InlineData("select")]
    [InlineData("sendmmsg")]
    [InlineData("pwritev2")]
    [InlineData("getgid")]
    [InlineData("setpriority")]
    [InlineData("set_tid_address")]
    public void WhatTheMeasurementDroppedTraps(string call)
    {
        Assert.Equal(Seccomp.RetTrap, Run(Process, call));
        Assert.Equal(Seccomp.RetTrap, Run(Vcpu, call));
    }

    [Fact]
    public void SocketsOnlyOfTheFamiliesHyveUses()
    {
        Assert.Equal(Seccomp.RetAllow, Run(Process, "socket", X8664, 1 /* AF_UNIX */, 1));
        Assert.Equal(Seccomp.RetAllow, Run(Process, "socket", X8664, 2 /* AF_INET */, 1));
        Assert.Equal(Seccomp.RetAllow, Run(Process, "socket", X8664, 10 /* AF_INET6 */, 2));
        Assert.Equal(Seccomp.RetTrap, Run(Process, "socket", X8664, 17 /* AF_PACKET */, 3));
        Assert.Equal(Seccomp.RetTrap, Run(Process, "socket", X8664, 16 /* AF_NETLINK */, 3));
        Assert.Equal(Seccomp.RetAllow, Run(Process, "socketpair", X8664, 1, 1));
        Assert.Equal(Seccomp.RetTrap, Run(Process, "socketpair", X8664, 2, 1));
    }

    [Fact]
    public void VcpuThreadsCreateNoSockets()
    {
        foreach (var call in new[] { "socket", "connect", "bind", "listen" })
            Assert.Equal(Seccomp.RetTrap, Run(Vcpu, call, X8664, 1, 1));
        // Thread-pool threads born on a vCPU thread inherit its filter and accept control connections.
        Assert.Equal(Seccomp.RetAllow, Run(Vcpu, "accept4"));
        Assert.Equal(Seccomp.RetAllow, Run(Vcpu, "read"));
        Assert.Equal(Seccomp.RetAllow, Run(Vcpu, "ioctl"));
        Assert.Equal(Seccomp.RetAllow, Run(Vcpu, "sendmsg"));
    }

    [Fact]
    public void ThreadsYesProcessesNo()
    {
        const ulong thread = 0x3d0f00; // glibc pthread_create: CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
        Assert.Equal(Seccomp.RetAllow, Run(Process, "clone", X8664, thread));
        Assert.Equal(Seccomp.RetTrap, Run(Process, "clone", X8664, 17 /* SIGCHLD: fork */));
        Assert.Equal(Seccomp.RetTrap, Run(Process, "clone", X8664, 0x4111 /* CLONE_VM|CLONE_VFORK|SIGCHLD: posix_spawn */));
        // clone3 keeps its flags behind a pointer: ENOSYS sends glibc back to clone.
        Assert.Equal(Errno | 38, Run(Process, "clone3"));
    }

    [Fact]
    public void PrctlOnlyForNamesAndNoNewPrivs()
    {
        Assert.Equal(Seccomp.RetAllow, Run(Process, "prctl", X8664, 15 /* PR_SET_NAME */));
        Assert.Equal(Seccomp.RetAllow, Run(Process, "prctl", X8664, 38 /* PR_SET_NO_NEW_PRIVS */));
        Assert.Equal(Seccomp.RetTrap, Run(Process, "prctl", X8664, 4 /* PR_SET_DUMPABLE */));
        Assert.Equal(Seccomp.RetTrap, Run(Process, "prctl", X8664, 22 /* PR_SET_SECCOMP */));
    }

    [Fact]
    public void OtherArchitecturesAndX32AreRefused()
    {
        // int 0x80 from a 64-bit process: i386 numbers (3 is i386 read, 11 execve) under AUDIT_ARCH_I386.
        Assert.Equal(Seccomp.RetTrap, Run(Process, 3, I386, []));
        Assert.Equal(Seccomp.RetTrap, Run(Process, 11, I386, []));
        // x32: the x86-64 number with bit 30 set, even for a call x86-64 may make.
        Assert.Equal(Seccomp.RetTrap, Run(Process, 0 | 0x40000000, X8664, []));
        Assert.Equal(Seccomp.RetTrap, Run(Process, 59 | 0x40000000, X8664, []));
        Assert.Equal(Seccomp.RetTrap, Run(Process, -1, X8664, []));
        Assert.Equal(Seccomp.RetTrap, Run(Process, 100000, X8664, []));
    }

    [Fact]
    public void EveryCallTheTableNamesHasOneAnswer()
    {
        // No call falls off the program's end, and the sets differ only where the policy says.
        for (int nr = 0; nr < SyscallNames.Count; nr++)
        {
            uint p = Run(Process, nr, X8664, [1, 0, 0, 0, 0, 0]), v = Run(Vcpu, nr, X8664, [1, 0, 0, 0, 0, 0]);
            if (p != v)
                Assert.Contains(SyscallNames.Name(nr), new[] { "socket", "socketpair", "connect", "bind", "listen" });
        }
        Assert.Equal("read", SyscallNames.Name(0));
        Assert.Equal("execve", SyscallNames.Name(59));
        Assert.Equal("exit_group", SyscallNames.Name(231));
        Assert.Equal("seccomp", SyscallNames.Name(317));
        Assert.Equal("clone3", SyscallNames.Name(435));
        Assert.Equal("mseal", SyscallNames.Name(462));
    }

    [Theory]
    [InlineData("on", true)]
    [InlineData("off", false)]
    [InlineData(null, true)]
    public void TheKeyTurnsItOnAndOff(string? value, bool on)
    {
        var r = Options.Parse(value is null ? ["vm"] : ["-o", $"sandbox={value}", "vm"]);
        Assert.Null(r.Error);
        Assert.Equal(on, HostSandbox.Wanted(r.Config));
    }

    [Fact]
    public void AnOddValueIsRefusedAtParseTime()
        => Assert.Contains("sandbox=maybe", Options.Parse(["-o", "sandbox=maybe", "vm"]).Error ?? "", StringComparison.Ordinal);

    // A ROM that halts with interrupts off: the VM ends with status 2 (halted) once it has run.
    private static readonly string HaltRom = GuestRom.ToFile(GuestRom.RealMode(a => { a.cli(); a.hlt(); }));

    private static (int Status, string Err) RunHyve(string? probe, params string[] args)
    {
        string runDir = Path.Combine(Path.GetTempPath(), "hyve-test-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(runDir);
        var psi = new ProcessStartInfo(Path.Combine(HyveProcess.RepoRoot, "hyve")) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("sbx" + Guid.NewGuid().ToString("N")[..6]);
        psi.Environment["HYVE_RUN_DIR"] = runDir;
        if (probe is not null) psi.Environment["HYVE_TEST_SANDBOX_PROBE"] = probe;
        using var p = System.Diagnostics.Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        _ = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(); throw new TimeoutException("hyve did not exit"); }
        p.WaitForExit();
        return (p.ExitCode, err.Result);
    }

    [Fact]
    public void A_guest_runs_to_its_end_inside_the_sandbox()
    {
        var (status, err) = RunHyve(null, "-o", "accel=soft", "-l", $"bootrom,{HaltRom}");
        Assert.True(status == 2, $"status {status}: {err}");
        Assert.Equal("", err);
    }

    [Theory]
    [InlineData("execve", "system call 59 (execve)")]
    [InlineData("socket-packet", "system call 41 (socket)")]
    [InlineData("socket-unix", "system call 41 (socket)")] // allowed to the I/O threads, not to a vCPU thread
    [InlineData("inotify", "system call 294 (inotify_init1)")] // dropped by the measurement
    public void A_forbidden_call_on_a_vcpu_thread_stops_hyve_with_one_audit_line(string probe, string named)
    {
        var (status, err) = RunHyve(probe, "-o", "accel=soft", "-l", $"bootrom,{HaltRom}");
        Assert.Equal(4, status);
        Assert.Equal($"hyve: sandbox: {named} is not allowed; stopping\n", err);
    }

    [Fact]
    public void The_probe_makes_the_real_call_when_the_sandbox_is_off()
    {
        // execve(/bin/true) replaces hyve, which then exits with true's status 0 instead of the halted guest's 2.
        var (status, err) = RunHyve("execve", "-o", "sandbox=off", "-o", "accel=soft", "-l", $"bootrom,{HaltRom}");
        Assert.True(status == 0, $"status {status}: {err}");
        (status, err) = RunHyve("socket-unix", "-o", "sandbox=off", "-o", "accel=soft", "-l", $"bootrom,{HaltRom}");
        Assert.Equal(2, status);
        Assert.Contains("sandbox probe socket-unix: the call returned", err, StringComparison.Ordinal);
    }
}
