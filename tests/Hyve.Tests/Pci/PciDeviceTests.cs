// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Pci;
using Xunit;

namespace Hyve.Tests.Pci;

public class PciDeviceTests
{
    private static PciSlotConfig Slot(int bus, int slot, int func, string name, params (string, string)[] conf) =>
        new(bus, slot, func, name, conf.ToDictionary(c => c.Item1, c => c.Item2));

    [Fact]
    public void BuildsDevicesFromSlotConfiguration()
    {
        using var rig = new PciTestRig();
        rig.Bus.AddFromConfig([Slot(0, 0, 0, "hostbridge"), Slot(0, 31, 0, "lpc"), Slot(0, 1, 0, "amd_hostbridge")],
            PciDeviceRegistry.CreateDefault());
        rig.Bus.Build();
        Assert.Equal(0x1275_1275u, rig.Cf8Read(0, 0, 0, 0, 4));
        Assert.Equal(0x7000_8086u, rig.Cf8Read(0, 31, 0, 0, 4));
        Assert.Equal(0x0601u, rig.Cf8Read(0, 31, 0, 0x0a, 2));
        Assert.Equal(0x7432_1022u, rig.Cf8Read(0, 1, 0, 0, 4));
        Assert.Equal("lpc", rig.Bus.Find(0, 31, 0)!.Emulation);
    }

    [Fact]
    public void HostBridgeIdsCanBeOverridden()
    {
        using var rig = new PciTestRig();
        rig.Bus.AddFromConfig([Slot(0, 0, 0, "hostbridge", ("vendor", "0x8086"), ("devid", "4663"), ("subvendor", "0x1af4"), ("subdevid", "0x1100"))],
            PciDeviceRegistry.CreateDefault());
        rig.Bus.Build();
        Assert.Equal(0x1237_8086u, rig.Cf8Read(0, 0, 0, 0, 4));
        Assert.Equal(0x1100_1af4u, rig.Cf8Read(0, 0, 0, 0x2c, 4));
        Assert.Equal(0x0600u, rig.Cf8Read(0, 0, 0, 0x0a, 2));
    }

    [Theory]
    [InlineData("vendor", "0x10000")]
    [InlineData("devid", "banana")]
    public void BadIdOverrideIsAHostError(string key, string value)
    {
        using var rig = new PciTestRig();
        var e = Assert.Throws<HostConfigException>(() =>
            rig.Bus.AddFromConfig([Slot(0, 0, 0, "hostbridge", (key, value))], PciDeviceRegistry.CreateDefault()));
        Assert.Contains(key, e.Message);
    }

    [Fact]
    public void UnknownEmulationIsAHostError()
    {
        using var rig = new PciTestRig();
        var e = Assert.Throws<HostConfigException>(() =>
            rig.Bus.AddFromConfig([Slot(0, 4, 0, "frobnicator")], PciDeviceRegistry.CreateDefault()));
        Assert.Contains("frobnicator", e.Message);
    }

    [Fact]
    public void UnimplementedBhyveTypeFromConfigKeysIsAHostErrorNamingIt()
    {
        using var rig = new PciTestRig();
        var e = Assert.Throws<HostConfigException>(() =>
            rig.Bus.AddFromConfig([Slot(0, 4, 0, "nvme")], PciDeviceRegistry.CreateDefault()));
        Assert.Equal("pci.0.4.0: hyve does not implement nvme", e.Message);
    }

    [Fact]
    public void EveryDeviceTypeIsNamedOnce()
    {
        var names = PciDeviceTypes.All.Select(t => t.Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.True(PciDeviceRegistry.CreateDefault().Contains("hostbridge"));
        Assert.False(PciDeviceRegistry.CreateDefault().Contains("nvme"));
    }

    [Fact]
    public void LpcOnlyOnceAndOnlyOnBusZero()
    {
        using var rig = new PciTestRig();
        var reg = PciDeviceRegistry.CreateDefault();
        Assert.Throws<HostConfigException>(() => rig.Bus.AddFromConfig([Slot(1, 31, 0, "lpc")], reg));
        rig.Bus.AddFromConfig([Slot(0, 31, 0, "lpc")], reg);
        Assert.Throws<HostConfigException>(() => rig.Bus.AddFromConfig([Slot(0, 30, 0, "lpc")], reg));
    }

    [Fact]
    public void TakenOrOutOfRangeSlotsAreHostErrors()
    {
        using var rig = new PciTestRig();
        var reg = PciDeviceRegistry.CreateDefault();
        rig.Bus.AddFromConfig([Slot(0, 0, 0, "hostbridge")], reg);
        Assert.Throws<HostConfigException>(() => rig.Bus.AddFromConfig([Slot(0, 0, 0, "hostbridge")], reg));
        Assert.Throws<HostConfigException>(() => rig.Bus.AddFromConfig([Slot(0, 32, 0, "hostbridge")], reg));
        Assert.Throws<HostConfigException>(() => rig.Bus.AddFromConfig([Slot(0, 1, 8, "hostbridge")], reg));
    }

    [Fact]
    public void RegistryTakesNewEmulations()
    {
        using var rig = new PciTestRig();
        var reg = PciDeviceRegistry.CreateDefault();
        reg.Register("test", ctx => new TestFunction(ctx.GetU16("devid", 0x1005)));
        rig.Bus.AddFromConfig([Slot(0, 5, 0, "test", ("devid", "0x1009"))], reg);
        rig.Bus.Build();
        Assert.Equal(0x1009_1af4u, rig.Cf8Read(0, 5, 0, 0, 4));
    }

    [Fact]
    public void RouterAndFunctionStateSurviveSaveAndRestore()
    {
        using var rig = new PciTestRig();
        var lpc = new LpcBridge(rig.Bus.Router);
        rig.Bus.Add(lpc, 0, 31, 0);
        var f = new TestFunction();
        f.RequestIntx();
        rig.Bus.Add(f, 0, 3, 0);
        rig.Bus.Build();
        rig.Cf8Write(0, 31, 0, 0x60, 4, 0x0e0b_0a09);
        rig.Cf8Write(0, 3, 0, 0x3c, 1, 0x0e);
        var inventory = new DeviceInventory();
        rig.Bus.JoinInventory(inventory);
        var saved = inventory.Save();
        rig.Bus.Reset();
        Assert.NotEqual(0x0e0b_0a09u, rig.Cf8Read(0, 31, 0, 0x60, 4));
        inventory.Restore(saved);
        Assert.Equal(0x0e0b_0a09u, rig.Cf8Read(0, 31, 0, 0x60, 4));
        Assert.Equal(0x0eu, rig.Cf8Read(0, 3, 0, 0x3c, 1));
    }

    [Fact]
    public void HostBridgeCarriesAPcieRootPortCapability()
    {
        using var rig = new PciTestRig();
        rig.Bus.Add(new HostBridge(HostBridge.BhyveId, HostBridge.BhyveId), 0, 0, 0);
        rig.Bus.Build();
        uint cap = rig.Cf8Read(0, 0, 0, 0x34, 1);
        Assert.Equal(0x10u, rig.Cf8Read(0, 0, 0, (int)cap, 1));
        Assert.Equal(4u, (rig.Cf8Read(0, 0, 0, (int)cap + 2, 2) >> 4) & 0xf);
    }
}
