// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Pci;

/// <summary>
/// The PCI host: functions by (bus, slot, function), configuration mechanism #1 (0xCF8/0xCFC) and ECAM, the BAR
/// allocator over the PCI hole, and INTx routing (bhyve's pci_emul.c). Build the machine with
/// <see cref="Add"/>/<see cref="AddFromConfig"/>, then <see cref="Build"/> once; BARs then follow the guest.
/// </summary>
public sealed class PciBus
{
    /// <summary>Default ECAM base (bhyve's PCI_EMUL_ECFG_BASE).</summary>
    public const ulong DefaultEcamBase = 0xE000_0000;
    /// <summary>ECAM size: 1 MiB per bus, buses 0-255.</summary>
    public const ulong EcamSize = 256ul << 20;
    /// <summary>First I/O port handed to I/O BARs (bhyve's PCI_EMUL_IOBASE).</summary>
    public const ulong IoBase = 0x2000;
    /// <summary>End of the I/O BAR window.</summary>
    public const ulong IoLimit = 0x10000;
    /// <summary>Size of the 64-bit BAR window (bhyve's PCI_EMUL_MEMSIZE64).</summary>
    public const ulong Mem64Size = 32ul << 30;
    /// <summary>64-bit BARs this small or smaller go below 4 GiB, as bhyve does for drivers that dislike high BARs.</summary>
    public const ulong Mem64LowThreshold = 128ul << 20;

    private readonly SparseTable<PciDevice> _funcs = new();
    private readonly List<PciDevice> _list = [];
    private readonly Dictionary<int, int[]> _pinUse = [];
    private readonly Func<IIrqLines?> _irq;
    private readonly object _cfgGate = new();
    private ulong _ioNext, _mem32Next, _mem64Next;
    private byte[]? _initialPirq;
    private DeviceInventory? _inventory;

    /// <summary>Creates the host and claims 0xCF8, 0xCFC-0xCFF and the ECAM range.</summary>
    public PciBus(PortBus ports, MmioBus mmio, GuestMemory memory, Func<IIrqLines?> irq, ulong ecamBase = DefaultEcamBase)
    {
        Ports = ports;
        Mmio = mmio;
        Memory = memory;
        _irq = irq;
        if ((ecamBase & (EcamSize - 1)) != 0) throw new HostConfigException($"PCI ECAM base 0x{ecamBase:x} is not 256 MiB aligned");
        EcamBase = ecamBase;
        Router = new PciIntxRouter(irq);
        Mem32Base = GuestMemory.LowMemLimit;
        Mem32Limit = ecamBase > Mem32Base ? ecamBase : GuestMemory.HighMemBase - (512ul << 20);
        Mem64Base = RoundUp(GuestMemory.HighMemBase + memory.HighMemSize, Mem64Size);
        Mem64Limit = Mem64Base + Mem64Size;
        _ioNext = IoBase;
        _mem32Next = Mem32Base;
        _mem64Next = Mem64Base;
        var mech1 = new PciConfigPorts(this);
        ports.Register(PciConfigPorts.AddressPort, 1, mech1);
        ports.Register(PciConfigPorts.DataPort, 4, mech1);
        mmio.Register(ecamBase, EcamSize, new PciEcam(this), "pci-ecam");
    }

    /// <summary>Creates the host for a VM (interrupts through <see cref="Vm.Irq"/>, looked up when used).</summary>
    public static PciBus Create(Vm vm, ulong ecamBase = DefaultEcamBase) =>
        new(vm.Ports, vm.Mmio, vm.Memory, () => vm.Irq, ecamBase) { IoEventFds = vm.IoEventFds, MsiRoutes = vm.MsiRoutes };

    /// <summary>The VM's eventfd doorbells (virtio notify addresses register here as their BARs move); null in bare tests.</summary>
    public IoEventFdTable? IoEventFds { get; init; }

    /// <summary>The VM's routes for messages devices send from their own threads (MSI-X vectors), or null.</summary>
    public MsiRouteTable? MsiRoutes { get; init; }

