// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using System.Text;

namespace Hyve.Vmm.Native;

/// <summary>One classic-BPF instruction (struct sock_filter).</summary>
[StructLayout(LayoutKind.Sequential)]
public readonly record struct BpfInstruction(ushort Code, byte Jt, byte Jf, uint K);

/// <summary>What a seccomp rule checks in one argument before it allows the call.</summary>
/// <param name="Index">Argument number, 0-5; only its low 32 bits are compared (the arguments so checked are ints).</param>
/// <param name="Values">The call is allowed when the argument equals one of these ...</param>
/// <param name="BitsSet">... or, when not zero (one bit), when that bit is set in it.</param>
public sealed record ArgCheck(int Index, uint[] Values, uint BitsSet = 0);

/// <summary>One entry of an allow-list: a system call, allowed outright, allowed when <see cref="Arg"/> holds, or
/// answered with an errno without running (<see cref="Errno"/>, as Chrome and Firecracker answer clone3 with ENOSYS so
/// that glibc falls back to clone, whose flags a filter can see).</summary>
public sealed record SyscallRule(string Name, ArgCheck? Arg = null, int Errno = 0)
{
    /// <summary>The x86-64 number of <see cref="Name"/>.</summary>
    public int Number { get; } = SyscallNames.Number(Name);
}

/// <summary>
/// A seccomp allow-list compiled to classic BPF, and its installation (PR_SET_NO_NEW_PRIVS, seccomp(2)). The program
/// first checks the architecture (AUDIT_ARCH_X86_64: a 32-bit int 0x80 call is refused) and refuses x32 calls
/// (number with bit 30), then compares the number against each rule; anything else returns SECCOMP_RET_TRAP, whose
/// SIGSYS <see cref="InstallAuditTrap"/> turns into one line on stderr and exit status 4.
/// </summary>
public static unsafe partial class Seccomp
{
    /// <summary>AUDIT_ARCH_X86_64 (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).</summary>
    public const uint AuditArchX8664 = 0xC000003E;
    /// <summary>__X32_SYSCALL_BIT.</summary>
    public const uint X32Bit = 0x40000000;
    /// <summary>SECCOMP_RET_ALLOW.</summary>
    public const uint RetAllow = 0x7FFF0000;
    /// <summary>SECCOMP_RET_TRAP: SIGSYS to the calling thread, the call not made.</summary>
    public const uint RetTrap = 0x00030000;
    /// <summary>SECCOMP_RET_ERRNO (the errno in the low 16 bits).</summary>
    public const uint RetErrno = 0x00050000;
    /// <summary>SECCOMP_RET_KILL_PROCESS.</summary>
    public const uint RetKillProcess = 0x80000000;

    // struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
    /// <summary>Offset of seccomp_data.nr.</summary>
    public const int OffsetNr = 0;
    /// <summary>Offset of seccomp_data.arch.</summary>
    public const int OffsetArch = 4;
    /// <summary>Offset of the low 32 bits of seccomp_data.args[i] (little endian).</summary>
    public static int OffsetArg(int i) => 16 + 8 * i;

    // BPF opcodes (linux/filter.h).
    /// <summary>BPF_LD|BPF_W|BPF_ABS.</summary>
    public const ushort LdAbsW = 0x20;
    /// <summary>BPF_JMP|BPF_JEQ|BPF_K.</summary>
    public const ushort JeqK = 0x15;
    /// <summary>BPF_JMP|BPF_JGE|BPF_K.</summary>
    public const ushort JgeK = 0x35;
    /// <summary>BPF_JMP|BPF_JSET|BPF_K.</summary>
    public const ushort JsetK = 0x45;
    /// <summary>BPF_JMP|BPF_JA.</summary>
    public const ushort Ja = 0x05;
    /// <summary>BPF_ALU|BPF_AND|BPF_K.</summary>
    public const ushort AndK = 0x54;
    /// <summary>BPF_RET|BPF_K.</summary>
    public const ushort RetK = 0x06;

