// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Acpi;
using Hyve.Vmm;

namespace Hyve.Pci;

/// <summary>
/// The power-management function of Intel's PIIX4 (82371AB function 3, 8086:7113, class 06h/80h), as QEMU's i440FX
/// machine has it at 0:1.3. Firmware built for that machine (Debian's OVMF) finds its ACPI PM timer through it:
/// it writes the PM I/O base to PMBA (0x40, a 64-byte block: bits 15:6, bit 0 reads 1 for I/O space) and sets
/// PMIOSE (bit 0 of PMREGMISC, 0x80), then reads the timer at PMBA+8. While enabled, the block aliases the
/// platform's fixed ACPI registers (PIIX4 datasheet 290562, PM I/O map): PM1 status/enable at +0, PM1 control at +4
/// and the PM timer at +8; its other registers read 0 and ignore writes. Use with a host bridge that says i440FX:
/// <c>-s 0,hostbridge,vendor=0x8086,devid=0x1237 -s 1:3,piix4-pm</c>.
/// </summary>
public sealed class Piix4Pm : PciDevice, IPortDevice
{
    /// <summary>Intel vendor ID.</summary>
    public const ushort Vendor = 0x8086;
    /// <summary>The 82371AB power-management function's device ID.</summary>
    public const ushort Device = 0x7113;
    /// <summary>PMBA: PM I/O base address register.</summary>
    public const int PmbaOffset = 0x40;
    /// <summary>PMREGMISC: bit 0 (PMIOSE) enables the PM I/O block.</summary>
    public const int PmRegMiscOffset = 0x80;
    /// <summary>Size of the PM I/O block.</summary>
    public const int BlockSize = 64;

    private readonly PortBus _ports;
    private readonly ushort _event, _control, _timer;
    private int _mapped = -1; // the base the block is claimed at, or -1

    /// <summary>Creates the function; its block forwards to the fixed registers at <paramref name="pm1aEvent"/>,
    /// <paramref name="pm1aControl"/> and <paramref name="pmTimer"/> on <paramref name="ports"/>.</summary>
    public Piix4Pm(PortBus ports, ushort pm1aEvent = AcpiPorts.Pm1aEvent, ushort pm1aControl = AcpiPorts.Pm1aControl,
        ushort pmTimer = AcpiPorts.PmTimer) : base(Vendor, Device, 0x06, 0x80, 0, 3)
    {
        _ports = ports;
        _event = pm1aEvent;
        _control = pm1aControl;
        _timer = pmTimer;
        SetConfig32(PmbaOffset, 1);
        SetWritable(PmbaOffset, 1, 0xc0);
        SetWritable(PmbaOffset + 1, 1, 0xff);
        SetWritable(PmRegMiscOffset, 1, 0x01);
    }

    /// <summary>Factory for <c>piix4-pm</c>.</summary>
    public static PciDevice Create(PciDeviceContext ctx) => new Piix4Pm(ctx.Bus.Ports);

    /// <summary>The I/O base the block decodes at, or -1 while PMIOSE is clear.</summary>
    public int DecodedBase => _mapped;

    /// <inheritdoc/>
    protected override void AfterConfigWrite(int offset, int size, uint value)
    {
        if (offset <= PmRegMiscOffset && offset + size > PmbaOffset) Remap();
    }

    /// <inheritdoc/>
    protected override void OnReset() => Remap();

    /// <inheritdoc/>
    protected override void OnRestored() => Remap();

    // Claims the block where PMBA points while PMIOSE is set; ports something else already owns stay with it
    // (a guest placing the block over another device must not take that device's ports away).
    private void Remap()
    {
        int want = (GetConfig8(PmRegMiscOffset) & 1) != 0 ? (int)(GetConfig32(PmbaOffset) & 0xffc0) : -1;
        if (want == 0) want = -1;
        if (want == _mapped) return;
        if (_mapped >= 0) _ports.Unregister((ushort)_mapped, BlockSize, this);
        _mapped = -1;
        if (want < 0) return;
        for (int p = want; p < want + BlockSize; p++)
            if (_ports.Find((ushort)p) is not null) return;
        _ports.Register((ushort)want, BlockSize, this);
        _mapped = want;
    }

    // Maps a port of the block to the fixed register it aliases, or -1.
    private int Target(ushort port)
    {
        int m = _mapped;
        if (m < 0) return -1;
        int off = port - m;
        return off switch
        {
            >= 0 and < 4 => _event + off,
            4 or 5 => _control + off - 4,
            >= 8 and < 12 => _timer + off - 8,
            _ => -1,
        };
    }

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        int t = Target(port);
        return t < 0 ? 0 : _ports.Read((ushort)t, size);
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        int t = Target(port);
        if (t >= 0) _ports.Write((ushort)t, size, value);
    }
}
