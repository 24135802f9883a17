// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.X86;
using Iced.Intel;

namespace Hyve.Soft;

/// <summary>
/// The software CPU's debug hardware as a debugger sees it (KVM_SET_GUEST_DEBUG's model): single step, INT3 reported
/// instead of delivered, and the debugger's own DR0-DR3/DR7 (instruction breakpoints checked before an instruction,
/// data breakpoints reported after it). While debugging is on, <see cref="Run"/> executes through
/// <see cref="RunDebugBatch"/> one instruction at a time with these checks; with it off the ordinary batch loop pays
/// nothing per instruction, and the linear-memory path only a null test for the data-breakpoint observer.
/// </summary>
internal sealed partial class SoftVcpu : ILinearAccessObserver
{
    /// <summary>Instructions per debug batch: short, so kicks and interrupts are seen about as often as in a normal batch.</summary>
    private const int DebugBatchSize = 1024;

    // DR6 as a debug exception leaves it: the reserved bits read as ones (SDM Vol. 3 17.2.3).
    private const ulong Dr6Fixed = 0xffff0ff0, Dr6Bs = 1ul << 14;

    private GuestDebugSettings _debug;
    private bool _debugActive;      // Run goes through RunDebugBatch
    private int _execBreakMask;     // DR0-DR3 that are enabled instruction breakpoints
    private int _dataBreakMask;     // DR0-DR3 that are enabled write or read/write breakpoints
    private int _dataHits;          // data breakpoints the current instruction matched (DR6.B0-B3)
    private int _savedMaxRep;
    private bool _resumeArmed;      // RF: the next instruction at _resumeAt skips its breakpoint checks once
    private ulong _resumeAt;
    private bool _lastWasInt3;      // the last debug exit reported an INT3 at _lastInt3At
    private ulong _lastInt3At;

    /// <summary>Applies the debugger's settings (called on the vCPU thread, between runs).</summary>
    public bool SetGuestDebug(in GuestDebugSettings settings)
    {
        _debug = settings.Enable ? settings : default;
        _execBreakMask = _dataBreakMask = 0;
        if (_debug.HardwareBreakpoints)
        {
            ulong dr7 = _debug.Dr7;
            for (int i = 0; i < 4; i++)
            {
                if ((dr7 & (3ul << (2 * i))) == 0) continue; // neither L nor G
                switch ((dr7 >> (16 + 4 * i)) & 3)
                {
                    case 0: _execBreakMask |= 1 << i; break;
                    case 1 or 3: _dataBreakMask |= 1 << i; break;
                    // 2: I/O breakpoints (CR4.DE) are not modelled.
                }
            }
        }
        _debugActive = _debug.SingleStep || _debug.SoftwareBreakpoints || (_execBreakMask | _dataBreakMask) != 0;
        if (_dataBreakMask != 0 && _engine.Memory.Observer is null)
        {
            _engine.Memory.Observer = this;
            // A data breakpoint stops after the iteration of a REP string instruction that hit it (SDM Vol. 3 17.3.1.2).
            _savedMaxRep = _engine.MaxRepIterations;
            _engine.MaxRepIterations = 1;
        }
        else if (_dataBreakMask == 0 && _engine.Memory.Observer is not null)
        {
            _engine.Memory.Observer = null;
            _engine.MaxRepIterations = _savedMaxRep;
        }
        if (!_debug.SoftwareBreakpoints) _lastWasInt3 = false;
        return true;
    }

    /// <summary>Why the last <see cref="VcpuEvent.Debug"/> happened.</summary>
    public DebugExitInfo LastDebugExit { get; private set; }

    // Linear address of CS:RIP.
    private ulong CodeLinear()
    {
        var c = _cpu;
        if (c.CodeBitness == 64) return c.Rip;
        return (c.Segs[(int)Seg.Cs].Descriptor.Base + c.Rip) & 0xffffffff;
    }

    // An INT3 that was not the debugger's goes to the guest (the GDB server calls InjectException(3)): on the software
    // CPU the INT3 then simply executes, so the guest sees a #BP with the return address after it, as on KVM, where the
    // re-injected #BP is a software exception with the INT3's length.
    private bool ReinjectBreakpoint()
    {
        if (!_lastWasInt3 || _lastInt3At != CodeLinear()) return false;
        _lastWasInt3 = false;
        _resumeArmed = true;
        _resumeAt = _lastInt3At;
        return true;
    }

