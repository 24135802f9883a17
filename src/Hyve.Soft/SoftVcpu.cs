// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Hyve.Vmm.State;
using Hyve.X86;
using Iced.Intel;

namespace Hyve.Soft;

/// <summary>
/// One vCPU of the software CPU: a <see cref="CpuState"/>, an <see cref="InstructionEngine"/> and a <see cref="Vlapic"/>.
/// <see cref="Run"/> delivers pending events in the processor's priority order (exception, INIT/SIPI, NMI, maskable
/// interrupt from the 8259 as ExtINT or from the local APIC, honouring RFLAGS.IF and the interrupt shadow) and then
/// executes instructions in batches, leaving only for a kick, a shutdown (triple fault) or an error. HLT sleeps until an
/// interrupt, NMI, INIT or kick. Other threads only set flags and wake it; everything else runs on the vCPU's thread.
/// </summary>
internal sealed partial class SoftVcpu : IVcpuBackend, ILapicCpu
{
    /// <summary>Instructions between looks at the interrupt controllers when nothing has signalled.</summary>
    private const int BatchSize = 4096;

    private readonly SoftBackend _backend;
    private readonly Vm _vm;
    private readonly CpuState _cpu = new();
    private readonly InstructionEngine _engine;
    private readonly SoftPhysicalMemory _phys;
    private readonly HostTsc _tsc = new();
    private readonly SoftMsrs _msrs;
    private readonly ManualResetEventSlim _wake = new(false);

    // Set by other threads (flag first, then _attention, then the wake event); read and cleared by the vCPU thread.
    private volatile bool _attention;
    private volatile bool _kick;
    private volatile bool _nmiRequest;
    private volatile bool _initRequest;
    private volatile int _sipiRequest = -1;

    // vCPU-thread state.
    private bool _halted;
    private bool _haltReported;
    private bool _waitForSipi;
    private bool _nmiBlocked;
    private bool _irqWaiting;
    private bool _hasPendingException;
    private PendingException _pendingException;
    private long _batches;
    private bool _disposed;

    public SoftVcpu(SoftBackend backend, int id)
    {
        _backend = backend;
        _vm = backend.Vm;
        Id = id;
        Lapic = new Vlapic(_vm.Topology.ApicId(id), id == 0, _vm.Clock, backend.Bus, this, readTsc: () => _tsc.ReadTsc(_cpu));
        backend.Bus.Add(Lapic);
        if (id == 0) SetBspLint0ExtInt();
        var model = _vm.CpuModel;
        Lapic.X2ApicSupported = model.Has("x2apic");
        Lapic.TscDeadlineSupported = model.Has("tsc_deadline_timer");
        if (_vm.X2ApicAtStart) Lapic.WriteMsr(LapicRegisters.MsrApicBase, Lapic.ApicBase | LapicRegisters.BaseX2Apic);
        _phys = new SoftPhysicalMemory(_vm, Lapic);
        var lapic = Lapic;
        _engine = new InstructionEngine(_phys)
        {
            Model = model,
            TaskPriority = Lapic,
            Cpuid = new SoftCpuid(_vm.Topology, id, model) { ApicEnabled = () => lapic.HardwareEnabled, TscHz = () => _tsc.Hz },
            Msrs = _msrs = new SoftMsrs(Lapic, _tsc, _vm.StrictMsr, model.Vendor == CpuVendor.Amd),
            Tsc = _tsc,
        };
        // This engine runs the whole vCPU, so it sees every invalidation: it may cache translations (and decoded blocks).
        _ = new Tlb(_engine.Memory.Walker);
        // soft.jit: hot integer code runs as translated host code; everything else stays with the interpreter.
        if (_vm.SoftJit) _engine.Jit = new Hyve.X86.Jit.Translator(_vm.SoftJitCacheSize);
        // vCPU 0 starts at the reset vector; the others wait for INIT and a start-up IPI.
        _waitForSipi = id != 0;
    }

    /// <summary>This vCPU's local APIC.</summary>
    public Vlapic Lapic { get; }

