// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Io;
using Hyve.Vmm.State;
using Hyve.X86;

namespace Hyve.Vmm;

/// <summary>Why a vCPU's <see cref="IVcpuBackend.Run"/> returned to the VMM. Port and MMIO exits never
/// return: the backend dispatches them to the VM's buses itself.</summary>
public enum VcpuEvent
{
    /// <summary><see cref="IVcpuBackend.Kick"/> was called (or a signal arrived): look at requests, then run again.</summary>
    Kicked,
    /// <summary>HLT with interrupts disabled (backends that see HLT; KVM with an in-kernel LAPIC does not).</summary>
    HaltedInterruptsDisabled,
    /// <summary>Shutdown: a triple fault.</summary>
    TripleFault,
    /// <summary>The guest asked for a reset (a system event).</summary>
    Reset,
    /// <summary>The guest asked for power off (a system event).</summary>
    PowerOff,
    /// <summary>The CPU cannot go on: <see cref="IVcpuBackend.LastError"/> says why.</summary>
    Error,
    /// <summary>A debug event (breakpoint, single step) for the debug server.</summary>
    Debug,
}

/// <summary>What a vCPU is doing, as far as halt detection and the active set care.</summary>
public enum VcpuRunState
{
    /// <summary>Executing (or able to).</summary>
    Running,
    /// <summary>Halted, and an interrupt can wake it.</summary>
    Halted,
    /// <summary>Halted with RFLAGS.IF clear: only NMI, SMI or INIT can wake it.</summary>
    HaltedInterruptsDisabled,
    /// <summary>An application processor that has not received its startup IPI.</summary>
    WaitingForStartup,
}

/// <summary>One virtual CPU on some CPU engine (KVM or the software CPU). All methods but
/// <see cref="Kick"/> and <see cref="ExitCount"/> are called on the vCPU's own thread.</summary>
public interface IVcpuBackend : IDisposable
{
    /// <summary>vCPU id.</summary>
    int Id { get; }

    /// <summary>Exits handled so far (port, MMIO, ...); read by the halt monitor from another thread.</summary>
    long ExitCount { get; }

    /// <summary>Called once on the vCPU's thread before the first <see cref="Run"/>.</summary>
    void AttachThread();

    /// <summary>Runs guest code until something needs the VMM.</summary>
    VcpuEvent Run();

    /// <summary>Makes a running or about-to-run <see cref="Run"/> return <see cref="VcpuEvent.Kicked"/> promptly. Any thread.</summary>
    void Kick();

    /// <summary>The vCPU's run state (for halt detection and the active set).</summary>
    VcpuRunState QueryRunState();

    /// <summary>Describes the last <see cref="VcpuEvent.Error"/>.</summary>
    string LastError { get; }

    /// <summary>Reads a register; segment registers give their selector.</summary>
    ulong GetRegister(Reg reg);

    /// <summary>Writes a register.</summary>
    void SetRegister(Reg reg, ulong value);

    /// <summary>Reads the hidden part of a segment or descriptor-table register.</summary>
    SegmentDescriptor GetDescriptor(Reg reg);

    /// <summary>Writes the hidden part of a segment or descriptor-table register.</summary>
    void SetDescriptor(Reg reg, SegmentDescriptor desc);

    /// <summary>Queues an NMI.</summary>
    void InjectNmi();

    /// <summary>Triggers a local vector table entry as its programming says (fixed vector, NMI, ExtINT; nothing when masked).</summary>
    void AssertLocalInterrupt(int lvt);

    /// <summary>Pending event information in VMX IDT-vectoring format: vector[7:0], type[10:8], error code valid[11],
    /// valid[31], error code[63:32]. Info1 is an exception being delivered, info2 an interrupt or NMI queued for entry.</summary>
    (ulong Info1, ulong Info2) GetIntinfo();

    /// <summary>Raises hardware exception <paramref name="vector"/> in the guest (with an error code where the vector takes one).
    /// A second exception while one is pending combines by the SDM's rules into #DF, then a triple fault.</summary>
    void InjectException(int vector, uint errorCode = 0);

    /// <summary>Reads the whole architectural state in the engine-neutral form (on the vCPU's thread, out of the guest):
    /// what a snapshot stores and what <see cref="SetState"/> on either engine resumes from.</summary>
    VcpuState GetState();

