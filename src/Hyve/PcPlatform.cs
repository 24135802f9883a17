// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Acpi;
using Hyve.Boot;
using Hyve.Config;
using Hyve.Devices;
using Hyve.Pci;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vmm.State;

namespace Hyve;

/// <summary>
/// The PC around the VMM's own devices: the PCI bus with its -s devices, the ACPI PM block, the POST port,
/// QEMU's fw_cfg with the E820 map and ACPI tables for firmware, and the description the ACPI and MP tables
/// are written from. Built once; its devices join the VM's inventory, which resets and saves them.
/// </summary>
public sealed class PcPlatform
{
    private readonly Vm _vm;
    private readonly ConfigTree _config;

    private PcPlatform(Vm vm, ConfigTree config, PciBus pci, AcpiPm pm)
    {
        _vm = vm;
        _config = config;
        Pci = pci;
        Pm = pm;
    }

    /// <summary>The PCI bus.</summary>
    public PciBus Pci { get; }

    /// <summary>The ACPI PM1 event and control blocks (power button, S5).</summary>
    public AcpiPm Pm { get; }

    /// <summary>QEMU's fw_cfg, when -l fwcfg,qemu asked for it.</summary>
    public FwCfg? FwCfg { get; private set; }

    /// <summary>What the ACPI and MP tables describe.</summary>
    public PlatformDescription Description { get; private set; } = null!;

    /// <summary>Builds the platform for <paramref name="vm"/> from the config tree. <paramref name="firmware"/>: a boot ROM
    /// runs (PCI INTx then takes bhyve's fixed PIRQ mapping, as bhyve does for its boot ROM).</summary>
    public static PcPlatform Build(Vm vm, ConfigTree config, bool firmware)
    {
        var pci = PciBus.Create(vm);
        var irq = vm.Irq;
        pci.Router.LevelTriggered = line => irq.SetIsaTriggerMode(line, true);
        pci.Router.FixedMapping = firmware;
        var pm = new AcpiPm(irq, () => vm.Suspend(SuspendHow.PowerOff));
        pci.Router.ReserveIrq(pm.SciIrq);
        irq.SetIsaTriggerMode(pm.SciIrq, true); // the SCI is level-triggered (FADT, MADT override)
        pm.Register(vm.Ports);
        var post = new PostPort();
        post.Register(vm.Ports);
        vm.Devices.Add("acpi-pm", "0", pm, DevicePhase.Platform, pm.Reset);
        vm.Devices.Add("post-port", "0", post, DevicePhase.Platform);

        var p = new PcPlatform(vm, config, pci, pm);
        var slots = SlotsFromConfig(config);
        pci.AddFromConfig(slots, PciDeviceRegistry.CreateDefault(), config, vm.Name);
        pci.Build();
        pci.JoinInventory(vm.Devices);
        p.Describe(slots);
        p.Smbios = p.BuildSmbios();
        if (config.Get("lpc.fwcfg") == "qemu") p.AddFwCfg();
        return p;
    }

    /// <summary>Writes the MP table (unless x86.mptable=false) and the ACPI tables into the BIOS area, as bhyve does for
    /// a guest started without firmware; returns the RSDP address.</summary>
    public ulong InstallBiosTables() => BiosTables.Install(_vm.Memory, Description, Smbios).RsdpAddress;

    /// <summary>The SMBIOS tables (system UUID from -U).</summary>
    public SmbiosImage Smbios { get; private set; } = null!;

    // bhyve's smbiostbl.c: the UUID is -U's, or one derived from the host and VM names so it stays the same from run
    // to run. bhyve hashes the names with MD5; here two FNV-1a passes make the 128 bits (MD5 would load OpenSSL into
    // every hyve), marked as an RFC 9562 version 8 (vendor-defined) UUID.
    private SmbiosImage BuildSmbios()
    {
        string? text = _config.Get("uuid");
        Guid uuid;
        if (text is not null)
        {
            if (!Guid.TryParse(text, out uuid)) throw new HostConfigException($"-U {text}: not a UUID");
        }
        else
        {
            var hash = NameHash(Environment.MachineName + "/" + _vm.Name);
            hash[6] = (byte)((hash[6] & 0x0F) | 0x80);
            hash[8] = (byte)((hash[8] & 0x3F) | 0x80);
            uuid = new Guid(hash, bigEndian: true);
        }
        var t = _vm.Topology;
        return SmbiosTables.Build(new SmbiosDescription(uuid, t.Sockets, t.Cores, t.Threads, _vm.Memory.LowMemSize, _vm.Memory.HighMemSize,
            HostCpuVendor()));
    }

