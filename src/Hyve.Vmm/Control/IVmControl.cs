// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;

namespace Hyve.Vmm.Control;

/// <summary>How a VM is asked to stop (bhyve's vm_suspend_how); the value order is the hyve exit status minus nothing:
/// Reset=0, PowerOff=1, Halt=2, TripleFault=3.</summary>
public enum SuspendHow
{
    /// <summary>Reset: restarts in the same process, or exits 0 with exit_on_reboot.</summary>
    Reset = 0,
    /// <summary>Power off: exit status 1.</summary>
    PowerOff = 1,
    /// <summary>Every vCPU halted with interrupts disabled: exit status 2.</summary>
    Halt = 2,
    /// <summary>Triple fault: exit status 3.</summary>
    TripleFault = 3,
}

/// <summary>CPU topology as bhyve's -c describes it.</summary>
public readonly record struct CpuTopology(int Sockets, int Cores, int Threads, int MaxCpus)
{
    /// <summary>Number of vCPUs (sockets × cores × threads).</summary>
    public int Cpus => Sockets * Cores * Threads;

    /// <summary>Bits of the APIC ID that number threads within a core.</summary>
    public int ThreadBits => BitsFor(Threads);

    /// <summary>Bits of the APIC ID that number cores within a socket.</summary>
    public int CoreBits => BitsFor(Cores);

    /// <summary>The initial APIC ID of vCPU <paramref name="vcpu"/>: socket, core and thread as bit fields
    /// (equal to the vCPU id when the counts are powers of two), as CPUID, the MADT and the MP table all say.</summary>
    public uint ApicId(int vcpu)
    {
        int thread = vcpu % Threads, core = vcpu / Threads % Cores, socket = vcpu / (Threads * Cores);
        return (uint)(socket << (CoreBits + ThreadBits) | core << ThreadBits | thread);
    }

    private static int BitsFor(int n) => n <= 1 ? 0 : System.Numerics.BitOperations.Log2((uint)(n - 1)) + 1;
}

/// <summary>A guest memory segment (bhyve's memseg): sysmem or a named devmem.</summary>
public readonly record struct MemSegInfo(int Id, ulong Length, bool SysMem, string Name);

/// <summary>A guest-physical mapping (bhyve's mem_map entry).</summary>
public readonly record struct MemMapInfo(ulong Gpa, ulong Length, int SegId, ulong SegOffset, int Prot);

/// <summary>
/// What the control socket can do to a running VM. The control server calls it from its own thread;
/// register access pauses the vCPU briefly and runs on the vCPU's thread.
/// Methods throw <see cref="ArgumentException"/> for a bad vCPU id or register.
/// </summary>
public interface IVmControl
{
    /// <summary>The VM's name.</summary>
    string Name { get; }

    /// <summary>The configured topology.</summary>
    CpuTopology Topology { get; }

    /// <summary>Number of vCPUs.</summary>
    int CpuCount { get; }

    /// <summary>vCPUs that have started (the BSP, and APs after SIPI).</summary>
    IReadOnlyList<int> ActiveCpus();

    /// <summary>vCPUs held by the debug server or a suspend.</summary>
    IReadOnlyList<int> SuspendedCpus();

    /// <summary>Memory segments.</summary>
    IReadOnlyList<MemSegInfo> MemSegs();

    /// <summary>Guest-physical mappings.</summary>
    IReadOnlyList<MemMapInfo> MemMap();

    /// <summary>Reads a register (segment registers give the selector).</summary>
    ulong GetRegister(int vcpu, Reg reg);

    /// <summary>Writes a register.</summary>
    void SetRegister(int vcpu, Reg reg, ulong value);

    /// <summary>Reads the hidden part of a segment or descriptor-table register.</summary>
    SegmentDescriptor GetDescriptor(int vcpu, Reg reg);

    /// <summary>Writes the hidden part of a segment or descriptor-table register.</summary>
    void SetDescriptor(int vcpu, Reg reg, SegmentDescriptor desc);

    /// <summary>Asks the VM to stop (reset or power off from hyvectl --force-reset / --force-poweroff).</summary>
    void Suspend(SuspendHow how);

    /// <summary>RTC time in Unix seconds (bhyvectl --get-rtc-time).</summary>
    long GetRtcTime();

    /// <summary>Sets the RTC time (bhyvectl --set-rtc-time).</summary>
    void SetRtcTime(long unixSeconds);

    /// <summary>Reads an RTC byte (any offset 0-127, as bhyve allows); offsets past 127 throw ArgumentException.</summary>
    byte GetRtcNvram(int offset);

    /// <summary>Writes an RTC NVRAM byte; the time and control registers (0x00-0x0D), the century byte and offsets past 127 throw ArgumentException.</summary>
    void SetRtcNvram(int offset, byte value);

    /// <summary>Injects an NMI into a vCPU (bhyvectl --inject-nmi).</summary>
    void InjectNmi(int vcpu);

    /// <summary>Triggers local vector table entry <paramref name="lvt"/> (bhyve's numbering: 0 LINT0, 1 LINT1, 2 timer,
    /// 3 error, 4 performance, 5 thermal, 6 CMCI) on one vCPU, or on every vCPU when <paramref name="vcpu"/> is -1.</summary>
    void AssertLapicLvt(int vcpu, int lvt);

    /// <summary>The vCPU's pending event information in VMX IDT-vectoring format (bhyvectl --get-intinfo):
    /// info1 an event being delivered when the vCPU last left the guest, info2 an event queued for the next entry.</summary>
    (ulong Info1, ulong Info2) GetIntinfo(int vcpu);

    /// <summary>Writes a snapshot to <paramref name="path"/> (an absolute path on the VM's host) with every vCPU paused and
    /// every device quiesced; the VM then goes on, or with <paramref name="thenExit"/> ends (bhyvectl --checkpoint /
    /// --suspend). Throws <see cref="IOException"/> naming why a checkpoint failed; the VM goes on then.</summary>
    void Checkpoint(string path, bool thenExit);

    /// <summary>Writes guest memory and vCPU state as an ELF core in QEMU's dump-guest-memory layout.</summary>
    void DumpGuestMemory(string path);

    /// <summary>The VM's counters by name (bhyvectl --get-stats), for example the console bytes dropped because nobody read them.</summary>
    IReadOnlyList<KeyValuePair<string, ulong>> GetStats() => [];
}

/// <summary>What the machine offers the control socket for snapshots (the VMM does not know the file layout's
/// machine parts: the configuration, the devices beyond its own).</summary>
public interface ISnapshotHandler
{
    /// <summary>See <see cref="IVmControl.Checkpoint"/>.</summary>
    void Checkpoint(string path, bool thenExit);

    /// <summary>See <see cref="IVmControl.DumpGuestMemory"/>.</summary>
    void DumpGuestMemory(string path);
}