    /// <summary>Loads a whole state taken by <see cref="GetState"/> on this or the other engine; the guest TSC continues
    /// from <see cref="VcpuState.Tsc"/>.</summary>
    void SetState(VcpuState state);

    /// <summary>Applies a debugger's settings (single step, breakpoints); false when this engine cannot.</summary>
    bool SetGuestDebug(in GuestDebugSettings settings) => false;

    /// <summary>Why the last <see cref="VcpuEvent.Debug"/> happened.</summary>
    DebugExitInfo LastDebugExit => default;

    /// <summary>
    /// Writes CR0, CR3, CR4 and EFER as one step, as a loader entering long mode directly needs: KVM checks each
    /// state write for consistency, and no order of single-register writes reaches CR0.PG with EFER.LME|LMA.
    /// The default writes them one at a time (CR4, CR3, EFER, CR0).
    /// </summary>
    void SetControlRegisters(ulong cr0, ulong cr3, ulong cr4, ulong efer)
    {
        SetRegister(Reg.Cr4, cr4);
        SetRegister(Reg.Cr3, cr3);
        SetRegister(Reg.Efer, efer);
        SetRegister(Reg.Cr0, cr0);
    }
}

/// <summary>What a debugger asks of a vCPU's debug hardware (KVM_SET_GUEST_DEBUG's view): all fields off is "no debugging".</summary>
/// <param name="Enable">Debug exits wanted at all.</param>
/// <param name="SingleStep">Stop after one instruction.</param>
/// <param name="SoftwareBreakpoints">INT3 exits to the VMM instead of reaching the guest.</param>
/// <param name="HardwareBreakpoints">DR0-DR3 and DR7 below are the debugger's, not the guest's.</param>
/// <param name="Dr0">Breakpoint address 0.</param>
/// <param name="Dr1">Breakpoint address 1.</param>
/// <param name="Dr2">Breakpoint address 2.</param>
/// <param name="Dr3">Breakpoint address 3.</param>
/// <param name="Dr7">Enables, types and lengths of DR0-DR3 (SDM Vol. 3 17.2.4).</param>
public readonly record struct GuestDebugSettings(bool Enable, bool SingleStep, bool SoftwareBreakpoints, bool HardwareBreakpoints,
    ulong Dr0 = 0, ulong Dr1 = 0, ulong Dr2 = 0, ulong Dr3 = 0, ulong Dr7 = 0);

/// <summary>Why the last <see cref="VcpuEvent.Debug"/> happened (KVM's kvm_debug_exit_arch).</summary>
/// <param name="Exception">1 for #DB (single step, hardware breakpoint or watchpoint), 3 for #BP (INT3).</param>
/// <param name="Pc">Linear address of the instruction (for #BP, the INT3 itself).</param>
/// <param name="Dr6">DR6 as the debug exception set it: B0-B3 (bits 0-3) name the breakpoint, BS (bit 14) a single step.</param>
/// <param name="Dr7">DR7 in force.</param>
public readonly record struct DebugExitInfo(int Exception, ulong Pc, ulong Dr6, ulong Dr7);

/// <summary>The VM's debugger (the GDB server): told of debug exits and new vCPUs, on the vCPU's own thread.</summary>
public interface IVmDebugger
{
    /// <summary>vCPU <paramref name="id"/> starts (at VM start and after every reset) and can take debug settings.</summary>
    void VcpuStarted(int id, IVcpuBackend vcpu);

    /// <summary>vCPU <paramref name="id"/> made a debug exit (<see cref="IVcpuBackend.LastDebugExit"/> says why).</summary>
    void DebugExit(int id, IVcpuBackend vcpu);
}

/// <summary>A CPU engine for one VM incarnation: created at start and after every reset.
/// It is also the local APICs' message bus: the IOAPIC, HPET and PCI MSIs end here.</summary>
public interface ICpuBackend : IApicBus, IDisposable
{
    /// <summary>Engine name for messages ("kvm", "soft").</summary>
    string Name { get; }

    /// <summary>Creates vCPU <paramref name="id"/> in its power-on state (vCPU 0 at the reset vector, others waiting for SIPI).</summary>
    IVcpuBackend CreateVcpu(int id);
}
