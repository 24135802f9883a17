// SPDX-License-Identifier: BSD-2-Clause
using System.Collections.Concurrent;
using Hyve.Vmm.Control;
using Hyve.Vmm.Io;
using Hyve.Vmm.Native;
using Hyve.Vmm.State;
using Hyve.X86;

namespace Hyve.Vmm;

/// <summary>How one run of the VM ended: a suspend disposition, or an error with its reason.</summary>
public readonly record struct VmStop(SuspendHow How, string? Error, int? Status = null)
{
    /// <summary>hyve's exit status for this stop (bhyve(8): 0 reset, 1 poweroff, 2 halt, 3 triple fault, 4 error;
    /// or the status a debug-exit device asked for).</summary>
    public int ExitStatus => Error is not null ? 4 : Status ?? (int)How;
}

/// <summary>
/// A virtual machine: memory, buses, clock and vCPUs with their run control and suspend state
/// (bhyve's struct vm). One host thread per vCPU; <see cref="Run"/> lasts until the VM suspends.
/// </summary>
public sealed class Vm : IVmControl
{
    private const int HaltProbeIntervalMs = 50;

    private readonly VcpuSlot[] _slots;
    private readonly ManualResetEventSlim _suspended = new(false);
    private int _suspendHow = -1;
    private string? _error;
    private int _exitStatus = -1;
    private volatile bool _running;

