// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Pci;

/// <summary>
/// How bhyve's legacy <c>-s</c> parser reads a device's conf string (pci_parse_legacy_config and the devices' own
/// legacy_config hooks): every device takes comma-separated <c>key=value</c> pairs and bare words meaning
/// <c>word=true</c>, except for a leading bare word, which these kinds give a name.
/// </summary>
public enum PciConfSyntax
{
    /// <summary>Pairs only.</summary>
    Generic,
    /// <summary>A leading word is the <c>path</c>: a disk's (virtio-blk, nvme, ahci-hd) or virtio-input's device.</summary>
    Block,
    /// <summary>A leading word is the network <c>backend</c> (virtio-net, e1000).</summary>
    Net,
    /// <summary>Each <c>NAME=PATH</c> opens the next <c>port.N.name</c>/<c>port.N.path</c> (virtio-console).</summary>
    Console,
}

/// <summary>
/// One PCI device type (bhyve's <c>struct pci_devemu</c>): the emulation name <c>-s</c> takes, how its legacy conf
/// string is read, and the factory that builds a function from its config keys. A null factory marks a bhyve device
/// type hyve does not implement: <c>-s</c> refuses it by name instead of accepting it silently.
/// </summary>
public sealed record PciDeviceType(string Name, PciConfSyntax Syntax, PciDeviceFactory? Factory)
{
    /// <summary>True when hyve can build this type.</summary>
    public bool Implemented => Factory is not null;

    /// <summary>The one-line refusal for a type hyve does not implement (the caller prefixes where it was asked for).</summary>
    public string NotImplementedReason => $"hyve does not implement {Name}";
}

/// <summary>Every PCI device type hyve knows: the ones it builds and bhyve's others, which it refuses by name.</summary>
public static class PciDeviceTypes
{
    /// <summary>The table, one entry per device type (bhyve's pci_devemu linker set).</summary>
    public static IReadOnlyList<PciDeviceType> All { get; } =
    [
        new("hostbridge", PciConfSyntax.Generic, HostBridge.Create),
        new("amd_hostbridge", PciConfSyntax.Generic, HostBridge.CreateAmd),
        new("lpc", PciConfSyntax.Generic, LpcBridge.Create),
        new("piix4-pm", PciConfSyntax.Generic, Piix4Pm.Create), // hyve's: PIIX4 PM function for firmware built for QEMU's i440FX
        new("virtio-blk", PciConfSyntax.Block, Hyve.Virtio.VirtioBlock.Create),
        new("virtio-console", PciConfSyntax.Console, Hyve.Virtio.VirtioConsole.Create),
        new("virtio-net", PciConfSyntax.Net, Hyve.Virtio.VirtioNet.Create),
        new("virtio-rnd", PciConfSyntax.Generic, Hyve.Virtio.VirtioRng.Create),
        new("virtio-input", PciConfSyntax.Block, Hyve.Virtio.VirtioInput.Create), // bhyve's takes an evdev path; hyve's is "tablet"
        new("fbuf", PciConfSyntax.Generic, Hyve.Display.StdVga.Create), // QEMU's standard VGA served over VNC
        // bhyve's device types that hyve does not build (yet): named so that -s says so rather than "unknown device".
        new("ahci", PciConfSyntax.Generic, null),
        new("ahci-cd", PciConfSyntax.Block, null),
        new("ahci-hd", PciConfSyntax.Block, null),
        new("e1000", PciConfSyntax.Net, null),

        new("hda", PciConfSyntax.Generic, null),
        new("nvme", PciConfSyntax.Block, null),
        new("passthru", PciConfSyntax.Generic, null),
        new("uart", PciConfSyntax.Generic, null),
        new("virtio-9p", PciConfSyntax.Generic, null),
        new("virtio-scsi", PciConfSyntax.Generic, null),
        new("xhci", PciConfSyntax.Generic, null),
    ];

    /// <summary>The type named <paramref name="name"/>, or null when bhyve has no such device.</summary>
    public static PciDeviceType? Find(string name)
    {
        foreach (var t in All) if (t.Name == name) return t;
        return null;
    }
}
