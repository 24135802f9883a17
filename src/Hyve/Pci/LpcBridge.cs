// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Pci;

/// <summary>
/// The PCI-ISA (LPC) bridge (bhyve's pci_lpc.c): 8086:7000, class 06h/01h, with ICH-style PIRQ routing registers
/// at 0x60-0x63 (PIRQA-D) and 0x68-0x6B (PIRQE-H) backed by the bus's <see cref="PciIntxRouter"/>. Only one may
/// exist and it must be on bus 0. The legacy devices behind it (COM1-COM4, boot ROM, fw_cfg, the POST port) are
/// wired by the machine; the bridge keeps the COM ports' IRQs 3 and 4 out of PIRQ routing.
/// </summary>
public sealed class LpcBridge : PciDevice
{
    /// <summary>Intel vendor ID.</summary>
    public const ushort Vendor = 0x8086;
    /// <summary>Device ID bhyve uses (the PIIX3 ISA bridge's, which firmware also recognises).</summary>
    public const ushort Device = 0x7000;
    /// <summary>The slot bhyve users conventionally give it.</summary>
    public const int DefaultSlot = 31;

    private readonly PciIntxRouter _router;

    /// <summary>Creates the bridge on <paramref name="router"/>.</summary>
    public LpcBridge(PciIntxRouter router) : base(Vendor, Device, 0x06, 0x01)
    {
        _router = router;
        // COM1/COM3 use IRQ 4 and COM2/COM4 IRQ 3; level-triggered PCI links must not share them.
        router.ReserveIrq(3);
        router.ReserveIrq(4);
    }

    /// <summary>Factory for <c>lpc</c>: bus 0 only, one per machine.</summary>
    public static PciDevice Create(PciDeviceContext ctx)
    {
        if (ctx.BusNumber != 0) throw new HostConfigException($"{ctx.Where}: the LPC bridge can only be on bus 0");
        foreach (var d in ctx.Bus.Devices)
            if (d is LpcBridge) throw new HostConfigException($"{ctx.Where}: only one LPC bridge is allowed (one is at {d.BusNumber}:{d.Slot}:{d.Function})");
        return new LpcBridge(ctx.Bus.Router);
    }

    /// <summary>The PIRQ (1-8) a configuration offset addresses, or 0.</summary>
    private static int PirqAt(int offset) => offset switch
    {
        >= 0x60 and <= 0x63 => offset - 0x60 + 1,
        >= 0x68 and <= 0x6b => offset - 0x68 + 5,
        _ => 0,
    };

    /// <inheritdoc/>
    protected override bool OnConfigRead(int offset, int size, out uint value)
    {
        value = 0;
        if (PirqAt(offset) == 0 && PirqAt(offset + size - 1) == 0) return false;
        for (int i = 0; i < size; i++)
        {
            int p = PirqAt(offset + i);
            uint b = p != 0 ? _router.ReadPirq(p) : GetConfig8(offset + i);
            value |= b << (i * 8);
        }
        return true;
    }

    /// <inheritdoc/>
    protected override bool OnConfigWrite(int offset, int size, uint value)
    {
        if (PirqAt(offset) == 0 && PirqAt(offset + size - 1) == 0) return false;
        for (int i = 0; i < size; i++)
        {
            int p = PirqAt(offset + i);
            if (p != 0) _router.WritePirq(p, (byte)(value >> (i * 8)));
        }
        return true;
    }
}
