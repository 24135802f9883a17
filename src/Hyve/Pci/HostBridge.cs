// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Pci;

/// <summary>
/// The host bridge (bhyve's pci_hostbridge.c): class 06h/00h with a PCI Express root-port capability and nothing
/// else. <c>hostbridge</c> is bhyve's own 1275:1275, <c>amd_hostbridge</c> AMD's 1022:7432; conf keys
/// <c>vendor</c> and <c>devid</c> override the IDs (for example 8086:1237 to look like an i440FX to firmware).
/// </summary>
public sealed class HostBridge : PciDevice
{
    /// <summary>bhyve's host bridge vendor and device ID.</summary>
    public const ushort BhyveId = 0x1275;
    /// <summary>AMD vendor ID.</summary>
    public const ushort AmdVendor = 0x1022;
    /// <summary>AMD host bridge device ID bhyve uses.</summary>
    public const ushort AmdDevice = 0x7432;

    /// <summary>Creates a host bridge with the given IDs.</summary>
    public HostBridge(ushort vendor, ushort device) : base(vendor, device, 0x06, 0x00)
    {
        AddPcieCapability(4);
    }

    /// <summary>Factory for <c>hostbridge</c>.</summary>
    public static PciDevice Create(PciDeviceContext ctx) =>
        new HostBridge(ctx.GetU16("vendor", BhyveId), ctx.GetU16("devid", BhyveId));

    /// <summary>Factory for <c>amd_hostbridge</c>.</summary>
    public static PciDevice CreateAmd(PciDeviceContext ctx) =>
        new HostBridge(ctx.GetU16("vendor", AmdVendor), ctx.GetU16("devid", AmdDevice));
}
