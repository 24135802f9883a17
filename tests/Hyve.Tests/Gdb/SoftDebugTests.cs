// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Soft;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Gdb;

/// <summary>The software CPU's debug hardware in process, as KVM_SET_GUEST_DEBUG defines it and the SDM (Vol. 3 ch. 17)
/// describes the debug registers: single step after one instruction with DR6.BS, instruction breakpoints before the
/// instruction, data breakpoints after the access with DR6.Bn, INT3 reported at the INT3.</summary>
public class SoftDebugTests
{
    private const ulong Code = 0x1000;
    private const ulong Dr6Bs = 1ul << 14;

    private sealed class Rig : IDisposable
    {
        private readonly GuestMemory _mem = new(1 << 20);
        private readonly SoftBackend _backend;

        public Rig(Action<Assembler> code)
        {
            var vm = new Vm("dbg", new CpuTopology(1, 1, 1, 1), _mem, new ManualClock());
            _backend = new SoftBackend(vm);
            Vcpu = (SoftVcpu)_backend.CreateVcpu(0);
            var a = new Assembler(16);
            code(a);
            var ms = new MemoryStream();
            a.Assemble(new StreamCodeWriter(ms), Code);
            Assert.True(_mem.TryGetSpan(0, 1 << 20, MemProt.Write, out var ram));
            ms.ToArray().CopyTo(ram[(int)Code..]);
            // Real mode with CS = DS = SS = 0: IP and data offsets are linear addresses.
            var cpu = Vcpu.Cpu;
            cpu.Segs[(int)Seg.Cs] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x9b));
            cpu.Rip = Code;
            cpu.Gpr[4] = 0x7000;
        }

        public SoftVcpu Vcpu { get; }

        public Span<byte> Ram => _mem.TryGetSpan(0, 1 << 20, MemProt.Write, out var s) ? s : default;

        public ulong Ip => Vcpu.Cpu.Rip;

        public ulong Reg(int n) => Vcpu.Cpu.Gpr[n];

        public DebugExitInfo RunToDebugExit()
        {
            var ev = Vcpu.Run();
            Assert.Equal(VcpuEvent.Debug, ev);
            return Vcpu.LastDebugExit;
        }

        public void RunToHalt() => Assert.Equal(VcpuEvent.HaltedInterruptsDisabled, Vcpu.Run());

        public void Dispose()
        {
            Vcpu.Dispose();
            _backend.Dispose();
            _mem.Dispose();
        }
    }

    private static GuestDebugSettings Breakpoint(int index, ulong address, int rw, int len)
    {
        ulong lenBits = len switch { 1 => 0ul, 2 => 1ul, 8 => 2ul, _ => 3ul };
        ulong dr7 = 1ul << (2 * index) | (ulong)rw << (16 + 4 * index) | lenBits << (18 + 4 * index);
        return new GuestDebugSettings(true, false, false, true,
            index == 0 ? address : 0, index == 1 ? address : 0, index == 2 ? address : 0, index == 3 ? address : 0, dr7);
    }

    [Fact]
    public void SingleStepStopsAfterEachInstructionWithBs()
    {
        using var r = new Rig(a =>
        {
            a.mov(ax, 1);    // 3 bytes
            a.mov(bx, 2);    // 3 bytes
            a.cli();
            a.hlt();
        });
        Assert.True(r.Vcpu.SetGuestDebug(new GuestDebugSettings(true, true, false, false)));
        var e = r.RunToDebugExit();
        Assert.Equal(1, e.Exception);
        Assert.NotEqual(0ul, e.Dr6 & Dr6Bs);
        Assert.Equal(0ul, e.Dr6 & 0xf);
        Assert.Equal(Code + 3, e.Pc);
        Assert.Equal(Code + 3, r.Ip);
        Assert.Equal(1ul, r.Reg(0));
        Assert.Equal(0ul, r.Reg(3));
        e = r.RunToDebugExit();
        Assert.Equal(Code + 6, e.Pc);
        Assert.Equal(2ul, r.Reg(3));
        // Debugging off: the guest runs on to its halt.
        r.Vcpu.SetGuestDebug(default);
        r.RunToHalt();
    }

    [Fact]
    public void InstructionBreakpointStopsBeforeTheInstructionAndResumingPassesIt()
    {
        using var r = new Rig(a =>
        {
            var loop = a.CreateLabel();
            a.mov(cx, 3);        // 3 bytes
            a.Label(ref loop);
            a.inc(bx);           // Code + 3
            a.loop(loop);
            a.cli();
            a.hlt();
        });
        r.Vcpu.SetGuestDebug(Breakpoint(2, Code + 3, rw: 0, len: 1));
        for (int i = 0; i < 3; i++)
        {
            var e = r.RunToDebugExit();
            Assert.Equal(1, e.Exception);
            Assert.Equal(1ul << 2, e.Dr6 & 0xf); // B2
            Assert.Equal(0ul, e.Dr6 & Dr6Bs);
            Assert.Equal(Code + 3, e.Pc);
            Assert.Equal(Code + 3, r.Ip);
            Assert.Equal((ulong)i, r.Reg(3)); // not executed yet
        }
        r.RunToHalt();
        Assert.Equal(3ul, r.Reg(3));
    }

    [Fact]
    public void Int3IsReportedAtTheInt3AndAReinjectedOneReachesTheGuestHandler()
    {
        const ushort handler = 0x2000;
        using var r = new Rig(a =>
        {
            a.nop();
            a.int3();            // Code + 1
            a.mov(dx, 5);
            a.cli();
            a.hlt();
        });
        // The guest's own IVT entry 3: mov cx, 7; iret.
        BitConverter.TryWriteBytes(r.Ram[12..], handler);
        BitConverter.TryWriteBytes(r.Ram[14..], (ushort)0);
        byte[] h = [0xb9, 0x07, 0x00, 0xcf];
        h.CopyTo(r.Ram[handler..]);

        r.Vcpu.SetGuestDebug(new GuestDebugSettings(true, false, true, false));
        var e = r.RunToDebugExit();
        Assert.Equal(3, e.Exception);
        Assert.Equal(Code + 1, e.Pc);
        Assert.Equal(Code + 1, r.Ip); // left on the INT3, as KVM leaves it
        Assert.Equal(0ul, r.Reg(1));

        // Not the debugger's: the GDB server re-injects it. The guest's handler runs and returns past the INT3.
        r.Vcpu.InjectException(3);
        r.RunToHalt();
        Assert.Equal(7ul, r.Reg(1));
        Assert.Equal(5ul, r.Reg(2));
        Assert.Equal(0x7000ul, r.Reg(4));
        // The return address the INT3 pushed: the instruction after it.
        Assert.Equal((ushort)(Code + 2), BitConverter.ToUInt16(r.Ram[(0x7000 - 6)..]));
    }

    [Fact]
    public void WriteWatchpointsStopAfterTheWritingInstructionAndIgnoreReads()
    {
        using var r = new Rig(a =>
        {
            a.mov(al, __byte_ptr[0x5002]);     // read inside DR0's dword: ignored by a write breakpoint
            a.mov(__byte_ptr[0x5003], 1);      // write of its last byte
            a.mov(__word_ptr[0x4fff], ax);     // a word straddling its first byte
            a.mov(__byte_ptr[0x5004], 1);      // just past it
            a.cli();
            a.hlt();
        });
        r.Vcpu.SetGuestDebug(Breakpoint(0, 0x5000, rw: 1, len: 4));
        var e = r.RunToDebugExit();
        Assert.Equal(1, e.Exception);
        Assert.Equal(1ul, e.Dr6 & 0xf);
        Assert.Equal(1, r.Ram[0x5003]); // after the access
        ulong afterFirstWrite = e.Pc;
        Assert.Equal(r.Ip, afterFirstWrite);
        e = r.RunToDebugExit();
        Assert.Equal(1ul, e.Dr6 & 0xf);
        Assert.True(e.Pc > afterFirstWrite);
        r.RunToHalt(); // the write at 0x5004 is outside
    }

    [Theory]
    [InlineData(1, 0x5001, 0x5001, false)]
    [InlineData(1, 0x5001, 0x5000, true)]
    [InlineData(2, 0x5002, 0x5003, false)]
    [InlineData(2, 0x5002, 0x5001, true)]
    [InlineData(2, 0x5002, 0x5004, true)]
    [InlineData(8, 0x5008, 0x500f, false)]
    [InlineData(8, 0x5008, 0x5007, true)]
    [InlineData(8, 0x5008, 0x5010, true)]
    public void ReadWriteWatchpointsCatchReadsWithinTheirLength(int len, ulong address, ushort readAt, bool outside)
    {
        using var r = new Rig(a =>
        {
            a.mov(al, __byte_ptr[readAt]);
            a.cli();
            a.hlt();
        });
        r.Vcpu.SetGuestDebug(Breakpoint(3, address, rw: 3, len: len));
        if (outside)
        {
            r.RunToHalt();
            return;
        }
        var e = r.RunToDebugExit();
        Assert.Equal(1ul << 3, e.Dr6 & 0xf);
        Assert.Equal(Code + 3, e.Pc); // mov al, [moffs16] is 3 bytes
    }

    [Fact]
    public void AWatchpointInARepStringStopsAfterTheIterationThatHitIt()
    {
        using var r = new Rig(a =>
        {
            a.xor(ax, ax);
            a.mov(es, ax);
            a.mov(di, 0x6000);
            a.mov(cx, 0x100);
            a.mov(al, 0xaa);
            a.cld();
            a.rep.stosb();
            a.cli();
            a.hlt();
        });
        r.Vcpu.SetGuestDebug(Breakpoint(1, 0x6010, rw: 1, len: 1));
        var e = r.RunToDebugExit();
        Assert.Equal(2ul, e.Dr6 & 0xf);
        Assert.Equal(0x6011ul, r.Reg(7));       // DI past the byte written
        Assert.Equal(0x100ul - 0x11, r.Reg(1)); // CX counts what is left
        Assert.Equal(0, r.Ram[0x6011]);
        r.Vcpu.SetGuestDebug(default);
        r.RunToHalt();
        Assert.Equal(0xaa, r.Ram[0x60ff]);
        Assert.Equal(0ul, r.Reg(1));
    }
}