    /// <summary>The register state (tests read it while the vCPU is stopped).</summary>
    public CpuState Cpu => _cpu;

    public int Id { get; }

    public long ExitCount => Volatile.Read(ref _batches) + Volatile.Read(ref _phys.Accesses);

    public string LastError { get; private set; } = "";

    // The BSP's LINT0 comes out of reset as unmasked ExtINT, as KVM and QEMU model it (firmware relies on it to
    // receive the 8259's interrupts through virtual-wire mode before programming the local APIC).
    private void SetBspLint0ExtInt()
    {
        Span<byte> page = stackalloc byte[LapicState.Size];
        Lapic.ToKvmState(page);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(page[LapicRegisters.LvtLint0..], 7u << 8);
        Lapic.FromKvmState(page);
    }

    public void AttachThread() { }

    public void Kick()
    {
        _kick = true;
        Signal();
    }

    private void Signal()
    {
        _attention = true;
        _wake.Set();
    }

    // ILapicCpu: called from any thread, possibly under the Vlapic's lock: record and wake only.

    void ILapicCpu.InterruptPending() => Signal();

    void ILapicCpu.Nmi()
    {
        _nmiRequest = true;
        Signal();
    }

    void ILapicCpu.ExtInt() => Signal();

    void ILapicCpu.Init()
    {
        _initRequest = true;
        Signal();
    }

    void ILapicCpu.Startup(int vector)
    {
        _sipiRequest = vector & 0xff;
        Signal();
    }

    public VcpuEvent Run()
    {
        while (true)
        {
            _attention = false;
            if (_kick)
            {
                _kick = false;
                return VcpuEvent.Kicked;
            }
            var ev = ServiceEvents();
            if (ev is { } stop) return stop;
            if (_waitForSipi || _halted)
            {
                if (_halted && (_cpu.Rflags & CpuState.FlagIf) == 0 && !_haltReported)
                {
                    // Only NMI, INIT or a reset can end this halt: tell the VM once, then sleep like any halt.
                    _haltReported = true;
                    return VcpuEvent.HaltedInterruptsDisabled;
                }
                _wake.Reset();
                if (!_attention) _wake.Wait(100);
                continue;
            }
            // A debugger's breakpoints and single step cost the ordinary loop nothing: it has its own loop.
            ev = _debugActive ? RunDebugBatch() : RunBatch();
            if (ev is { } stop2) return stop2;
        }
    }

    // Pending events in priority order (SDM Vol. 3 6.9): a fault being delivered, INIT/SIPI, NMI, maskable interrupts.
    private VcpuEvent? ServiceEvents()
    {
        if (_initRequest)
        {
            _initRequest = false;
            DoInit();
        }
        if (_waitForSipi)
        {
            int v = _sipiRequest;
            if (v < 0) return null;
            _sipiRequest = -1;
            StartAt(v);
        }
        else
        {
            _sipiRequest = -1; // a SIPI outside wait-for-SIPI is ignored
        }
        if (_hasPendingException)
        {
            _hasPendingException = false;
            var r = DeliverWithNesting(_pendingException, true);
            if (r is not null) return r;
        }
        // A debugger's single step is not diverted into an interrupt handler (QEMU's gdbstub masks them too); a halted
        // vCPU still wakes for one, or the step would never end.
        if (_debug.SingleStep && !_halted) return null;
        var c = _cpu;
        bool shadow = c.InterruptShadow != 0;
        if (_nmiRequest && !_nmiBlocked && !shadow)
        {
            _nmiRequest = false;
            _nmiBlocked = true;
            _halted = false;
            var r = DeliverWithNesting(new PendingException(2, false, 0, 0), false);
            if (r is not null) return r;
            shadow = c.InterruptShadow != 0;
        }
        _irqWaiting = false;
        if (Id == 0 && _vm.Pic.IntrAsserted && AcceptsExtInt())
        {
            if ((c.Rflags & CpuState.FlagIf) == 0 || shadow) _irqWaiting = true;
            else
            {
                int vector = _vm.Pic.InterruptAcknowledge();
                return DeliverInterrupt(vector);
            }
        }
        if (Lapic.TryGetPendingInterrupt(out int lv))
        {
            if ((c.Rflags & CpuState.FlagIf) == 0 || shadow) _irqWaiting = true;
            else
            {
                Lapic.AcknowledgeInterrupt(lv);
                return DeliverInterrupt(lv);
            }
        }
        return null;
    }