    private static byte[] NameHash(string name)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(name);
        var hash = new byte[16];
        for (int half = 0; half < 2; half++)
        {
            ulong h = 0xcbf29ce484222325ul ^ (ulong)half;
            foreach (byte b in bytes) h = (h ^ b) * 0x100000001b3ul;
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(hash.AsSpan(half * 8), h);
        }
        return hash;
    }

    private static string HostCpuVendor()
    {
        if (!System.Runtime.Intrinsics.X86.X86Base.IsSupported) return SmbiosTables.Vendor;
        var (_, b, c, d) = System.Runtime.Intrinsics.X86.X86Base.CpuId(0, 0);
        Span<byte> v = stackalloc byte[12];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(v, b);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(v[4..], d);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(v[8..], c);
        return System.Text.Encoding.ASCII.GetString(v);
    }

    /// <summary>The memory map given to firmware and kernels.</summary>
    public E820Map MemoryMap()
    {
        var map = E820Map.FromMemory(_vm.Memory);
        map.AddReserved(Pci.EcamBase, PciBus.EcamSize);
        return map;
    }

    private void Describe(IReadOnlyList<PciSlotConfig> slots)
    {
        var t = _vm.Topology;
        var apicIds = new uint[t.Cpus];
        for (int i = 0; i < apicIds.Length; i++) apicIds[i] = t.ApicId(i);
        var routes = new List<IntxRoute>();
        foreach (var r in Pci.Router.Routes) routes.Add(new IntxRoute(r.Bus, r.Slot, r.Pin, r.IoapicPin, r.Pirq));
        var coms = new List<LegacyComPort>();
        var table = Uart16550.ComPorts;
        for (int i = 0; i < table.Count; i++)
            if (_config.Get($"lpc.{table[i].Name}.path") is not null) coms.Add(new LegacyComPort(i + 1, table[i].Base, (byte)table[i].Irq));
        PciSlotConfig? lpc = null;
        foreach (var s in slots) if (s.Emulation == "lpc") lpc = s;
        Description = PlatformDescription.ForCpus(t.Cpus) with
        {
            ApicIds = apicIds,
            IoApicPins = _vm.Ioapic.PinCount,
            EcamBase = Pci.EcamBase,
            PciMmio32Window = new AddressWindow(Pci.Mem32Base, Pci.Mem32Limit - 1),
            PciMmio64Window = new AddressWindow(Pci.Mem64Base, Pci.Mem64Limit - 1),
            IntxRoutes = routes,
            HasLpc = lpc is not null,
            LpcSlot = lpc?.Slot ?? 31,
            LpcFunction = lpc?.Function ?? 0,
            ComPorts = coms,
        };
    }

    private void AddFwCfg()
    {
        var fw = new FwCfg(_vm.Memory);
        fw.Register(_vm.Ports);
        fw.SetRamSize(_vm.Memory.Size);
        fw.SetCpus(_vm.Topology.Cpus, _vm.Topology.MaxCpus);
        var e820 = new List<FwCfgE820Entry>();
        foreach (var e in MemoryMap().Entries) e820.Add(new FwCfgE820Entry(e.Base, e.Length, (uint)e.Type));
        fw.AddFile(FwCfgItems.E820File, FwCfgItems.E820(e820));
        // COM1 is the console when it has a backend and there is no display: SeaBIOS then writes to it.
        FwCfgItems.AddSerialConsole(fw, _config.Get("lpc.com1.path") is not null, hasDisplay: false);
        var acpi = AcpiLayout.ForFwCfg(AcpiTables.Build(Description));
        fw.AddFile(AcpiLayout.TablesFile, acpi.Tables);
        fw.AddFile(AcpiLayout.RsdpFile, acpi.Rsdp);
        fw.AddFile(AcpiLayout.LoaderFile, acpi.TableLoader);
        // QEMU's SMBIOS files: the firmware (SeaBIOS, OVMF) copies the structures and fixes the entry point's address.
        fw.AddFile(SmbiosTables.AnchorFile, Smbios.EntryPoint);
        fw.AddFile(SmbiosTables.TablesFile, Smbios.Table);
        foreach (var n in _config.ChildNames("fwcfg.user"))
        {
            string? name = _config.Get($"fwcfg.user.{n}.name");
            if (name is null) continue;
            string? text = _config.Get($"fwcfg.user.{n}.string");
            string? file = _config.Get($"fwcfg.user.{n}.file");
            fw.AddUserItem(text is not null ? $"{name},string={text}" : $"{name},file={file}");
        }
        FwCfg = fw;
        _vm.Devices.Add("fw-cfg", "0", fw, DevicePhase.Platform, fw.Reset);
    }

    private static List<PciSlotConfig> SlotsFromConfig(ConfigTree config)
    {
        var slots = new List<PciSlotConfig>();
        foreach (var b in config.ChildNames("pci"))
            foreach (var s in config.ChildNames($"pci.{b}"))
                foreach (var f in config.ChildNames($"pci.{b}.{s}"))
                {
                    string node = $"pci.{b}.{s}.{f}";
                    string? device = config.Get($"{node}.device");
                    if (device is null) continue;
                    var conf = new Dictionary<string, string>();
                    foreach (var key in config.ChildNames(node))
                        if (key != "device" && config.Get($"{node}.{key}") is string v) conf[key] = v;
                    slots.Add(new PciSlotConfig(int.Parse(b), int.Parse(s), int.Parse(f), device, conf));
                }
        return slots;
    }
}