    /// <summary>The port bus I/O BARs live on.</summary>
    public PortBus Ports { get; }
    /// <summary>The MMIO bus memory BARs live on.</summary>
    public MmioBus Mmio { get; }
    /// <summary>Guest memory (devmem BARs are mapped here).</summary>
    public GuestMemory Memory { get; }
    /// <summary>Interrupt lines for MSI and INTx.</summary>
    public IIrqLines? Irq => _irq();
    /// <summary>The INTx router.</summary>
    public PciIntxRouter Router { get; }
    /// <summary>ECAM base (for the ACPI MCFG and the E820 reservation).</summary>
    public ulong EcamBase { get; }
    /// <summary>32-bit memory BAR window start (the PCI hole).</summary>
    public ulong Mem32Base { get; }
    /// <summary>32-bit memory BAR window end (exclusive; the ECAM base).</summary>
    public ulong Mem32Limit { get; }
    /// <summary>64-bit memory BAR window start.</summary>
    public ulong Mem64Base { get; }
    /// <summary>64-bit memory BAR window end (exclusive).</summary>
    public ulong Mem64Limit { get; }
    /// <summary>True once <see cref="Build"/> ran.</summary>
    public bool Built { get; private set; }
    /// <summary>All functions in (bus, slot, function) order once built; insertion order before.</summary>
    public IReadOnlyList<PciDevice> Devices => _list;

    private static int Key(int bus, int slot, int func) => (bus << 8) | (slot << 3) | func;

    private static ulong RoundUp(ulong v, ulong align) => (v + align - 1) & ~(align - 1);

    /// <summary>The function at (bus, slot, function), or null.</summary>
    public PciDevice? Find(int bus, int slot, int func) =>
        (uint)bus < 256 && (uint)slot < 32 && (uint)func < 8 ? _funcs[Key(bus, slot, func)] : null;

    /// <summary>Places a function; a taken or invalid address is a host error.</summary>
    public void Add(PciDevice device, int bus, int slot, int func)
    {
        ArgumentNullException.ThrowIfNull(device);
        if ((uint)bus > 255 || (uint)slot > 31 || (uint)func > 7)
            throw new HostConfigException($"PCI address {bus}:{slot}:{func} is out of range (bus 0-255, slot 0-31, function 0-7)");
        if (_funcs[Key(bus, slot, func)] is { } other)
            throw new HostConfigException($"PCI slot {bus}:{slot}:{func} is already taken by {other.Emulation}");
        if (device.Bus is not null) throw new InvalidOperationException("device is already on a bus");
        device.Attach(this, bus, slot, func);
        _funcs[Key(bus, slot, func)] = device;
        _list.Add(device);
        if (device.WantsIntx) AssignIntxPin(device);
        if (Built)
        {
            foreach (var bar in device.Bars) if (bar is not null) Allocate(device, bar);
            SetMultifunction(bus, slot);
            RouteIntx(device);
            device.CaptureInitial();
            JoinInventory(device);
        }
    }

    /// <summary>Creates and places the functions of <c>-s</c> options through <paramref name="registry"/>; unknown emulations are host errors.</summary>
    public void AddFromConfig(IEnumerable<PciSlotConfig> slots, PciDeviceRegistry registry, Hyve.Config.ConfigTree? root = null, string vmName = "")
    {
        ArgumentNullException.ThrowIfNull(slots);
        ArgumentNullException.ThrowIfNull(registry);
        foreach (var s in slots)
        {
            if ((uint)s.Bus > 255 || (uint)s.Slot > 31 || (uint)s.Function > 7)
                throw new HostConfigException($"PCI address {s.Bus}:{s.Slot}:{s.Function} is out of range (bus 0-255, slot 0-31, function 0-7)");
            if (Find(s.Bus, s.Slot, s.Function) is { } other)
                throw new HostConfigException($"PCI slot {s.Bus}:{s.Slot}:{s.Function} is already taken by {other.Emulation}");
            var dev = registry.Create(new PciDeviceContext(this, s.Bus, s.Slot, s.Function, s.Emulation, s.Conf) { Root = root, VmName = vmName });
            dev.Emulation = s.Emulation;
            Add(dev, s.Bus, s.Slot, s.Function);
        }
    }