    private VcpuEvent? DeliverInterrupt(int vector)
    {
        _halted = false;
        return DeliverWithNesting(new PendingException((byte)vector, false, 0, 0), false);
    }

    // The 8259's INTR reaches the BSP through LINT0 when it is unmasked ExtINT, or directly when the APIC is globally
    // disabled (KVM's kvm_apic_accept_pic_intr decides the same).
    private bool AcceptsExtInt()
    {
        ulong b = Lapic.ApicBase;
        if ((b & LapicRegisters.BaseEnable) == 0) return true;
        uint lint0;
        if ((b & LapicRegisters.BaseX2Apic) != 0)
        {
            if (!Lapic.ReadMsr(LapicRegisters.MsrX2ApicFirst + (LapicRegisters.LvtLint0 >> 4), out ulong v)) return false;
            lint0 = (uint)v;
        }
        else
        {
            lint0 = (uint)Lapic.MmioRead(LapicRegisters.LvtLint0, 4);
        }
        return (lint0 & (1u << 16)) == 0 && ((lint0 >> 8) & 7) == 7;
    }

    // INIT (SDM Vol. 3 9.1.1 Table 9-1): registers as at reset, x87/SSE state and MSRs kept; an AP (and, on this
    // platform, the BSP too) then waits for a start-up IPI, the BSP restarts at the reset vector.
    private void DoInit()
    {
        var fx = _cpu.Fx.AsSpan();
        Span<byte> keep = stackalloc byte[512];
        fx.CopyTo(keep);
        ulong efer = 0, pat = _cpu.Pat;
        _cpu.Reset();
        keep.CopyTo(fx);
        _cpu.Efer = efer;
        _cpu.Pat = pat;
        _halted = false;
        _haltReported = false;
        _nmiBlocked = false;
        _hasPendingException = false;
        _waitForSipi = Id != 0;
    }

    /// <summary>Forgets halt, wait-for-SIPI and pending events (for tests that load a new state between runs).</summary>
    internal void ClearRunState()
    {
        _halted = _haltReported = _waitForSipi = _nmiBlocked = _hasPendingException = _irqWaiting = false;
        _nmiRequest = _initRequest = false;
        _sipiRequest = -1;
    }

    private void StartAt(int vector)
    {
        _cpu.Segs[(int)Seg.Cs] = new SegmentRegister((ushort)(vector << 8), new SegmentDescriptor((ulong)vector << 12, 0xffff, 0x9b));
        _cpu.Rip = 0;
        _waitForSipi = false;
        _halted = false;
        _haltReported = false;
    }

    /// <summary>Delivers an event; a fault while delivering combines by the SDM's rules (#DF, then shutdown).</summary>
    private VcpuEvent? DeliverWithNesting(PendingException e, bool isException)
    {
        int first = isException ? e.Vector : -1;
        for (int attempt = 0; attempt < 4; attempt++)
        {
            var r = isException ? _engine.DeliverException(_cpu, e) : _engine.Deliver(_cpu, e);
            switch (r.Status)
            {
                case StepStatus.Ok:
                    return null;
                case StepStatus.Exception:
                    break;
                case StepStatus.Unbacked:
                    return Fail($"delivering vector {e.Vector} touched unbacked address 0x{r.Address:x}");
                default:
                    return Fail($"cannot deliver vector {e.Vector} at {Where()}");
            }
            var next = r.Exception;
            if (first < 0)
            {
                // An interrupt or NMI whose delivery faults: the fault is delivered instead.
                e = next;
                first = next.Vector;
                continue;
            }
            var n = ExceptionNesting.Combine(first, next.Vector);
            if (n.Kind == NestingKind.TripleFault) return VcpuEvent.TripleFault;
            e = n.Kind == NestingKind.DoubleFault ? new PendingException((byte)ExceptionNesting.DoubleFaultVector, true, 0, 0) : next;
            first = e.Vector;
        }
        return VcpuEvent.TripleFault;
    }

