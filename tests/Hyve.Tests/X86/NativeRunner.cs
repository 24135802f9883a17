// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.X86;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// Runs one instruction natively on the host CPU and under the engine at the same addresses.
/// Guest-physical equals host-virtual: the engine's memory answers TryGetSpan for the runner's own
/// mmap'd pages, and identity page tables (1 GiB pages) map them in 64-bit long mode. So memory
/// operands ([rsi+n], string ops) see the same bytes at the same address natively and emulated.
/// The stub loads RAX..R15 (not RSP) and RFLAGS from a context block, executes the instruction,
/// and stores them back.
/// </summary>
public sealed unsafe class NativeRunner : IGuestPhysicalMemory, IDisposable
{
    [DllImport("libc", SetLastError = true)]
    private static extern nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);
    [DllImport("libc", SetLastError = true)]
    private static extern int munmap(nint addr, nuint length);

    private const int CodeSize = 0x2000, DataSize = 0x3000, TableSize = 0x4000;
    public readonly byte* Code, Data, Tables;
    private readonly ulong* _ctx;
    private readonly byte[] _prologue, _epilogue;
    private readonly InstructionEngine _engine;
    private int _pdpts;

    public NativeRunner()
    {
        Code = (byte*)Map(CodeSize, 7);
        Data = (byte*)Map(DataSize, 3);
        Tables = (byte*)Map(TableSize, 3);
        _ctx = (ulong*)NativeMemory.AllocZeroed(17 * 8);
        foreach (var p in new[] { (ulong)Code, (ulong)Data, (ulong)Tables }) IdentityMap(p);
        _prologue = Assemble(a =>
        {
            a.push(rbx); a.push(rbp); a.push(r12); a.push(r13); a.push(r14); a.push(r15);
            a.push(rdi);
            a.push(__qword_ptr[rdi + 128]); a.popfq();
            a.mov(rax, __[rdi]); a.mov(rcx, __[rdi + 8]); a.mov(rdx, __[rdi + 16]); a.mov(rbx, __[rdi + 24]);
            a.mov(rbp, __[rdi + 40]); a.mov(rsi, __[rdi + 48]);
            a.mov(r8, __[rdi + 64]); a.mov(r9, __[rdi + 72]); a.mov(r10, __[rdi + 80]); a.mov(r11, __[rdi + 88]);
            a.mov(r12, __[rdi + 96]); a.mov(r13, __[rdi + 104]); a.mov(r14, __[rdi + 112]); a.mov(r15, __[rdi + 120]);
            a.mov(rdi, __[rdi + 56]);
        }, 0);
        _epilogue = Assemble(a =>
        {
            a.xchg(__[rsp], rdi);
            a.mov(__[rdi], rax); a.mov(__[rdi + 8], rcx); a.mov(__[rdi + 16], rdx); a.mov(__[rdi + 24], rbx);
            a.mov(__[rdi + 40], rbp); a.mov(__[rdi + 48], rsi);
            a.mov(__[rdi + 64], r8); a.mov(__[rdi + 72], r9); a.mov(__[rdi + 80], r10); a.mov(__[rdi + 88], r11);
            a.mov(__[rdi + 96], r12); a.mov(__[rdi + 104], r13); a.mov(__[rdi + 112], r14); a.mov(__[rdi + 120], r15);
            a.pushfq(); a.pop(__qword_ptr[rdi + 128]);
            a.pop(rax); a.mov(__[rdi + 56], rax);
            a.cld();
            a.pop(r15); a.pop(r14); a.pop(r13); a.pop(r12); a.pop(rbp); a.pop(rbx);
            a.ret();
        }, 0);
        _engine = new InstructionEngine(this) { Model = CpuModel.Named("max", CpuVendor.Intel) }; // every feature the host is compared on
    }

    private static nint Map(int size, int prot)
    {
        nint p = mmap(0, (nuint)size, prot, 0x22 /* MAP_PRIVATE|MAP_ANONYMOUS */, -1, 0);
        if (p == -1 || p == 0) throw new InvalidOperationException("mmap failed: " + Marshal.GetLastPInvokeError());
        return p;
    }

    private void IdentityMap(ulong a)
    {
        ulong* pml4 = (ulong*)Tables;
        ulong i4 = (a >> 39) & 511, i3 = (a >> 30) & 511;
        if ((pml4[i4] & 1) == 0)
        {
            _pdpts++;
            pml4[i4] = (ulong)(Tables + 0x1000 * _pdpts) | 7;
        }
        ulong* pdpt = (ulong*)(pml4[i4] & ~0xffful);
        pdpt[i3] = (a & ~((1ul << 30) - 1)) | 0x87;
        ulong end = a + 0x3fff;
        if (((end >> 30) & 511) != i3) IdentityMap(end & ~((1ul << 30) - 1)); // region straddles a 1 GiB boundary
    }

    private sealed class ListWriter : CodeWriter
    {
        public readonly List<byte> Bytes = new();
        public override void WriteByte(byte value) => Bytes.Add(value);
    }

    public static byte[] Assemble(Action<Assembler> emit, ulong rip)
    {
        var a = new Assembler(64);
        emit(a);
        var w = new ListWriter();
        a.Assemble(w, rip);
        return w.Bytes.ToArray();
    }

    /// <summary>Writes the stub with <paramref name="emit"/>'s instruction and returns the instruction's address.</summary>
    public ulong Load(Action<Assembler> emit)
    {
        ulong insn = (ulong)Code + (ulong)_prologue.Length;
        var body = Assemble(emit, insn);
        var all = new byte[_prologue.Length + body.Length + _epilogue.Length];
        _prologue.CopyTo(all, 0);
        body.CopyTo(all, _prologue.Length);
        _epilogue.CopyTo(all, _prologue.Length + body.Length);
        all.CopyTo(new Span<byte>(Code, CodeSize));
        InsnLength = body.Length;
        return insn;
    }

    public int InsnLength { get; private set; }

    /// <summary>Runs the loaded instruction natively with the given registers (RSP ignored) and flags.</summary>
    public void RunNative(ulong[] gpr, ref ulong rflags)
    {
        for (int i = 0; i < 16; i++) _ctx[i] = gpr[i];
        _ctx[16] = rflags;
        ((delegate* unmanaged<ulong*, void>)Code)(_ctx);
        for (int i = 0; i < 16; i++) if (i != 4) gpr[i] = _ctx[i];
        rflags = _ctx[16];
    }

    /// <summary>
    /// Runs the loaded body under the engine in flat 64-bit mode until RIP reaches its end (bodies may hold a few
    /// instructions, e.g. a branch and its targets). The engine's stack is the unused top of the page-table area.
    /// </summary>
    public StepResult RunEngine(CpuState cpu, ulong insn, IGuestPorts? ports = null)
    {
        cpu.SetFlatLongMode((ulong)Tables);
        cpu.Rip = insn;
        cpu.Gpr[4] = (ulong)Tables + 0x3f00;
        ulong end = insn + (ulong)InsnLength;
        StepResult r = default;
        for (int n = 0; n < 16 && cpu.Rip != end; n++)
        {
            r = _engine.Step(cpu, ports);
            if (!r.IsOk) break;
        }
        return r;
    }

    public Span<byte> DataSpan => new(Data, DataSize);

    public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
    {
        foreach (var (b, n) in new[] { ((ulong)Code, CodeSize), ((ulong)Data, DataSize), ((ulong)Tables, TableSize) })
        {
            if (gpa >= b && gpa + (ulong)length <= b + (ulong)n) { span = new Span<byte>((void*)gpa, length); return true; }
        }
        span = default;
        return false;
    }

    public bool TryReadMmio(ulong gpa, int size, out ulong value) { value = 0; return false; }
    public bool TryWriteMmio(ulong gpa, int size, ulong value) => false;

    public void Dispose()
    {
        munmap((nint)Code, CodeSize); munmap((nint)Data, DataSize); munmap((nint)Tables, TableSize);
        NativeMemory.Free(_ctx);
    }
}