    /// <summary>
    /// Finishes the machine's PCI: sets the multifunction bit where a slot has several functions, places every BAR
    /// (largest first) and enables its decode, and routes INTx. Call once after all functions are added.
    /// </summary>
    public void Build()
    {
        if (Built) throw new InvalidOperationException("PCI bus already built");
        _list.Sort((a, b) => Key(a.BusNumber, a.Slot, a.Function).CompareTo(Key(b.BusNumber, b.Slot, b.Function)));
        foreach (var d in _list) SetMultifunction(d.BusNumber, d.Slot);
        var bars = new List<(PciDevice Dev, PciBar Bar)>();
        foreach (var d in _list)
            foreach (var bar in d.Bars)
                if (bar is not null) bars.Add((d, bar));
        // Largest first keeps natural alignment from wasting the windows; the sort is stable for equal sizes.
        var ordered = bars.OrderByDescending(b => b.Bar.Size).ToList();
        Built = true;
        foreach (var (d, bar) in ordered) Allocate(d, bar);
        foreach (var d in _list) RouteIntx(d);
        _initialPirq = Router.Registers();
        foreach (var d in _list) d.CaptureInitial();
    }

    private void SetMultifunction(int bus, int slot)
    {
        int n = 0;
        for (int f = 0; f < 8; f++) if (_funcs[Key(bus, slot, f)] is not null) n++;
        for (int f = 0; f < 8; f++) _funcs[Key(bus, slot, f)]?.SetMultifunction(n > 1);
    }

    /// <summary>Gives a function asking for INTx the least-used pin of its slot (bhyve's pci_lintr_request).</summary>
    internal void AssignIntxPin(PciDevice d)
    {
        if (d.InterruptPin != 0) return;
        int key = (d.BusNumber << 5) | d.Slot;
        if (!_pinUse.TryGetValue(key, out var use)) _pinUse[key] = use = new int[4];
        int best = 0;
        for (int p = 1; p < 4; p++) if (use[p] < use[best]) best = p;
        use[best]++;
        d.SetPin(best + 1);
        if (Built) RouteIntx(d);
    }

    private void RouteIntx(PciDevice d)
    {
        if (d.InterruptPin == 0 || d.IntxRoute is not null) return;
        PciIntxRoute? route = null;
        foreach (var r in Router.Routes)
            if (r.Bus == d.BusNumber && r.Slot == d.Slot && r.Pin == d.InterruptPin) { route = r; break; }
        route ??= Router.Route(d.BusNumber, d.Slot, d.InterruptPin);
        d.IntxRoute = route;
        int irq = Router.PirqIrq(route.Pirq);
        d.SetConfig8(0x3c, (byte)(irq < 0 ? 0xff : irq));
    }

    internal void AllocateLate(PciDevice d, PciBar bar)
    {
        if (Built) Allocate(d, bar);
    }

    private void Allocate(PciDevice d, PciBar bar)
    {
        ulong addr;
        switch (bar.Kind)
        {
            case PciBarKind.Io:
                addr = Take(ref _ioNext, IoLimit, bar.Size, "I/O");
                break;
            case PciBarKind.Memory64 when bar.Size > Mem64LowThreshold:
                addr = Take(ref _mem64Next, Mem64Limit, bar.Size, "64-bit memory");
                break;
            default:
                addr = Take(ref _mem32Next, Mem32Limit, bar.Size, "32-bit memory");
                break;
        }
        // bhyve turns decode on as it places a BAR; the expansion ROM stays off until the guest enables it.
        ushort cmd = d.Command;
        if (bar.Kind == PciBarKind.Io) cmd |= PciDevice.CommandIo;
        else if (bar.Kind != PciBarKind.Rom) cmd |= PciDevice.CommandMemory;
        d.SetConfig16(0x04, cmd);
        d.AssignBar(bar, addr);
        // Other BARs of the device may have been waiting for the decode bit.
        foreach (var b in d.Bars) if (b is not null && b.Address != 0) d.UpdateDecode(b);
    }

