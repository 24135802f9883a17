// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

/// <summary>
/// The guest's own debug facilities (SDM Vol. 3 chapter 17, issue 17 item 3): DR0-DR3 with DR7's enables, lengths and
/// types (instruction, data write, data read/write, and I/O with CR4.DE), DR6's status bits, the single-step trap of
/// RFLAGS.TF (DR6.BS), RF suppressing an instruction breakpoint once, and the MOV SS / POP SS shadow holding a debug
/// trap until after the next instruction. Costs nothing unless TF, RF or a DR7 enable is set: <see cref="Run"/> then
/// steps through <see cref="StepWithDebug"/> one instruction at a time.
/// </summary>
public sealed unsafe partial class InstructionEngine
{
    private const ulong Dr6Bs = 1ul << 14;
    private GuestDebugHooks? _debugHooks;
    private ulong _heldDebugTrap; // DR6 bits of a trap held by a MOV SS / POP SS shadow

    /// <summary>True when the guest's debug state asks for per-instruction checks (TF, RF, or an enabled breakpoint).</summary>
    public static bool GuestDebugActive(CpuState cpu) => (cpu.Rflags & (CpuState.FlagTf | CpuState.FlagRf)) != 0 || (cpu.Dr[7] & 0xff) != 0;

    /// <summary>
    /// Executes one instruction as <see cref="Step(CpuState, IGuestPorts?)"/> does, with the guest's debug checks: an
    /// enabled instruction breakpoint at CS:RIP (and RF clear) is a #DB fault with RIP unchanged; after an instruction
    /// completes, data and I/O breakpoint hits and a single step are a #DB trap (RIP past the instruction), returned as
    /// <see cref="StepStatus.Exception"/> for the caller to deliver. DR6 records the cause (B0-B3, BS).
    /// </summary>
    public StepResult StepWithDebug(CpuState cpu, IGuestPorts? ports)
    {
        ulong dr7 = cpu.Dr[7];
        ulong la = 0;
        if ((dr7 & 0xff) != 0 && (cpu.Rflags & CpuState.FlagRf) == 0)
        {
            la = cpu.CodeBitness == 64 ? cpu.Rip : (cpu.Segs[(int)Seg.Cs].Descriptor.Base + cpu.Rip) & 0xffffffff;
            ulong hits = 0;
            for (int i = 0; i < 4; i++)
                if (Enabled(dr7, i) && ((dr7 >> (16 + 4 * i)) & 3) == 0 && cpu.Dr[i] == la) hits |= 1ul << i;
            if (hits != 0)
            {
                // An instruction breakpoint is a fault: DR6.B0-B3 report the matches (SDM 17.2.3).
                cpu.Dr[6] = (cpu.Dr[6] & ~0xful) | hits;
                return new StepResult(StepStatus.Exception, new PendingException(Vector.DB, false, 0, 0), 0, Code.INVALID);
            }
        }
        bool tf = (cpu.Rflags & CpuState.FlagTf) != 0;
        int dataMask = 0, ioMask = 0;
        for (int i = 0; i < 4 && (dr7 & 0xff) != 0; i++)
        {
            if (!Enabled(dr7, i)) continue;
            switch ((dr7 >> (16 + 4 * i)) & 3)
            {
                case 1: case 3: dataMask |= 1 << i; break;
                case 2: if ((cpu.Cr4 & CpuState.Cr4De) != 0) ioMask |= 1 << i; break;
            }
        }
        StepResult r;
        if ((dataMask | ioMask) == 0) r = Step(cpu, ports);
        else
        {
            var h = _debugHooks ??= new GuestDebugHooks();
            h.Begin(cpu, dataMask, ioMask, _mem.Observer, ports);
            var savedObserver = _mem.Observer;
            int savedRep = MaxRepIterations;
            if (dataMask != 0)
            {
                _mem.Observer = h;
                MaxRepIterations = 1; // a data breakpoint traps after the iteration that hit it (SDM 17.3.1.2)
            }
            try
            {
                r = Step(cpu, ioMask != 0 ? h : ports);
            }
            finally
            {
                _mem.Observer = savedObserver;
                MaxRepIterations = savedRep;
            }
            if (r.Status != StepStatus.Ok) return r;
            ulong bits = (ulong)h.Hits;
            if (bits != 0) cpu.Dr[6] = (cpu.Dr[6] & ~0xful) | bits;
            return Trap(cpu, r, bits, tf);
        }
        if (r.Status != StepStatus.Ok) return r;
        return Trap(cpu, r, 0, tf);
    }