    /// <summary>Compiles <paramref name="rules"/> to a BPF program whose answer for anything else is <paramref name="otherwise"/>.</summary>
    public static BpfInstruction[] Compile(IReadOnlyList<SyscallRule> rules, uint otherwise = RetTrap)
    {
        var p = new List<BpfInstruction>
        {
            new(LdAbsW, 0, 0, OffsetArch),
            new(JeqK, 1, 0, AuditArchX8664),
            new(RetK, 0, 0, otherwise),
            new(LdAbsW, 0, 0, OffsetNr),
            new(JgeK, 0, 1, X32Bit),
            new(RetK, 0, 0, otherwise),
        };
        // One block a rule, each falling through to the next when the number differs, so no jump is longer than a
        // block (classic BPF's conditional jumps reach 255 instructions).
        var seen = new HashSet<int>();
        foreach (var r in rules)
        {
            if (!seen.Add(r.Number)) throw new ArgumentException($"system call {r.Name} has two rules");
            var block = new List<BpfInstruction>();
            if (r.Errno != 0) block.Add(new(RetK, 0, 0, RetErrno | ((uint)r.Errno & 0xFFFF)));
            else if (r.Arg is null) block.Add(new(RetK, 0, 0, RetAllow));
            else
            {
                // Load the argument; each value compared (and the bit tested) jumps to the "allow" that ends the
                // block; none matching reaches "otherwise". Every path through the block returns, so the accumulator
                // it changes never reaches the next rule's compare.
                var a = r.Arg;
                if (a.BitsSet != 0 && (a.BitsSet & (a.BitsSet - 1)) != 0) throw new ArgumentException($"{r.Name}: BitsSet must be one bit");
                block.Add(new(LdAbsW, 0, 0, (uint)OffsetArg(a.Index)));
                foreach (var v in a.Values) block.Add(new(JeqK, 0, 0, v));
                if (a.BitsSet != 0) block.Add(new(JsetK, 0, 0, a.BitsSet));
                int allowAt = block.Count + 1;
                for (int i = 1; i < block.Count; i++) block[i] = block[i] with { Jt = (byte)(allowAt - i - 1) };
                block.Add(new(RetK, 0, 0, otherwise));
                block.Add(new(RetK, 0, 0, RetAllow));
            }
            if (block.Count > 254) throw new ArgumentException($"{r.Name}: rule too long");
            p.Add(new(JeqK, 0, (byte)block.Count, (uint)r.Number));
            p.AddRange(block);
        }
        p.Add(new(RetK, 0, 0, otherwise));
        if (p.Count > 4096) throw new ArgumentException("seccomp program longer than BPF_MAXINSNS");
        return [.. p];
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int prctl(int option, nuint a2, nuint a3, nuint a4, nuint a5);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint syscall(nint number, nint a1, nint a2, nint a3);

    [LibraryImport("libc", EntryPoint = "sigaction", SetLastError = true)]
    private static partial int sigaction(int sig, void* act, void* oldact);

    [LibraryImport("libc", SetLastError = true)]
    private static partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mprotect(void* addr, nuint length, int prot);

    private const int PrSetNoNewPrivs = 38;
    private const int SysSeccomp = 317;
    private const int SeccompSetModeFilter = 1;
    /// <summary>SECCOMP_FILTER_FLAG_TSYNC: the filter joins every thread of the process.</summary>
    public const int FlagTsync = 1;
    private const int SigSys = 31;
    private const int SaSigInfo = 4;

    /// <summary>Sets no_new_privs and installs <paramref name="program"/> on this thread, or on every thread of the
    /// process with <see cref="FlagTsync"/>. Returns 0, or the errno (or, for TSYNC, the thread id that could not join).</summary>
    public static int Install(BpfInstruction[] program, int flags)
    {
        if (prctl(PrSetNoNewPrivs, 1, 0, 0, 0) != 0) return Marshal.GetLastPInvokeError();
        fixed (BpfInstruction* f = program)
        {
            // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
            var prog = stackalloc nint[2];
            prog[0] = program.Length;
            prog[1] = (nint)f;
            nint r = syscall(SysSeccomp, SeccompSetModeFilter, flags, (nint)prog);
            if (r < 0) return Marshal.GetLastPInvokeError();
            return (int)r; // TSYNC: >0 is the id of a thread that has another filter
        }
    }

    private static bool _trapInstalled;

    /// <summary>
    /// Installs the SIGSYS handler that a trapped call reaches: it writes one line naming the call to stderr and ends
    /// the process with status 4. The handler is a few instructions of machine code over a table of lines built here
    /// (a signal handler may call only async-signal-safe code, and managed code is not that), so it makes exactly two
    /// system calls, write and exit_group, both of which every filter allows.
    /// </summary>
    public static void InstallAuditTrap(string prefix)
    {
        if (_trapInstalled) return;
        int n = SyscallNames.Count;
        var lines = new byte[n][];
        for (int i = 0; i < n; i++)
            lines[i] = Encoding.ASCII.GetBytes($"{prefix}system call {i} ({SyscallNames.Name(i) ?? "unknown"}) is not allowed; stopping\n");
        byte[] generic = Encoding.ASCII.GetBytes($"{prefix}a system call outside the x86-64 table (32-bit or x32) is not allowed; stopping\n");
        const int CodeSize = 128;
        int tableOffset = CodeSize + ((generic.Length + 15) & ~15);
        int textOffset = tableOffset + 16 * n;
        int size = textOffset;
        foreach (var l in lines) size += l.Length;
        nuint mapped = (nuint)((size + 4095) & ~4095);
        byte* page = (byte*)mmap(null, mapped, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapAnonymous, -1, 0);
        if (page == (byte*)-1) throw new IOException("sandbox: cannot map the audit handler");
        new ReadOnlySpan<byte>(generic).CopyTo(new Span<byte>(page + CodeSize, generic.Length));
        ulong* table = (ulong*)(page + tableOffset);
        int at = textOffset;
        for (int i = 0; i < n; i++)
        {
            new ReadOnlySpan<byte>(lines[i]).CopyTo(new Span<byte>(page + at, lines[i].Length));
            table[2 * i] = (ulong)(page + at);
            table[2 * i + 1] = (ulong)lines[i].Length;
            at += lines[i].Length;
        }
        var code = new List<byte>();
        void Bytes(params byte[] b) => code.AddRange(b);
        void U32(uint v) => code.AddRange(BitConverter.GetBytes(v));
        void U64(ulong v) => code.AddRange(BitConverter.GetBytes(v));
        // void handler(int sig /*edi*/, siginfo_t *si /*rsi*/, void *uc /*rdx*/); si->_sigsys: _call_addr at 16,
        // _syscall at 24, _arch at 28.
        Bytes(0x8B, 0x46, 0x1C);                 // mov eax, [rsi+28]      si_arch
        Bytes(0x3D); U32(AuditArchX8664);        // cmp eax, AUDIT_ARCH_X86_64
        Bytes(0x75); int jne = code.Count; Bytes(0);          // jne generic
        Bytes(0x8B, 0x46, 0x18);                 // mov eax, [rsi+24]      si_syscall (zero-extends)
        Bytes(0x3D); U32((uint)n);               // cmp eax, n
        Bytes(0x73); int jae = code.Count; Bytes(0);          // jae generic (x32 numbers too)
        Bytes(0x48, 0xC1, 0xE0, 0x04);           // shl rax, 4
        Bytes(0x48, 0xB9); U64((ulong)table);    // mov rcx, table
        Bytes(0x48, 0x01, 0xC1);                 // add rcx, rax
        Bytes(0x48, 0x8B, 0x31);                 // mov rsi, [rcx]
        Bytes(0x48, 0x8B, 0x51, 0x08);           // mov rdx, [rcx+8]
        Bytes(0xEB); int jmp = code.Count; Bytes(0);          // jmp write
        int genericAt = code.Count;
        code[jne] = (byte)(genericAt - jne - 1);
        code[jae] = (byte)(genericAt - jae - 1);
        Bytes(0x48, 0xBE); U64((ulong)(page + CodeSize)); // mov rsi, generic
        Bytes(0xBA); U32((uint)generic.Length);  // mov edx, len
        int writeAt = code.Count;
        code[jmp] = (byte)(writeAt - jmp - 1);
        Bytes(0xBF); U32(2);                     // mov edi, 2
        Bytes(0xB8); U32(1);                     // mov eax, SYS_write
        Bytes(0x0F, 0x05);                       // syscall
        Bytes(0xBF); U32(4);                     // mov edi, 4
        Bytes(0xB8); U32(231);                   // mov eax, SYS_exit_group
        Bytes(0x0F, 0x05);                       // syscall
        Bytes(0xF4);                             // hlt (not reached)
        if (code.Count > CodeSize) throw new InvalidOperationException("audit handler too long");
        for (int i = 0; i < code.Count; i++) page[i] = code[i];
        if (mprotect(page, mapped, Libc.ProtRead | Libc.ProtExec) != 0) throw new IOException("sandbox: cannot protect the audit handler");
        // struct sigaction (glibc, x86-64): handler, sa_mask (128 bytes), sa_flags, sa_restorer.
        var act = stackalloc byte[152];
        new Span<byte>(act, 152).Clear();
        *(ulong*)act = (ulong)page;
        *(int*)(act + 136) = SaSigInfo;
        if (sigaction(SigSys, act, null) != 0) throw new IOException("sandbox: cannot install the SIGSYS handler");
        _trapInstalled = true;
    }
}
