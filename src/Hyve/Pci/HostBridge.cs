// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Pci;

/// <summary>
/// The host bridge (bhyve's pci_hostbridge.c): class 06h/00h with a PCI Express root-port capability and nothing
/// else. <c>hostbridge</c> is bhyve's own 1275:1275, <c>amd_hostbridge</c> AMD's 1022:7432; conf keys
/// <c>vendor</c> and <c>devid</c> override the IDs, <c>subvendor</c>/<c>subdevid</c> set the subsystem IDs.
/// SeaBIOS treats any north bridge as "QEMU" (it only names i440FX 8086:1237 or Q35 8086:29C0 when the subsystem is
/// 1AF4:1100); with an unknown bridge it cannot program PAM registers, so the machine must provide RAM at
/// 0xE0000-0xFFFFF holding the top 128 KiB of the ROM (as bhyve does), which SeaBIOS then uses as its shadow.
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
    public HostBridge(ushort vendor, ushort device, ushort subVendor = 0, ushort subDevice = 0) : base(vendor, device, 0x06, 0x00)
    {
        SetSubsystem(subVendor, subDevice);
        AddPcieCapability(4);
    }

    /// <summary>Factory for <c>hostbridge</c>.</summary>
    public static PciDevice Create(PciDeviceContext ctx) =>
        new HostBridge(ctx.GetU16("vendor", BhyveId), ctx.GetU16("devid", BhyveId), ctx.GetU16("subvendor", 0), ctx.GetU16("subdevid", 0));

    /// <summary>Factory for <c>amd_hostbridge</c>.</summary>
    public static PciDevice CreateAmd(PciDeviceContext ctx) =>
        new HostBridge(ctx.GetU16("vendor", AmdVendor), ctx.GetU16("devid", AmdDevice), ctx.GetU16("subvendor", 0), ctx.GetU16("subdevid", 0));
}