    // After a completed instruction: the single-step trap (not after INT n/INT3/INTO/INT1, which clear TF on the way
    // into their handler), combined with the data/I-O hits; held while a MOV SS / POP SS shadow is in force.
    private StepResult Trap(CpuState cpu, StepResult r, ulong bits, bool tf)
    {
        if (tf && r.Code is not (Code.Int_imm8 or Code.Int3 or Code.Into or Code.Int1)) bits |= Dr6Bs;
        if (bits != 0 && (cpu.InterruptShadow & CpuState.ShadowMovSs) != 0)
        {
            _heldDebugTrap |= bits;
            return r;
        }
        bits |= _heldDebugTrap;
        _heldDebugTrap = 0;
        if (bits == 0) return r;
        if ((bits & Dr6Bs) != 0) cpu.Dr[6] |= Dr6Bs;
        cpu.Dr[6] |= bits & 0xf;
        return new StepResult(StepStatus.Exception, new PendingException(Vector.DB, false, 0, 0), 0, r.Code);
    }

    private static bool Enabled(ulong dr7, int i) => (dr7 & (3ul << (2 * i))) != 0;

    // Watches one instruction's data accesses and port accesses for the guest's breakpoints, passing both on.
    private sealed class GuestDebugHooks : ILinearAccessObserver, IGuestPorts
    {
        private CpuState _cpu = null!;
        private int _dataMask, _ioMask;
        private ILinearAccessObserver? _next;
        private IGuestPorts? _ports;
        public int Hits;

        public void Begin(CpuState cpu, int dataMask, int ioMask, ILinearAccessObserver? next, IGuestPorts? ports)
        {
            _cpu = cpu;
            _dataMask = dataMask;
            _ioMask = ioMask;
            _next = next;
            _ports = ports;
            Hits = 0;
        }

        // LEN 00/01/11/10 = 1/2/4/8 bytes; the address is aligned down to the length (SDM 17.2.5).
        private int Match(int mask, ulong address, ulong size)
        {
            ulong dr7 = _cpu.Dr[7];
            int hits = 0;
            for (int i = 0; i < 4; i++)
            {
                if ((mask & (1 << i)) == 0) continue;
                ulong len = ((dr7 >> (18 + 4 * i)) & 3) switch { 0 => 1ul, 1 => 2ul, 2 => 8ul, _ => 4ul };
                ulong start = _cpu.Dr[i] & ~(len - 1);
                if (address < start + len && start < address + size) hits |= 1 << i;
            }
            return hits;
        }

        public void OnDataAccess(ulong linear, int size, PageAccess access)
        {
            _next?.OnDataAccess(linear, size, access);
            int m = _dataMask;
            ulong dr7 = _cpu.Dr[7];
            if ((access & PageAccess.Write) == 0)
                for (int i = 0; i < 4; i++)
                    if (((dr7 >> (16 + 4 * i)) & 3) == 1) m &= ~(1 << i); // RW 01: writes only
            if (m != 0) Hits |= Match(m, linear, (ulong)size);
        }

        public uint In(ushort port, int size)
        {
            Hits |= Match(_ioMask, port, (ulong)size);
            return _ports is null ? uint.MaxValue : _ports.In(port, size);
        }

        public void Out(ushort port, int size, uint value)
        {
            Hits |= Match(_ioMask, port, (ulong)size);
            _ports?.Out(port, size, value);
        }
    }
}
