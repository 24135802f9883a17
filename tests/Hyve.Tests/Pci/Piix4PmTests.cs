// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Acpi;
using Hyve.Pci;
using Hyve.Vmm;
using Hyve.Vmm.State;
using Xunit;

namespace Hyve.Tests.Pci;

/// <summary>The PIIX4 power-management function (datasheet 290562, function 3): PMBA/PMIOSE place an alias of the PM registers.</summary>
public class Piix4PmTests
{
    private sealed class Register(uint value) : IPortDevice
    {
        public readonly List<(ushort Port, int Size, uint Value)> Writes = new();
        public uint PortRead(ushort port, int size) => value >> (8 * (port & 3));
        public void PortWrite(ushort port, int size, uint v) => Writes.Add((port, size, v));
    }

    private static (PciTestRig Rig, Register Event, Register Control, Register Timer) Rig()
    {
        var rig = new PciTestRig();
        var ev = new Register(0x0100_0021);
        var ctl = new Register(0x0001);
        var tmr = new Register(0x00ab_cdef);
        rig.Ports.Register(AcpiPorts.Pm1aEvent, 4, ev);
        rig.Ports.Register(AcpiPorts.Pm1aControl, 2, ctl);
        rig.Ports.Register(AcpiPorts.PmTimer, 4, tmr);
        rig.Bus.AddFromConfig([new PciSlotConfig(0, 0, 0, "hostbridge", new Dictionary<string, string> { ["vendor"] = "0x8086", ["devid"] = "0x1237" }),
            new PciSlotConfig(0, 1, 3, "piix4-pm", new Dictionary<string, string>())], PciDeviceRegistry.CreateDefault());
        rig.Bus.Build();
        return (rig, ev, ctl, tmr);
    }

    [Fact]
    public void Identifies_as_the_82371AB_power_management_function_with_pmba_reading_io_space()
    {
        var (rig, _, _, _) = Rig();
        using var _r = rig;
        Assert.Equal(0x7113_8086u, rig.Cf8Read(0, 1, 3, 0, 4));
        Assert.Equal(0x0680u, rig.Cf8Read(0, 1, 3, 0x0a, 2));
        Assert.Equal(1u, rig.Cf8Read(0, 1, 3, Piix4Pm.PmbaOffset, 4)); // RTE: I/O space
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmbaOffset, 4, 0xffff_ffff);
        Assert.Equal(0xffc1u, rig.Cf8Read(0, 1, 3, Piix4Pm.PmbaOffset, 4)); // 64-byte block below 64 KiB
        Assert.Equal(0x1237_8086u, rig.Cf8Read(0, 0, 0, 0, 4));
    }

    [Fact]
    public void With_pmiose_set_the_block_at_pmba_aliases_pm1_and_the_pm_timer()
    {
        var (rig, ev, ctl, _) = Rig();
        using var _r = rig;
        // What OVMF's PlatformPei does on i440FX: PMBA = 0xB000, PCICMD.IOSE, PMREGMISC.PMIOSE.
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmbaOffset, 4, 0xb000);
        Assert.Equal(0xffffffffu, rig.Ports.Read(0xb008, 4)); // not decoded before PMIOSE
        rig.Cf8Write(0, 1, 3, 0x04, 1, 1);
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmRegMiscOffset, 1, 1);
        Assert.Equal(0xb000, ((Piix4Pm)rig.Bus.Find(0, 1, 3)!).DecodedBase);
        Assert.Equal(0x00ab_cdefu, rig.Ports.Read(0xb008, 4));
        Assert.Equal(0x0021u, rig.Ports.Read(0xb000, 2));
        Assert.Equal(0x0001u, rig.Ports.Read(0xb004, 2));
        Assert.Equal(0u, rig.Ports.Read(0xb00c, 4)); // GPSTS and the rest: nothing modelled
        rig.Ports.Write(0xb004, 2, 0x3400);
        Assert.Equal((AcpiPorts.Pm1aControl, 2, 0x3400u), ctl.Writes[^1]);
        rig.Ports.Write(0xb000, 2, 0x0100);
        Assert.Equal((AcpiPorts.Pm1aEvent, 2, 0x0100u), ev.Writes[^1]);

        // Moving the block releases the old ports; clearing PMIOSE releases all.
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmbaOffset, 4, 0x600);
        Assert.Equal(0xffffffffu, rig.Ports.Read(0xb008, 4));
        Assert.Equal(0x00ab_cdefu, rig.Ports.Read(0x608, 4));
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmRegMiscOffset, 1, 0);
        Assert.Equal(0xffffffffu, rig.Ports.Read(0x608, 4));
        Assert.Equal(-1, ((Piix4Pm)rig.Bus.Find(0, 1, 3)!).DecodedBase);
    }

    [Fact]
    public void A_block_placed_over_claimed_ports_does_not_take_them_and_reset_disables_it()
    {
        var (rig, _, _, tmr) = Rig();
        using var _r = rig;
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmbaOffset, 4, AcpiPorts.Pm1aEvent); // on top of the fixed registers
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmRegMiscOffset, 1, 1);
        Assert.Equal(-1, ((Piix4Pm)rig.Bus.Find(0, 1, 3)!).DecodedBase);
        Assert.Same(tmr, rig.Ports.Find(AcpiPorts.PmTimer));

        rig.Cf8Write(0, 1, 3, Piix4Pm.PmbaOffset, 4, 0xb000);
        Assert.Equal(0xb000, ((Piix4Pm)rig.Bus.Find(0, 1, 3)!).DecodedBase);
        rig.Bus.Reset();
        Assert.Equal(-1, ((Piix4Pm)rig.Bus.Find(0, 1, 3)!).DecodedBase);
        Assert.Equal(0xffffffffu, rig.Ports.Read(0xb008, 4));
        Assert.Equal(1u, rig.Cf8Read(0, 1, 3, Piix4Pm.PmbaOffset, 4));
    }

    [Fact]
    public void A_restore_into_a_fresh_machine_claims_the_block_where_the_saved_pmba_points()
    {
        var (rig, _, _, _) = Rig();
        using var _r = rig;
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmbaOffset, 4, 0xb000);
        rig.Cf8Write(0, 1, 3, Piix4Pm.PmRegMiscOffset, 1, 1);
        var inventory = new DeviceInventory();
        rig.Bus.JoinInventory(inventory);
        var saved = inventory.Save();

        // The function's own hook (OnRestored) runs after its configuration space is loaded: the block is claimed.
        var (fresh, _, _, _) = Rig();
        using var _f = fresh;
        var inventory2 = new DeviceInventory();
        fresh.Bus.JoinInventory(inventory2);
        Assert.Equal(0xffffffffu, fresh.Ports.Read(0xb008, 4));
        inventory2.Restore(saved);
        Assert.Equal(0xb000, ((Piix4Pm)fresh.Bus.Find(0, 1, 3)!).DecodedBase);
        Assert.Equal(0x00ab_cdefu, fresh.Ports.Read(0xb008, 4));
    }
}