    private VcpuEvent Report(int exception, ulong pc, ulong dr6)
    {
        _lastWasInt3 = exception == 3;
        _lastInt3At = pc;
        LastDebugExit = new DebugExitInfo(exception, pc, dr6 == 0 ? 0 : dr6 | Dr6Fixed, _debug.Dr7);
        return VcpuEvent.Debug;
    }

    // DR0-DR3 by index, from the debugger's settings.
    private ulong BreakAddress(int i) => i switch { 0 => _debug.Dr0, 1 => _debug.Dr1, 2 => _debug.Dr2, _ => _debug.Dr3 };

    /// <inheritdoc/>
    void ILinearAccessObserver.OnDataAccess(ulong linear, int size, PageAccess access)
    {
        ulong dr7 = _debug.Dr7;
        for (int i = 0; i < 4; i++)
        {
            if ((_dataBreakMask & (1 << i)) == 0) continue;
            // RW 01 = writes only, 11 = reads and writes; LEN 00/01/11/10 = 1/2/4/8 bytes (SDM Vol. 3 17.2.5).
            bool writesOnly = ((dr7 >> (16 + 4 * i)) & 3) == 1;
            if (writesOnly && (access & PageAccess.Write) == 0) continue;
            ulong len = ((dr7 >> (18 + 4 * i)) & 3) switch { 0 => 1ul, 1 => 2ul, 2 => 8ul, _ => 4ul };
            ulong start = BreakAddress(i) & ~(len - 1);
            // Any byte of the access inside the breakpoint's range.
            if (linear < start + len && start < linear + (ulong)size) _dataHits |= 1 << i;
        }
    }

    // One instruction at a time with the debugger's checks: breakpoints before, data breakpoints and single step after.
    private VcpuEvent? RunDebugBatch()
    {
        var c = _cpu;
        var engine = _engine;
        bool step = _debug.SingleStep;
        int n = 0;
        for (; n < DebugBatchSize; n++)
        {
            if (_attention) break;
            if (!step && _irqWaiting && (c.Rflags & CpuState.FlagIf) != 0 && c.InterruptShadow == 0) break;
            ulong pc = CodeLinear();
            bool resume = _resumeArmed && _resumeAt == pc;
            _resumeArmed = false;
            if (!resume)
            {
                for (int i = 0; i < 4; i++)
                {
                    if ((_execBreakMask & (1 << i)) == 0 || BreakAddress(i) != pc) continue;
                    // As RF does on hardware: resuming at this address does not hit the same breakpoint again.
                    _resumeArmed = true;
                    _resumeAt = pc;
                    return Report(1, pc, 1ul << i);
                }
                if (_debug.SoftwareBreakpoints && IsInt3(pc)) return Report(3, pc, 0);
            }
            _dataHits = 0;
            // The guest's own DR0-DR7 and TF work under the debugger too: its #DB is delivered to the guest below.
            var r = InstructionEngine.GuestDebugActive(c) ? engine.StepWithDebug(c, _phys) : engine.Step(c, _phys);
            bool halted = false;
            switch (r.Status)
            {
                case StepStatus.Ok:
                    if (_nmiBlocked && r.Code is Code.Iretw or Code.Iretd or Code.Iretq) _nmiBlocked = false;
                    break;
                case StepStatus.Exception:
                {
                    // A faulting instruction did not complete: its data accesses do not count.
                    _dataHits = 0;
                    var ev = DeliverWithNesting(r.Exception, true);
                    if (ev is not null) return ev;
                    break;
                }
                case StepStatus.Halt:
                    _halted = true;
                    _haltReported = false;
                    halted = true;
                    break;
                case StepStatus.Unsupported:
                    return Fail($"instruction {r.Code.Mnemonic()} ({r.Code}) at {Where()} is not implemented by the software CPU");
                default:
                    return Fail($"access to unbacked guest-physical address 0x{r.Address:x} at {Where()}");
            }
            ulong dr6 = (ulong)_dataHits;
            if (step) dr6 |= Dr6Bs;
            if (dr6 != 0)
            {
                n++;
                Volatile.Write(ref _batches, _batches + 1);
                return Report(1, CodeLinear(), dr6);
            }
            if (halted || (_nmiRequest && !_nmiBlocked)) { n++; break; }
        }
        if (n > 0) Volatile.Write(ref _batches, _batches + 1);
        return null;
    }

    // True when the byte at linear pc is an INT3 in guest memory (a software breakpoint lives in RAM).
    private bool IsInt3(ulong pc)
    {
        if (!_engine.Memory.Walker.Probe(_cpu, pc, PageAccess.Execute, out ulong gpa).IsOk) return false;
        return _phys.TryGetSpan(gpa, 1, out var span) && span[0] == 0xcc;
    }
}