    private static ulong Take(ref ulong next, ulong limit, ulong size, string what)
    {
        ulong a = RoundUp(next, size);
        if (a + size > limit || a + size < a) throw new HostConfigException($"PCI {what} BAR space exhausted (need 0x{size:x} bytes)");
        next = a + size;
        return a;
    }

    // ---- decode -----------------------------------------------------------------------------------------

    internal void MapBar(PciDevice d, PciBar bar, ulong at)
    {
        try
        {
            switch (bar.Kind)
            {
                case PciBarKind.Io:
                    if (at + bar.Size > IoLimit) return;
                    bar.Port ??= new IoBarPort(bar.Handler!);
                    bar.Port.Base = (ushort)at;
                    Ports.Register((ushort)at, (int)bar.Size, bar.Port);
                    break;
                default:
                    if (at + bar.Size < at) return;
                    if (bar.Segment is not null) bar.Mapping = Memory.Map(bar.Segment, 0, at, bar.Size, bar.Prot);
                    else Mmio.Register(at, bar.Size, bar.Handler!, $"pci {d.BusNumber}:{d.Slot}:{d.Function} {d.Emulation} bar{bar.Index}");
                    break;
            }
            bar.Decoding = true;
            bar.DecodedAt = at;
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            // The guest placed the BAR over something else: real hardware would conflict; here it simply does not decode.
        }
    }

    internal void UnmapBar(PciBar bar)
    {
        if (!bar.Decoding) return;
        switch (bar.Kind)
        {
            case PciBarKind.Io:
                Ports.Unregister((ushort)bar.DecodedAt, (int)bar.Size, bar.Port!);
                break;
            default:
                if (bar.Mapping is not null) { Memory.Unmap(bar.Mapping); bar.Mapping = null; }
                else Mmio.Unregister(bar.DecodedAt, bar.Handler!);
                break;
        }
        bar.Decoding = false;
    }

    // ---- configuration access -----------------------------------------------------------------------------

    /// <summary>A configuration read; absent functions read all ones.</summary>
    public uint ConfigRead(int bus, int slot, int func, int offset, int size)
    {
        var d = Find(bus, slot, func);
        if (d is null) return size >= 4 ? 0xffff_ffffu : (1u << (size * 8)) - 1;
        lock (_cfgGate) return d.ReadConfig(offset, size);
    }

    /// <summary>A configuration write; absent functions ignore it.</summary>
    public void ConfigWrite(int bus, int slot, int func, int offset, int size, uint value)
    {
        var d = Find(bus, slot, func);
        if (d is null) return;
        lock (_cfgGate) d.WriteConfig(offset, size, value);
    }

    // ---- reset and state ------------------------------------------------------------------------------------

    /// <summary>Machine reset: every function and the PIRQ registers go back to their built state.</summary>
    public void Reset()
    {
        lock (_cfgGate)
        {
            foreach (var d in _list) d.Reset();
            if (_initialPirq is not null) Router.SetRegisters(_initialPirq);
        }
    }

    /// <summary>
    /// Adds the bus, its router and every function to <paramref name="devices"/> (phase <see cref="DevicePhase.Pci"/>):
    /// the bus resets them all, and each function is saved as its <c>pci-config</c> section plus its own section when
    /// it implements <see cref="IDeviceState"/>, instance "bus:slot.function". Functions added later join on their own.
    /// </summary>
    public void JoinInventory(DeviceInventory devices)
    {
        ArgumentNullException.ThrowIfNull(devices);
        _inventory = devices;
        devices.Add("pci-bus", "0", this, DevicePhase.Pci, Reset);
        devices.Add("pci-intx-router", "0", Router, DevicePhase.Pci);
        foreach (var d in _list) JoinInventory(d);
    }

    private void JoinInventory(PciDevice d)
    {
        if (_inventory is null) return;
        string instance = $"{d.BusNumber}:{d.Slot}.{d.Function}";
        _inventory.Add("pci-config", instance, d, DevicePhase.Pci, state: d.ConfigState);
        if (d is IDeviceState own) _inventory.Add(own.StateName, instance, d, DevicePhase.Pci, state: own);
    }
}