    private VcpuEvent? RunBatch()
    {
        var c = _cpu;
        var engine = _engine;
        int n = 0;
        while (n < BatchSize)
        {
            if (_attention) break;
            if (_irqWaiting && (c.Rflags & CpuState.FlagIf) != 0 && c.InterruptShadow == 0) break;
            // Runs cached blocks; returns at the first instruction that does not complete, or after one that may matter
            // to the checks above (IF raised, interrupt shadow, IRET, system instructions).
            var r = engine.Run(c, _phys, BatchSize - n, out int ran);
            n += ran;
            switch (r.Status)
            {
                case StepStatus.Ok:
                    if (_nmiBlocked && r.Code is Code.Iretw or Code.Iretd or Code.Iretq)
                    {
                        // IRET ends NMI blocking (SDM Vol. 3 6.7.1): a held NMI may now be taken.
                        _nmiBlocked = false;
                        if (_nmiRequest) goto done;
                    }
                    continue;
                case StepStatus.Exception:
                {
                    if (Trace) Console.Error.WriteLine($"vcpu{Id} #{r.Exception.Vector} err {r.Exception.ErrorCode:x} at {Where()} {r.Code}");
                    n++; // delivery counts against the batch, so a fault loop still yields to the checks above
                    var ev = DeliverWithNesting(r.Exception, true);
                    if (ev is not null) return ev;
                    continue;
                }
                case StepStatus.Halt:
                    _halted = true;
                    _haltReported = false;
                    goto done;
                case StepStatus.Unsupported:
                    return Fail($"instruction {r.Code.Mnemonic()} ({r.Code}) at {Where()} is not implemented by the software CPU");
                default:
                    return Fail($"access to unbacked guest-physical address 0x{r.Address:x} at {Where()}");
            }
        }
    done:
        if (n > 0) Volatile.Write(ref _batches, _batches + 1);
        return null;
    }

    private static readonly bool Trace = Environment.GetEnvironmentVariable("HYVE_SOFT_TRACE") == "1";

    private string Where() => $"{_cpu.Segs[(int)Seg.Cs].Selector:x4}:{_cpu.Rip:x}";

    private VcpuEvent Fail(string message)
    {
        LastError = message;
        return VcpuEvent.Error;
    }

    public VcpuRunState QueryRunState()
    {
        if (_waitForSipi) return VcpuRunState.WaitingForStartup;
        if (_halted) return (_cpu.Rflags & CpuState.FlagIf) == 0 ? VcpuRunState.HaltedInterruptsDisabled : VcpuRunState.Halted;
        return VcpuRunState.Running;
    }

    public ulong GetRegister(Reg reg) => _cpu.Get(reg);

    public void SetRegister(Reg reg, ulong value)
    {
        if (reg is Reg.Gdtr or Reg.Idtr) throw new ArgumentException($"{reg} has no selector");
        _cpu.Set(reg, value);
    }

    public void SetControlRegisters(ulong cr0, ulong cr3, ulong cr4, ulong efer)
    {
        _cpu.Cr4 = cr4;
        _cpu.Cr3 = cr3;
        // EFER.LMA follows LME and CR0.PG, as the processor sets it when paging turns on.
        bool lma = (efer & CpuState.EferLme) != 0 && (cr0 & CpuState.Cr0Pg) != 0;
        _cpu.Efer = lma ? efer | CpuState.EferLma : efer & ~CpuState.EferLma;
        _cpu.Cr0 = cr0;
    }

    public SegmentDescriptor GetDescriptor(Reg reg)
        => _cpu.TryGetDescriptor(reg, out var d) ? d : throw new ArgumentException($"{reg} is not a segment register");