    /// <summary>Creates a VM around its memory and clock; devices register on <see cref="Ports"/> and <see cref="Mmio"/>.
    /// The RTC starts at the host's time shifted by <paramref name="rtcUtcOffsetSeconds"/> (local time; 0 keeps UTC).</summary>
    public Vm(string name, CpuTopology topology, GuestMemory memory, IClock clock, long rtcUtcOffsetSeconds = 0)
    {
        Name = name;
        Topology = topology;
        Memory = memory;
        Clock = clock;
        _slots = new VcpuSlot[topology.Cpus];
        for (int i = 0; i < _slots.Length; i++) _slots[i] = new VcpuSlot(i);

        // The platform interrupt and timer devices live in the VMM, as in bhyve's vmm.ko.
        var apic = new ApicBusForwarder(this);
        Pic = new Vatpic();
        Ioapic = new Vioapic(apic);
        Irq = new InterruptRouter(Pic, Ioapic, apic);
        Pit = new Vatpit(clock, Irq);
        PmTimer = new Vpmtmr(clock);
        Rtc = new Vrtc(clock, Irq, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), rtcUtcOffsetSeconds);
        Rtc.SetMemorySize(memory.LowMemSize, memory.HighMemSize);
        Hpet = new Vhpet(clock, Irq, Vhpet.RouteCapabilityFor(Ioapic.PinCount));
        Pic.RegisterPorts(Ports);
        Pit.RegisterPorts(Ports);
        PmTimer.RegisterPorts(Ports);
        Ports.Register(0x70, 2, Rtc);
        Mmio.Register(Vioapic.DefaultBase, Vioapic.Size, Ioapic, "ioapic");
        Mmio.Register(Vhpet.DefaultBase, Vhpet.Size, Hpet, "hpet");
        // The BSP takes the 8259's INTR (ExtINT through LINT0): wake it to inject.
        Pic.IntrChanged += () => _slots[0].Vcpu?.Kick();
        Devices.Add("vatpic", "0", Pic, DevicePhase.InterruptControllers, Pic.Reset);
        Devices.Add("vioapic", "0", Ioapic, DevicePhase.InterruptControllers, Ioapic.Reset);
        Devices.Add("vatpit", "0", Pit, DevicePhase.Timers, Pit.Reset);
        Devices.Add("vpmtmr", "0", PmTimer, DevicePhase.Timers, PmTimer.Reset);
        Devices.Add("vhpet", "0", Hpet, DevicePhase.Timers, Hpet.Reset);
        Devices.Add("vrtc", "0", Rtc, DevicePhase.Timers, Rtc.Reset); // keeps time and NVRAM across a reset, as bhyve's vrtc
    }

    /// <summary>The 8259A pair.</summary>
    public Vatpic Pic { get; }
    /// <summary>The IOAPIC.</summary>
    public Vioapic Ioapic { get; }
    /// <summary>The 8254 PIT.</summary>
    public Vatpit Pit { get; }
    /// <summary>The ACPI PM timer.</summary>
    public Vpmtmr PmTimer { get; }
    /// <summary>The MC146818 RTC with its NVRAM.</summary>
    public Vrtc Rtc { get; }
    /// <summary>The HPET.</summary>
    public Vhpet Hpet { get; }
    /// <summary>The VM interrupt API (ISA, IOAPIC, MSI) that devices drive.</summary>
    public InterruptRouter Irq { get; }

    /// <summary>The CPU engine of the current run (null between runs).</summary>
    public ICpuBackend? Backend { get; private set; }

    /// <inheritdoc/>
    public string Name { get; }
    /// <inheritdoc/>
    public CpuTopology Topology { get; }
    /// <inheritdoc/>
    public int CpuCount => _slots.Length;
    /// <summary>Guest memory.</summary>
    public GuestMemory Memory { get; }
    /// <summary>The VM's one clock.</summary>
    public IClock Clock { get; }
    /// <summary>The port-I/O bus.</summary>
    public PortBus Ports { get; } = new();
    /// <summary>The MMIO bus.</summary>
    public MmioBus Mmio { get; } = new();

    /// <summary>Guest writes that should signal an eventfd without an exit (KVM_IOEVENTFD where the backend has it).</summary>
    public IoEventFdTable IoEventFds { get; } = new();
    /// <summary>Interrupt routes for messages devices send from their I/O threads (KVM_IRQFD where the backend has it).</summary>
    public MsiRouteTable MsiRoutes { get; } = new();
    /// <summary>x86.strictmsr: an access to an unimplemented MSR raises #GP (default true; -w clears it).</summary>
    public bool StrictMsr { get; set; } = true;
    /// <summary>The CPU model (cpu.vendor, cpu.model, cpu.features): what CPUID reports and which instructions execute.</summary>
    public CpuModel CpuModel { get; set; } = CpuModel.Default;
    /// <summary>True when cpu.vendor, cpu.model or cpu.features was given: on KVM the host's CPUID is then filtered to the model.</summary>
    public bool CpuModelExplicit { get; set; }
    /// <summary>soft.jit: the software CPU translates hot guest code to host code (default true; false interprets only).</summary>
    public bool SoftJit { get; set; } = true;

    /// <summary>bhyve's -x (x86.x2apic): every local APIC comes out of power-on in x2APIC mode (IA32_APIC_BASE.EXTD set)
    /// instead of xAPIC mode; the CPU model then reports x2APIC.</summary>
    public bool X2ApicAtStart { get; set; }
    /// <summary>soft.jit_cache: bytes of executable code cache per software vCPU (default 64 MiB).</summary>
    public long SoftJitCacheSize { get; set; } = 64L << 20;
    /// <summary>Host CPUs each vCPU is pinned to (-p), or null.</summary>
    public IReadOnlyDictionary<int, int[]>? Pinning { get; set; }
    /// <summary>vCPU 0's initial state for a direct kernel boot, loaded on its thread before its first run in every
    /// <see cref="Run"/>; null leaves it at the reset vector. After a guest reset the kernel image in memory has been
    /// run: load it again (or clear this) before the next Run.</summary>
    public BootCpuState? BootState { get; set; }

    /// <summary>vCPU states a restore loads, each on its vCPU's thread before its first instruction, in place of
    /// <see cref="BootState"/>; used by the next <see cref="Run"/> only (a later guest reset starts from power-on).</summary>
    public VcpuState[]? RestoredCpus { get; set; }

    /// <summary>Runs once, on the last vCPU thread to load its <see cref="RestoredCpus"/> state, before that vCPU's
    /// first instruction: devices held since their restore start work here, when every LAPIC can take their interrupts.</summary>
    public Action? AfterRestore { get; set; }
    private int _restoresPending;

    /// <summary>What the control socket's snapshot requests call (set by the machine), or null when it offers none.</summary>
    public ISnapshotHandler? Snapshots { get; set; }

    /// <summary>Every device of the VM: built here and by the machine, reset, saved and restored in one stated order.</summary>
    public DeviceInventory Devices { get; } = new();

    /// <summary>Called on each vCPU thread, after it is pinned and attached and before its first instruction (the
    /// machine's syscall sandbox narrows the thread's filter there).</summary>
    public Action<int>? VcpuThreadStarting { get; set; }

    /// <summary>Raised once, on the thread that called the first <see cref="Run"/>, when the vCPUs have run for
    /// <see cref="SettleProbes"/> halt-monitor intervals: start-up is over.</summary>
    public event Action? SettledAfterStart;

    /// <summary>Monitor intervals (50 ms each) after which <see cref="SettledAfterStart"/> is raised.</summary>
    public const int SettleProbes = 2;
    private int _probesSinceStart;

    /// <summary>
    /// Runs the VM on a fresh CPU engine until it suspends. Returns how it stopped; the caller decides
    /// whether a reset restarts it (<see cref="ResetDevices"/>, then Run again).
    /// </summary>
    public VmStop Run(Func<Vm, ICpuBackend> createBackend)
    {
        // The stop request is cleared when a run ends, not when one starts: a signal or hyvectl request that arrives
        // after the control socket is up but before the vCPUs start must still stop this run.
        var threads = new Thread[_slots.Length];
        ICpuBackend? backend = null;
        try
        {
            backend = createBackend(this);
            Backend = backend;
            StartupTrace.Mark("engine created");
            var restored = RestoredCpus;
            _restoresPending = restored is null ? 0 : _slots.Length;
            foreach (var s in _slots) s.Start(backend.CreateVcpu(s.Id), restored?[s.Id]);
            _running = true;
            StartupTrace.Mark("vcpus created");
            for (int i = 0; i < threads.Length; i++)
            {
                var slot = _slots[i];
                threads[i] = new Thread(() => VcpuThread(slot), 256 * 1024) { Name = $"vcpu{slot.Id}", IsBackground = true };
                threads[i].Start();
            }
            MonitorUntilSuspended();
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ArgumentException)
        {
            SetError(e.Message);
        }
        finally
        {
            _running = false;
            foreach (var s in _slots) s.Wake();
            foreach (var t in threads) t?.Join();
            foreach (var s in _slots) s.Stop();
            Backend = null;
            RestoredCpus = null;
            backend?.Dispose();
        }
        // Taken atomically, so a request arriving from here on belongs to the next run (a reboot's).
        var error = Interlocked.Exchange(ref _error, null);
        int status = Interlocked.Exchange(ref _exitStatus, -1);
        _suspended.Reset();
        int how = Interlocked.Exchange(ref _suspendHow, -1);
        return new VmStop((SuspendHow)Math.Max(how, 0), error, status >= 0 ? status : null);
    }

    /// <summary>Resets device state after a guest reset, in the inventory's order (the RTC keeps time and NVRAM: its own
    /// Reset decides).</summary>
    public void ResetDevices() => Devices.Reset();

    /// <summary>Requests a suspend from any thread (bhyve's vm_suspend): the first request wins.</summary>
    public void Suspend(SuspendHow how)
    {
        if (Interlocked.CompareExchange(ref _suspendHow, (int)how, -1) == -1)
        {
            _suspended.Set();
            foreach (var s in _slots) s.Wake();
        }
    }

    /// <summary>Powers the VM off with a chosen process exit status (QEMU's isa-debug-exit: test kernels report results so).</summary>
    public void Exit(int status)
    {
        Interlocked.CompareExchange(ref _exitStatus, status, -1);
        Suspend(SuspendHow.PowerOff);
    }

    /// <summary>Stops the VM with an error (exit status 4) and a one-line reason.</summary>
    public void SetError(string message)
    {
        Interlocked.CompareExchange(ref _error, message, null);
        Suspend(SuspendHow.PowerOff);
    }

    private void MonitorUntilSuspended()
    {
        // KVM with an in-kernel LAPIC halts inside the kernel, so HLT is invisible: every probe interval,
        // kick the vCPUs that made no exit and ask what they are doing (bhyve's vm_handle_hlt decides the same).
        while (!_suspended.Wait(HaltProbeIntervalMs))
        {
            if (++_probesSinceStart == SettleProbes) SettledAfterStart?.Invoke();
            bool allHalted = true, anyActive = false;
            foreach (var s in _slots)
            {
                if (s.Held || s.Paused)
                {
                    // A vCPU the debugger holds (or a snapshot pauses) is neither running nor halted: the VM is not idle.
                    allHalted = false;
                    continue;
                }
                long exits = s.Vcpu!.ExitCount;
                if (exits != s.ExitsAtProbe)
                {
                    // It made exits since the last look, so it is running: no need to interrupt it to ask. What it
                    // does next is unknown until a look finds no exits.
                    s.ExitsAtProbe = exits;
                    s.ProbedState = null;
                }
                else if (s.ProbedState is null or VcpuRunState.Running)
                {
                    s.ProbeRequested = true;
                    s.Vcpu.Kick();
                }
                if (exits > 0 || s.ProbedState is VcpuRunState.Running or VcpuRunState.Halted or VcpuRunState.HaltedInterruptsDisabled)
                    s.Active = true;
                if (s.Active) anyActive = true;
                if (s.Active && s.ProbedState != VcpuRunState.HaltedInterruptsDisabled) allHalted = false;
            }
            if (anyActive && allHalted) Suspend(SuspendHow.Halt);
        }
    }

    private void VcpuThread(VcpuSlot slot)
    {
        var vcpu = slot.Vcpu!;
        try
        {
            PinThread(slot.Id);
            vcpu.AttachThread();
            VcpuThreadStarting?.Invoke(slot.Id);
            if (slot.Restored is { } restored)
            {
                vcpu.SetState(restored);
                if (Interlocked.Decrement(ref _restoresPending) == 0)
                {
                    var after = AfterRestore;
                    AfterRestore = null;
                    after?.Invoke();
                }
            }
            else if (slot.Id == 0) BootState?.Apply(vcpu);
            Debugger?.VcpuStarted(slot.Id, vcpu);
            while (_suspendHow < 0)
            {
                slot.RunPendingWork();
                if (slot.Held || slot.Paused)
                {
                    slot.ParkWhileHeld(() => _suspendHow >= 0);
                    continue;
                }
                if (slot.ProbeRequested)
                {
                    slot.ProbeRequested = false;
                    var state = vcpu.QueryRunState();
                    if (vcpu.ExitCount == slot.ExitsAtProbe) slot.ProbedState = state;
                }
                var ev = vcpu.Run();
                switch (ev)
                {
                    case VcpuEvent.Kicked: break;
                    case VcpuEvent.HaltedInterruptsDisabled:
                        slot.ProbedState = VcpuRunState.HaltedInterruptsDisabled;
                        slot.ExitsAtProbe = vcpu.ExitCount;
                        break;
                    case VcpuEvent.TripleFault: Suspend(SuspendHow.TripleFault); break;
                    case VcpuEvent.Reset: Suspend(SuspendHow.Reset); break;
                    case VcpuEvent.PowerOff: Suspend(SuspendHow.PowerOff); break;
                    case VcpuEvent.Error: SetError($"vcpu {slot.Id}: {vcpu.LastError}"); break;
                    case VcpuEvent.Debug: Debugger?.DebugExit(slot.Id, vcpu); break;
                }
            }
        }
        catch (Exception e)
        {
            // A host-side failure on a vCPU thread ends the VM with status 4, never a crash.
            SetError($"vcpu {slot.Id}: {e.Message}");
        }
        finally
        {
            slot.Detach();
        }
    }

    private unsafe void PinThread(int id)
    {
        if (Pinning is null || !Pinning.TryGetValue(id, out var cpus)) return;
        ulong* mask = stackalloc ulong[16];
        for (int i = 0; i < 16; i++) mask[i] = 0;
        foreach (var c in cpus)
            if (c >= 0 && c < 1024) mask[c >> 6] |= 1ul << (c & 63);
        if (Libc.SchedSetaffinity(0, 128, mask) != 0)
            throw new IOException($"cannot pin vcpu {id} to host cpu {string.Join(",", cpus)}");
    }

    /// <summary>Runs <paramref name="work"/> on vCPU <paramref name="id"/>'s thread while it is out of the guest
    /// (kicking it), or directly when the VM is not running. Used by the control socket and the debug server.</summary>
    public T OnVcpu<T>(int id, Func<IVcpuBackend, T> work)
    {
        if ((uint)id >= (uint)_slots.Length) throw new ArgumentException($"vcpu {id} does not exist");
        return _slots[id].Invoke(work, _running);
    }

    /// <summary>The debugger told of debug exits and vCPU starts (bhyve's debug CPU set user), or null.</summary>
    public IVmDebugger? Debugger { get; set; }

    /// <summary>Adds vCPU <paramref name="id"/> to the debug set: it leaves the guest (kicked) and waits on its own
    /// thread, still serving <see cref="OnVcpu"/>, until <see cref="ReleaseCpu"/>. Allowed before <see cref="Run"/>
    /// (the vCPU then stops before its first instruction) and kept across guest resets.</summary>
    public void HoldCpu(int id)
    {
        if ((uint)id >= (uint)_slots.Length) throw new ArgumentException($"vcpu {id} does not exist");
        var s = _slots[id];
        s.Held = true;
        s.Vcpu?.Kick();
    }

    /// <summary>Removes vCPU <paramref name="id"/> from the debug set: it runs again.</summary>
    public void ReleaseCpu(int id)
    {
        if ((uint)id >= (uint)_slots.Length) throw new ArgumentException($"vcpu {id} does not exist");
        var s = _slots[id];
        s.Held = false;
        s.Wake();
    }

    /// <summary>
    /// Pauses every vCPU at an instruction boundary (out of the guest, parked on its own thread where it still serves
    /// <see cref="OnVcpu"/>), apart from the debug set, which it leaves as it is. False, with the vCPUs resumed, when
    /// one does not stop within <paramref name="timeoutMs"/>.
    /// </summary>
    public bool PauseAll(int timeoutMs)
    {
        foreach (var s in _slots)
        {
            s.Paused = true;
            s.Vcpu?.Kick();
        }
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            bool all = true;
            foreach (var s in _slots) if (!s.Parked && _running && _suspendHow < 0 && s.Vcpu is not null) all = false;
            if (all) return true;
            if (sw.ElapsedMilliseconds > timeoutMs)
            {
                ResumeAll();
                return false;
            }
            Thread.Sleep(0);
        }
    }

    /// <summary>Lets the vCPUs <see cref="PauseAll"/> stopped run again.</summary>
    public void ResumeAll()
    {
        foreach (var s in _slots)
        {
            s.Paused = false;
            s.Wake();
        }
    }

    /// <summary>True while the VM's vCPU threads run (between the start and the end of <see cref="Run"/>).</summary>
    public bool IsRunning => _running;

    /// <inheritdoc/>
    public void Checkpoint(string path, bool thenExit) =>
        (Snapshots ?? throw new NotSupportedException("this VM cannot take snapshots")).Checkpoint(path, thenExit);

    /// <inheritdoc/>
    public void DumpGuestMemory(string path) =>
        (Snapshots ?? throw new NotSupportedException("this VM cannot dump guest memory")).DumpGuestMemory(path);

    /// <summary>True when vCPU <paramref name="id"/> is in the debug set.</summary>
    public bool IsHeld(int id) => (uint)id < (uint)_slots.Length && _slots[id].Held;

    /// <summary>Waits until every vCPU in the debug set is out of the guest and parked (or the VM is not running).
    /// False after <paramref name="timeoutMs"/>.</summary>
    public bool WaitUntilParked(int timeoutMs)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            bool all = true;
            foreach (var s in _slots) if (s.Held && !s.Parked && _running && _suspendHow < 0) all = false;
            if (all) return true;
            if (sw.ElapsedMilliseconds > timeoutMs) return false;
            Thread.Sleep(1);
        }
    }

    // IVmControl

    /// <inheritdoc/>
    public IReadOnlyList<int> ActiveCpus()
    {
        var list = new List<int>();
        foreach (var s in _slots) if (s.Active || s.Id == 0) list.Add(s.Id);
        return list;
    }

    /// <inheritdoc/>
    public IReadOnlyList<int> SuspendedCpus()
    {
        var list = new List<int>();
        foreach (var s in _slots) if (s.Held) list.Add(s.Id);
        return list;
    }

    /// <inheritdoc/>
    public IReadOnlyList<MemSegInfo> MemSegs() => Memory.SegmentInfo();

    /// <inheritdoc/>
    public IReadOnlyList<MemMapInfo> MemMap() => Memory.MapInfo();

    /// <inheritdoc/>
    public ulong GetRegister(int vcpu, Reg reg) => OnVcpu(vcpu, v => v.GetRegister(reg));

    /// <inheritdoc/>
    public void SetRegister(int vcpu, Reg reg, ulong value) => OnVcpu(vcpu, v => { v.SetRegister(reg, value); return 0; });

    /// <inheritdoc/>
    public SegmentDescriptor GetDescriptor(int vcpu, Reg reg) => OnVcpu(vcpu, v => v.GetDescriptor(reg));

    /// <inheritdoc/>
    public void SetDescriptor(int vcpu, Reg reg, SegmentDescriptor desc) => OnVcpu(vcpu, v => { v.SetDescriptor(reg, desc); return 0; });

    private readonly List<KeyValuePair<string, Func<ulong>>> _stats = [];

    /// <summary>Adds a counter that <c>hyvectl --get-stats</c> shows (read on the control thread when asked).</summary>
    public void AddStat(string name, Func<ulong> read)
    {
        lock (_stats) _stats.Add(new(name, read));
    }

    /// <inheritdoc/>
    public IReadOnlyList<KeyValuePair<string, ulong>> GetStats()
    {
        lock (_stats)
        {
            var list = new List<KeyValuePair<string, ulong>>(_stats.Count);
            foreach (var kv in _stats) list.Add(new(kv.Key, kv.Value()));
            return list;
        }
    }

    /// <inheritdoc/>
    public long GetRtcTime() => Rtc.GetTime();

    /// <inheritdoc/>
    public void SetRtcTime(long unixSeconds) => Rtc.SetTime(unixSeconds);

    /// <inheritdoc/>
    public byte GetRtcNvram(int offset) => Rtc.NvramRead(offset);

    /// <inheritdoc/>
    public void SetRtcNvram(int offset, byte value) => Rtc.NvramWrite(offset, value);

    /// <inheritdoc/>
    public void InjectNmi(int vcpu) => OnVcpu(vcpu, v => { v.InjectNmi(); return 0; });

    /// <inheritdoc/>
    public void AssertLapicLvt(int vcpu, int lvt)
    {
        if ((uint)lvt > 6) throw new ArgumentException($"LVT index {lvt} out of range 0-6");
        if (vcpu == -1)
        {
            foreach (var s in _slots) OnVcpu(s.Id, v => { v.AssertLocalInterrupt(lvt); return 0; });
            return;
        }
        OnVcpu(vcpu, v => { v.AssertLocalInterrupt(lvt); return 0; });
    }

    /// <inheritdoc/>
    public (ulong Info1, ulong Info2) GetIntinfo(int vcpu) => OnVcpu(vcpu, v => v.GetIntinfo());

    /// <summary>Sends interrupt messages to whichever CPU engine is running (dropped between runs, as during a reset).</summary>
    private sealed class ApicBusForwarder(Vm vm) : IApicBus
    {
        public void DeliverMsi(ulong address, ulong data) => vm.Backend?.DeliverMsi(address, data);
    }

    /// <summary>Per-vCPU run-control state kept across resets.</summary>
    private sealed class VcpuSlot(int id)
    {
        private readonly ConcurrentQueue<Action> _work = new();
        private readonly object _gate = new();
        private bool _attached;

        public int Id { get; } = id;
        public IVcpuBackend? Vcpu { get; private set; }
        public volatile bool ProbeRequested;
        public VcpuRunState? ProbedState; // null until a probe answers (written by the vCPU thread, read by the monitor)
        public long ExitsAtProbe = -1;
        public volatile bool Active;
        public volatile bool Held;   // in the debug set: stay out of the guest
        public volatile bool Paused; // paused for a snapshot: stay out of the guest
        public VcpuState? Restored;  // loaded before the first instruction of this run
        public volatile bool Parked; // the thread is waiting in ParkWhileHeld
        private readonly ManualResetEventSlim _wake = new(false);

        /// <summary>Kicks the vCPU out of the guest and wakes its thread if parked.</summary>
        public void Wake()
        {
            Vcpu?.Kick();
            _wake.Set();
        }

        /// <summary>On the vCPU thread: serve requests until released or the VM stops.</summary>
        public void ParkWhileHeld(Func<bool> stopping)
        {
            ProbedState = null;
            Parked = true;
            try
            {
                while ((Held || Paused) && !stopping())
                {
                    _wake.Reset();
                    RunPendingWork();
                    if (!(Held || Paused) || stopping()) break;
                    _wake.Wait(50);
                }
            }
            finally
            {
                Parked = false;
            }
        }

        public void Start(IVcpuBackend vcpu, VcpuState? restored)
        {
            Vcpu = vcpu;
            Restored = restored;
            Active = restored is null ? Id == 0 : restored.Activity != VcpuActivity.WaitingForSipi;
            ProbedState = null;
            ExitsAtProbe = 0;
            lock (_gate) _attached = true;
        }

        /// <summary>Leaves the vCPU thread: later requests run directly; queued ones run now.</summary>
        public void Detach()
        {
            lock (_gate)
            {
                _attached = false;
                RunPendingWork();
            }
        }

        public void Stop()
        {
            Vcpu?.Dispose();
            Vcpu = null;
        }

        public void RunPendingWork()
        {
            while (_work.TryDequeue(out var w)) w();
        }

        public T Invoke<T>(Func<IVcpuBackend, T> work, bool running)
        {
            T result = default!;
            Exception? error = null;
            using var done = new ManualResetEventSlim(false);
            lock (_gate)
            {
                var vcpu = Vcpu ?? throw new InvalidOperationException("the VM is not running");
                if (!_attached || !running)
                {
                    return work(vcpu);
                }
                _work.Enqueue(() =>
                {
                    try { result = work(vcpu); }
                    catch (Exception e) { error = e; }
                    finally { done.Set(); }
                });
                vcpu.Kick();
                _wake.Set();
            }
            if (!done.Wait(TimeSpan.FromSeconds(5))) throw new TimeoutException($"vcpu {Id} did not pause");
            if (error is not null) throw error;
            return result;
        }
    }
}
