// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Boot;
using Hyve.Config;
using Hyve.Devices;
using Hyve.Gdb;
using Hyve.Kvm;
using Hyve.Snapshot;
using Hyve.Soft;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vmm.State;

namespace Hyve;

/// <summary>
/// What bhyve(8) builds in user space around the VMM: guest memory, the boot ROM, the LPC devices, the control
/// socket, and the run loop that turns suspends into exit statuses and restarts the VM in place after a reset.
/// </summary>
public sealed class Machine : IDisposable
{
    private readonly ConfigTree _config;
    private readonly List<IDisposable> _owned = [];
    private GdbServer? _gdb;
    private readonly TimerQueue _clock;
    private readonly Func<Vm, ICpuBackend> _createBackend;
    private readonly List<PosixSignalRegistration> _signals = [];

    /// <summary>Builds the machine the options describe; throws <see cref="HostConfigException"/>,
    /// <see cref="ConfigException"/> or <see cref="ControlServerException"/> with a one-line reason. With
    /// <paramref name="restore"/> (a checked snapshot whose configuration the options are) the machine resumes from it.</summary>
    public Machine(ParseResult options, SnapshotReader? restore = null)
    {
        _config = options.Config;
        string name = _config.Get("name") ?? throw new HostConfigException("no VM name");
        var t = options.Topology;
        try
        {
            _createBackend = ChooseBackend(_config.Get("accel") ?? "auto");
            _clock = Own(new TimerQueue());
            var memory = Own(new GuestMemory(options.MemorySize, _config.GetBool("memory.guest_in_core", false)));
            // rtc.use_localtime (default true; -u clears it): the RTC counts local time unless asked for UTC.
            long rtcOffset = _config.GetBool("rtc.use_localtime", true)
                ? (long)TimeZoneInfo.Local.GetUtcOffset(DateTime.UtcNow).TotalSeconds : 0;
            Vm = new Vm(name, new CpuTopology(t.Sockets, t.Cores, t.Threads, t.MaxCpus), memory, _clock, rtcOffset)
            {
                StrictMsr = _config.GetBool("x86.strictmsr", true),
                SoftJit = _config.GetBool("soft.jit", true),
                X2ApicAtStart = _config.GetBool("x86.x2apic", false),
                CpuModel = CpuModelOption(_config),
                CpuModelExplicit = _config.Get("cpu.model") is not null || _config.Get("cpu.features") is not null || _config.Get("cpu.vendor") is not null,
                SoftJitCacheSize = (long)_config.GetSize("soft.jit_cache", 64ul << 20),
                Pinning = ReadPinning(_config, t.Cpus),
            };
            Vm.Snapshots = new MachineSnapshots(Vm, _config, _clock);
            // x86.strictio (-e): an access to a port or MMIO address no device claims stops the VM (bhyve's -e), with
            // one line naming it and status 4, instead of reading all ones or being ignored.
            if (_config.GetBool("x86.strictio", false))
            {
                var vm = Vm;
                vm.Ports.Unclaimed = (port, write, size) =>
                    vm.SetError($"unhandled I/O {(write ? "write" : "read")} of {size} byte(s) at port 0x{port:x} (x86.strictio)");
                vm.Mmio.Unclaimed = (address, write, size) =>
                    vm.SetError($"unhandled MMIO {(write ? "write" : "read")} of {size} byte(s) at 0x{address:x} (x86.strictio)");
            }
            // The control socket comes first: a second hyve with the same name must stop before touching anything.
            Own(ControlServer.Start(Vm));
            StartGdb();

            var devices = Own(Vm.Devices);
            var resetControl = new ResetControl(Vm);
            Vm.Ports.Register(ResetControl.Port, 1, resetControl);
            devices.Add("reset-control", "0", resetControl, DevicePhase.Platform);
            var kbc = new I8042(Vm.Irq, () => Vm.Suspend(SuspendHow.Reset));
            Vm.Ports.Register(I8042.DataPort, 1, kbc);
            Vm.Ports.Register(I8042.CommandPort, 1, kbc);
            devices.Add("i8042", "0", kbc, DevicePhase.Platform, kbc.Reset);

            var coms = devices.Own(LpcComPorts.Create(_config, Vm.Ports, Vm.Irq));
            for (int i = 0; i < coms.Ports.Count; i++)
                devices.Add("uart16550", Uart16550.ComPorts[i].Name, coms.Ports[i], DevicePhase.Platform, coms.Ports[i].Reset);
            Vm.AddStat("console output bytes dropped", () => (ulong)ConsoleBackend.TotalDropped);
            if (_config.IsNode("lpc.debug_exit"))
            {
                var (ioBase, ioSize) = DebugExit.ParseOptions(
                    $"iobase={_config.Get("lpc.debug_exit.iobase")},iosize={_config.Get("lpc.debug_exit.iosize")}");
                var debugExit = new DebugExit(Vm.Exit, ioBase, ioSize);
                debugExit.Register(Vm.Ports);
                devices.Add("debug-exit", "0", debugExit, DevicePhase.Platform);
            }

            string? rom = _config.Get("lpc.bootrom");
            string? kernel = _config.Get("boot.kernel");
            if (rom is null && kernel is null)
                throw new HostConfigException("nothing to boot: give a boot ROM (-l bootrom,FILE) or a kernel (-o boot.kernel=FILE)");
            Platform = PcPlatform.Build(Vm, _config, firmware: rom is not null);
            foreach (var d in Platform.Pci.Devices) if (d is IDisposable owned) Own(owned); // virtio I/O threads and disks
            Virtio.VirtioInput? tablet = null;
            foreach (var d in Platform.Pci.Devices) tablet ??= d as Virtio.VirtioInput;
            foreach (var d in Platform.Pci.Devices)
                if (d is Display.StdVga vga) Own(new Display.VncConsole(vga, kbc, name, _config.Get("keyboard.layout"), tablet));
            if (rom is not null && restore is not null)
            {
                // The ROM's contents are in the snapshot: the file need not exist any more.
                ulong Length(string n) => restore.Manifest.Segments.Find(s => s.Name == n)?.Length ?? 0;
                BootRom.Reserve(memory, Length("bootrom"), Length("bootvars"));
                devices.Add("bios-shadow", "0", memory, DevicePhase.Memory, () => BootRom.ShadowLegacyArea(memory));
            }
            else if (rom is not null)
            {
                BootRom.Load(memory, rom, _config.Get("lpc.bootvars"));
                BootRom.ShadowLegacyArea(memory);
                devices.Add("bios-shadow", "0", memory, DevicePhase.Memory, () => BootRom.ShadowLegacyArea(memory));
            }
            else
            {
                // Direct kernel boot: tables in the BIOS area, the kernel loaded, vCPU 0 at its entry; a guest
                // reboot loads it again, as QEMU's -kernel does. A restore has all of that in its memory already.
                if (restore is null) LoadKernel(kernel!);
                devices.Add("kernel", "0", memory, DevicePhase.Memory, () => LoadKernel(kernel!));
            }
            if (_config.Get("accel") == "kvm" && !KvmSystem.IsAvailable(out var reason)) throw new HostConfigException(reason);
            StartupTrace.Mark("devices built");
            if (restore is not null) ((MachineSnapshots)Vm.Snapshots).Restore(restore, EngineName(_config.Get("accel") ?? "auto"));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The CPU model that keys cpu.vendor, cpu.model and cpu.features describe (checked at option parsing).</summary>
    internal static Hyve.X86.CpuModel CpuModelOption(ConfigTree config)
    {
        try
        {
            // -x (x86.x2apic): the local APICs start in x2APIC mode, which a model without x2APIC could not be in.
            string? features = config.Get("cpu.features");
            if (config.GetBool("x86.x2apic", false)) features = string.IsNullOrEmpty(features) ? "+x2apic" : features + ",+x2apic";
            return Hyve.X86.CpuModel.Parse(config.Get("cpu.vendor"), config.Get("cpu.model"), features);
        }
        catch (ArgumentException e)
        {
            throw new ConfigException(e.Message);
        }
    }

    /// <summary>The VM.</summary>
    public Vm Vm { get; } = null!;

    /// <summary>PCI, ACPI PM, fw_cfg and the firmware tables' description.</summary>
    public PcPlatform Platform { get; } = null!;

    // -G [w][addr:]port: the GDB server; "w" holds vCPU 0 before its first instruction until a debugger attaches.
    private void StartGdb()
    {
        string? port = _config.Get("gdb.port");
        string? path = _config.Get("gdb.path");
        if (port is null && path is null) return;
        string? address = _config.Get("gdb.address");
        try
        {
            if (path is not null)
            {
                _gdb = Own(new GdbServer(Vm, path));
                if (_config.GetBool("gdb.wait", false)) Vm.HoldCpu(0);
                return;
            }
            var ip = GdbServer.ParseAddress(address);
            if (!System.Net.IPAddress.IsLoopback(ip))
                Console.Error.WriteLine($"hyve: warning: the debug server listens on {ip}, which is not a loopback address");
            _gdb = Own(new GdbServer(Vm, ip, int.Parse(port!, System.Globalization.CultureInfo.InvariantCulture)));
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or ArgumentException or FormatException or OverflowException)
        {
            string where = path ?? $"{address ?? "127.0.0.1"}:{port}";
            string why = e is System.Net.Sockets.SocketException se ? SocketReason(se) : e.Message;
            throw new HostConfigException($"debug server on {where}: {why}");
        }
        if (_config.GetBool("gdb.wait", false)) Vm.HoldCpu(0);
    }

    // Hyve's own words for the socket errors a user meets (the runtime's texts are stripped from the executable).
    internal static string SocketReason(System.Net.Sockets.SocketException e) => e.SocketErrorCode switch
    {
        System.Net.Sockets.SocketError.AddressAlreadyInUse => "the address is already in use",
        System.Net.Sockets.SocketError.AddressNotAvailable => "the address is not one of this host's",
        System.Net.Sockets.SocketError.AccessDenied => "permission denied",
        _ => $"socket error {e.SocketErrorCode}",
    };

    private void LoadKernel(string kernel)
    {
        ulong rsdp = Platform.InstallBiosTables();
        var loaded = KernelLoader.Load(Vm.Memory, kernel, _config.Get("boot.initrd"), _config.Get("boot.cmdline"),
            Platform.MemoryMap(), rsdp);
        Vm.BootState = loaded.Cpu;
        foreach (var d in Platform.Pci.Devices)
            if (d is Display.StdVga vga) Display.BootDisplay.SetUp(vga, Vm.Memory, loaded);
    }

    /// <summary>Runs until the guest powers off, halts, triple faults or (with exit_on_reboot) resets; returns bhyve's exit status.</summary>
    public int Run()
    {
        // SIGTERM, SIGINT and SIGHUP press the ACPI power button so the guest OS can shut down cleanly (bhyve's
        // SIGTERM); a second one, or one that no guest is listening for (power button not enabled), powers off at
        // once (status 1). SIGQUIT and SIGUSR1 power off at once. Every one of them leaves through Run's return, so
        // the terminal is restored and the control socket removed, never a death by signal.
        int presses = 0;
        foreach (var sig in new[] { PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGHUP })
        {
            _signals.Add(PosixSignalRegistration.Create(sig, ctx =>
            {
                ctx.Cancel = true;
                if (Interlocked.Increment(ref presses) > 1 || !Platform.Pm.PressPowerButton()) Vm.Suspend(SuspendHow.PowerOff);
            }));
        }
        foreach (var sig in new[] { PosixSignal.SIGQUIT, (PosixSignal)10 /* SIGUSR1 */ })
        {
            _signals.Add(PosixSignalRegistration.Create(sig, ctx =>
            {
                ctx.Cancel = true;
                Vm.Suspend(SuspendHow.PowerOff);
            }));
        }
        ConsoleTerminal.SignalsHandledByMachine = true;
        bool exitOnReboot = _config.GetBool("exit_on_reboot", false);
        // Start-up is over once the vCPUs run: let go of the code that only it needed (see StartupPages).
        Vm.SettledAfterStart += () => StartupPages.Trim();
        // Start-up is over and the VM is about to run: from here on only the calls a running VM needs (HostSandbox).
        HostSandbox.Enter(_config, Vm);
        while (true)
        {
            var stop = Vm.Run(_createBackend);
            if (stop.Error is not null)
            {
                ConsoleBackend.FlushAll();
                ConsoleTerminal.RestoreTerminal();
                Console.Error.WriteLine($"hyve: {stop.Error}");
                _gdb?.ReportExit(4);
                return 4;
            }
            if (stop.How == SuspendHow.Reset && !exitOnReboot)
            {
                // bhyve's reset: vCPUs and devices start over, memory and the RTC's time and NVRAM stay.
                Vm.ResetDevices();
                continue;
            }
            ConsoleBackend.FlushAll();
            // A debugger waiting on the guest hears that it ended, with hyve's exit status (gdb's 'W' packet).
            _gdb?.ReportExit(stop.ExitStatus);
            return stop.ExitStatus;
        }
    }

    // The engine ChooseBackend's factory will build ("kvm" or "soft").
    private static string EngineName(string accel) => accel switch
    {
        "kvm" => "kvm",
        "auto" when KvmSystem.HostHasHardwareVirtualization() && KvmSystem.IsAvailable(out _) => "kvm",
        _ => "soft",
    };

    private static Func<Vm, ICpuBackend> ChooseBackend(string accel)
    {
        switch (accel)
        {
            case "kvm":
                // Opened on another core while the devices are built; the end of the constructor reports a failure.
                KvmSystem.OpenInBackground();
                return vm => new KvmBackend(vm);
            case "soft":
                return vm => new SoftBackend(vm);
            case "auto":
                // KVM only with hardware virtualization: without VT-x/AMD-V it emulates every instruction in the
                // kernel, slower than the software CPU and refusing some (x87).
                if (!KvmSystem.HostHasHardwareVirtualization()) return vm => new SoftBackend(vm);
                KvmSystem.OpenInBackground();
                return vm => KvmSystem.IsAvailable(out _) ? new KvmBackend(vm) : new SoftBackend(vm);
            default:
                throw new HostConfigException($"accel={accel}: expected kvm, soft or auto");
        }
    }

    private static Dictionary<int, int[]>? ReadPinning(ConfigTree config, int cpus)
    {
        Dictionary<int, int[]>? pins = null;
        for (int i = 0; i < cpus; i++)
        {
            string? set = config.Get($"vcpu.{i}.cpuset");
            if (set is null) continue;
            pins ??= [];
            pins[i] = Options.ParseCpuSet(set, i.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
        return pins;
    }

    private T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    /// <summary>Closes the control socket, the consoles, the clock and guest memory.</summary>
    public void Dispose()
    {
        foreach (var r in _signals) r.Dispose();
        _signals.Clear();
        ConsoleTerminal.SignalsHandledByMachine = false;
        for (int i = _owned.Count - 1; i >= 0; i--)
        {
            try { _owned[i].Dispose(); }
            catch (Exception e) when (e is IOException or ObjectDisposedException) { }
        }
        _owned.Clear();
    }
}