    public void SetDescriptor(Reg reg, SegmentDescriptor desc)
    {
        if (!_cpu.TrySetDescriptor(reg, desc)) throw new ArgumentException($"{reg} is not a segment register");
    }

    public void InjectNmi()
    {
        _nmiRequest = true;
        Signal();
    }

    public void AssertLocalInterrupt(int lvt)
    {
        if (!Lapic.AssertLocalInterrupt(lvt)) throw new ArgumentException($"LVT index {lvt} out of range 0-6");
    }

    public (ulong Info1, ulong Info2) GetIntinfo()
    {
        ulong info1 = 0, info2 = 0;
        if (_hasPendingException)
        {
            var e = _pendingException;
            info1 = e.Vector | 3u << 8 | 1u << 31;
            if (e.HasErrorCode) info1 |= 1u << 11 | (ulong)e.ErrorCode << 32;
        }
        if (_nmiRequest) info2 = 2 | 2u << 8 | 1u << 31;
        return (info1, info2);
    }

    public void InjectException(int vector, uint errorCode = 0)
    {
        if ((uint)vector > 31 || vector == 2) throw new ArgumentException($"vector {vector} is not a hardware exception");
        if (vector == Vector.BP && ReinjectBreakpoint()) return;
        if (_hasPendingException)
        {
            var n = ExceptionNesting.Combine(_pendingException.Vector, vector);
            if (n.Kind == NestingKind.TripleFault)
            {
                _hasPendingException = false;
                _vm.Suspend(Hyve.Vmm.Control.SuspendHow.TripleFault);
                return;
            }
            if (n.Kind == NestingKind.DoubleFault) { vector = ExceptionNesting.DoubleFaultVector; errorCode = 0; }
        }
        _pendingException = new PendingException((byte)vector, ExceptionNesting.HasErrorCode(vector), errorCode, vector == Vector.PF ? _cpu.Cr2 : 0);
        _hasPendingException = true;
        Signal();
    }

    public VcpuState GetState()
    {
        var s = new VcpuState { Xcr0 = 1, Tsc = _tsc.ReadTsc(_cpu), TscHz = _tsc.Hz, Lapic = Lapic.Save() };
        _cpu.CopyTo(s.Cpu);
        _msrs.Export(s.Msrs);
        s.Activity = _waitForSipi ? VcpuActivity.WaitingForSipi : _halted ? VcpuActivity.Halted : VcpuActivity.Running;
        s.NmiPending = _nmiRequest;
        s.NmiMasked = _nmiBlocked;
        s.Exception = _hasPendingException ? _pendingException : null;
        return s;
    }

    public void SetState(VcpuState s)
    {
        ArgumentNullException.ThrowIfNull(s);
        ClearRunState();
        s.Cpu.CopyTo(_cpu);
        // The guest's TSC continues from the saved value at the saved rate (a KVM host's, say: the guest calibrated its
        // clocks against it), and the TSC-deadline timer converts at that rate too.
        _tsc.Rebase(s.Tsc, s.TscHz);
        _msrs.Import(s.Msrs);
        Lapic.TscHz = s.TscHz;
        Lapic.Restore(s.Lapic);
        _waitForSipi = s.Activity == VcpuActivity.WaitingForSipi;
        _halted = s.Activity == VcpuActivity.Halted;
        _nmiRequest = s.NmiPending;
        _nmiBlocked = s.NmiMasked;
        if (s.Exception is { } e) { _pendingException = e; _hasPendingException = true; }
        // An interrupt KVM had taken from a controller but not delivered is delivered first, as KVM would.
        else if (s.InjectedInterrupt >= 0)
        {
            _pendingException = new PendingException((byte)s.InjectedInterrupt, false, 0, 0);
            _hasPendingException = true;
        }
        _engine.Memory.Walker.Tlb?.FlushAll();
        Signal();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // The APIC timer must not fire into a VM incarnation that is gone.
        Lapic.Reset();
        _phys.Dispose();
        _engine.Jit?.Dispose();
    }
}
