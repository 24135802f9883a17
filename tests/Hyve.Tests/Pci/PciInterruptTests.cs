// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Pci;
using Xunit;

namespace Hyve.Tests.Pci;

public class PciInterruptTests
{
    private static (PciTestRig Rig, TestFunction F) IntxRig(bool withLpc = true)
    {
        var rig = new PciTestRig();
        if (withLpc) rig.Bus.Add(new LpcBridge(rig.Bus.Router), 0, 31, 0);
        var f = new TestFunction();
        f.RequestIntx();
        f.AddMsi(1);
        rig.Bus.Add(f, 0, 3, 0);
        rig.Bus.Build();
        return (rig, f);
    }

    [Fact]
    public void FunctionsOfASlotAreSpreadOverInta2Intd()
    {
        using var rig = new PciTestRig();
        var fs = new TestFunction[5];
        for (int i = 0; i < 5; i++)
        {
            fs[i] = new TestFunction();
            fs[i].RequestIntx();
            rig.Bus.Add(fs[i], 0, 4, i);
        }
        rig.Bus.Build();
        Assert.Equal(new[] { 1, 2, 3, 4, 1 }, fs.Select(f => (int)rig.Cf8Read(0, 4, f.Function, 0x3d, 1)));
        // Functions 0 and 4 share INTA and so its route.
        Assert.Same(fs[0].IntxRoute, fs[4].IntxRoute);
        var routes = rig.Bus.Router.Routes;
        Assert.Equal(4, routes.Count);
        Assert.All(routes, r => Assert.InRange(r.IoapicPin, 16, 31));
        Assert.All(routes, r => Assert.InRange(r.Pirq, 1, 8));
        Assert.Equal(4, routes.Select(r => r.IoapicPin).Distinct().Count());
    }

    [Fact]
    public void InterruptLineIsThePirqsIsaIrq()
    {
        var (rig, f) = IntxRig();
        using var _ = rig;
        var route = f.IntxRoute!;
        int irq = rig.Bus.Router.PirqIrq(route.Pirq);
        Assert.True(PciIntxRouter.IsPermitted(irq));
        Assert.NotEqual(3, irq); // the LPC keeps the COM IRQs 3 and 4 for itself
        Assert.NotEqual(4, irq);
        Assert.Equal((uint)irq, rig.Cf8Read(0, 3, 0, 0x3c, 1));
        Assert.Equal(1u, rig.Cf8Read(0, 3, 0, 0x3d, 1));
        // The LPC's PIRQ register for that link shows the same IRQ, enabled.
        int reg = route.Pirq <= 4 ? 0x60 + route.Pirq - 1 : 0x68 + route.Pirq - 5;
        Assert.Equal((uint)irq, rig.Cf8Read(0, 31, 0, reg, 1));
    }

    [Fact]
    public void AssertGoesToIoapicPinAndPirqIrqAndSetsStatus()
    {
        var (rig, f) = IntxRig();
        using var _ = rig;
        var route = f.IntxRoute!;
        int irq = rig.Bus.Router.PirqIrq(route.Pirq);
        f.AssertIntx();
        Assert.Equal(1, rig.Irq.Ioapic[route.IoapicPin]);
        Assert.Equal(1, rig.Irq.Isa[irq]);
        Assert.NotEqual(0u, rig.Cf8Read(0, 3, 0, 0x06, 2) & 0x08);
        f.DeassertIntx();
        Assert.Equal(0, rig.Irq.Ioapic[route.IoapicPin]);
        Assert.Equal(0, rig.Irq.Isa[irq]);
        Assert.Equal(0u, rig.Cf8Read(0, 3, 0, 0x06, 2) & 0x08);
    }

    [Fact]
    public void IntxDisableMasksAndUnmaskReasserts()
    {
        var (rig, f) = IntxRig();
        using var _ = rig;
        var pin = f.IntxRoute!.IoapicPin;
        f.AssertIntx();
        rig.Cf8Write(0, 3, 0, 0x04, 2, 0x0400 | 0x0003);
        Assert.Equal(0, rig.Irq.Ioapic[pin]);
        // Status still shows the device's level while masked.
        Assert.NotEqual(0u, rig.Cf8Read(0, 3, 0, 0x06, 2) & 0x08);
        rig.Cf8Write(0, 3, 0, 0x04, 2, 0x0003);
        Assert.Equal(1, rig.Irq.Ioapic[pin]);
        // Lowered while masked: unmasking does not raise it again.
        rig.Cf8Write(0, 3, 0, 0x04, 2, 0x0403);
        f.DeassertIntx();
        rig.Cf8Write(0, 3, 0, 0x04, 2, 0x0003);
        Assert.Equal(0, rig.Irq.Ioapic[pin]);
    }

    [Fact]
    public void MsiEnableMasksIntx()
    {
        var (rig, f) = IntxRig();
        using var _ = rig;
        var pin = f.IntxRoute!.IoapicPin;
        int ctl = f.Msi!.Offset + 2;
        f.AssertIntx();
        Assert.Equal(1, rig.Irq.Ioapic[pin]);
        rig.Cf8Write(0, 3, 0, ctl, 2, 1);
        Assert.Equal(0, rig.Irq.Ioapic[pin]);
        rig.Cf8Write(0, 3, 0, ctl, 2, 0);
        Assert.Equal(1, rig.Irq.Ioapic[pin]);
    }

    [Fact]
    public void PirqRegistersRouteDisableAndRejectIllegalIrqs()
    {
        var (rig, f) = IntxRig();
        using var _ = rig;
        var route = f.IntxRoute!;
        int reg = route.Pirq <= 4 ? 0x60 + route.Pirq - 1 : 0x68 + route.Pirq - 5;
        rig.Cf8Write(0, 31, 0, reg, 1, 11);
        Assert.Equal(11u, rig.Cf8Read(0, 31, 0, reg, 1));
        f.AssertIntx();
        Assert.Equal(1, rig.Irq.Isa[11]);
        // Re-routing a live link moves the level.
        rig.Cf8Write(0, 31, 0, reg, 1, 10);
        Assert.Equal(0, rig.Irq.Isa[11]);
        Assert.Equal(1, rig.Irq.Isa[10]);
        // Disabled: the IOAPIC pin alone carries it.
        rig.Cf8Write(0, 31, 0, reg, 1, 0x80 | 10);
        Assert.Equal(0, rig.Irq.Isa[10]);
        Assert.Equal(1, rig.Irq.Ioapic[route.IoapicPin]);
        Assert.Equal(0x8au, rig.Cf8Read(0, 31, 0, reg, 1));
        // IRQ 2, 8 and 13 are not legal PIRQ targets: treated as disabled.
        foreach (int bad in new[] { 0, 1, 2, 8, 13 })
        {
            rig.Cf8Write(0, 31, 0, reg, 1, (uint)bad);
            Assert.Equal(-1, rig.Bus.Router.PirqIrq(route.Pirq));
            Assert.Equal(0, rig.Irq.Isa[bad]);
        }
        // A dword write covers four links at once.
        rig.Cf8Write(0, 31, 0, 0x68, 4, 0x0b0a_0907);
        Assert.Equal(0x0b0a_0907u, rig.Cf8Read(0, 31, 0, 0x68, 4));
        Assert.Equal(9, rig.Bus.Router.PirqIrq(6));
    }

    [Fact]
    public void LevelTriggerIsRequestedForRoutedIrqs()
    {
        using var rig = new PciTestRig();
        var levels = new List<int>();
        rig.Bus.Router.LevelTriggered = levels.Add;
        var f = new TestFunction();
        f.RequestIntx();
        rig.Bus.Add(f, 0, 3, 0);
        rig.Bus.Build();
        Assert.Equal(new[] { rig.Bus.Router.PirqIrq(f.IntxRoute!.Pirq) }, levels);
    }

    [Fact]
    public void FixedMappingFollowsBhyvesBootRomFormula()
    {
        using var rig = new PciTestRig();
        rig.Bus.Router.FixedMapping = true;
        var f = new TestFunction();
        f.RequestIntx();
        rig.Bus.Add(f, 0, 6, 0);
        rig.Bus.Build();
        var r = f.IntxRoute!;
        Assert.Equal(16 + (4 + 6 + 1) % 8, r.IoapicPin);
        Assert.Equal((4 + 6 + 1) % 8 + 1, r.Pirq);
    }

    [Fact]
    public void SharedPirqRaisesItsIsaIrqOnceForAllSharers()
    {
        using var rig = new PciTestRig();
        rig.Bus.Router.FixedMapping = true;
        var a = new TestFunction();
        var b = new TestFunction();
        a.RequestIntx();
        b.RequestIntx();
        rig.Bus.Add(a, 0, 3, 0);
        rig.Bus.Add(b, 0, 11, 0); // (4 + slot + pin) % 8 is the same for slots 3 and 11
        rig.Bus.Build();
        Assert.Equal(a.IntxRoute!.Pirq, b.IntxRoute!.Pirq);
        int irq = rig.Bus.Router.PirqIrq(a.IntxRoute.Pirq), pin = a.IntxRoute.IoapicPin;
        a.AssertIntx();
        b.AssertIntx();
        Assert.Equal(1, rig.Irq.Isa[irq]);
        Assert.Equal(2, rig.Irq.Ioapic[pin]);
        a.DeassertIntx();
        Assert.Equal(1, rig.Irq.Isa[irq]);
        b.DeassertIntx();
        Assert.Equal(0, rig.Irq.Isa[irq]);
        Assert.Equal(0, rig.Irq.Ioapic[pin]);
    }

    [Fact]
    public void MsiDeliversAddressAndDataWithVectorInLowBits()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        var msi = f.AddMsi(4, is64: true);
        rig.Bus.Add(f, 0, 3, 0);
        rig.Bus.Build();
        int o = msi.Offset;
        Assert.False(msi.Send(0)); // not enabled
        rig.Cf8Write(0, 3, 0, o + 4, 4, 0xfee0_1000);
        rig.Cf8Write(0, 3, 0, o + 8, 4, 0);
        rig.Cf8Write(0, 3, 0, o + 12, 2, 0x4040);
        rig.Cf8Write(0, 3, 0, o + 2, 2, 0x0021); // enable, MME = 2 (4 vectors)
        Assert.Equal(0x00a5u, rig.Cf8Read(0, 3, 0, o + 2, 2)); // 64-bit, MME 4, MMC 4, enabled
        Assert.True(msi.Send(3));
        Assert.Equal((0xfee0_1000ul, 0x4043ul), rig.Irq.Msis[^1]);
        Assert.False(msi.Send(4));
    }

    [Fact]
    public void MsiPerVectorMaskHoldsPendingUntilUnmask()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        var msi = f.AddMsi(2, is64: false, perVectorMask: true);
        rig.Bus.Add(f, 0, 3, 0);
        rig.Bus.Build();
        int o = msi.Offset;
        rig.Cf8Write(0, 3, 0, o + 4, 4, 0xfee0_0000);
        rig.Cf8Write(0, 3, 0, o + 8, 2, 0x0030);
        rig.Cf8Write(0, 3, 0, o + 0x0c, 4, 0xffff_ffff); // only the two implemented bits stick
        Assert.Equal(0x3u, rig.Cf8Read(0, 3, 0, o + 0x0c, 4));
        rig.Cf8Write(0, 3, 0, o + 2, 2, 0x0011);
        Assert.True(msi.Send(1));
        Assert.Empty(rig.Irq.Msis);
        Assert.Equal(0x2u, rig.Cf8Read(0, 3, 0, o + 0x10, 4));
        rig.Cf8Write(0, 3, 0, o + 0x10, 4, 0); // pending bits are read-only
        Assert.Equal(0x2u, rig.Cf8Read(0, 3, 0, o + 0x10, 4));
        rig.Cf8Write(0, 3, 0, o + 0x0c, 4, 0x1);
        Assert.Equal((0xfee0_0000ul, 0x31ul), Assert.Single(rig.Irq.Msis));
        Assert.Equal(0u, rig.Cf8Read(0, 3, 0, o + 0x10, 4));
    }

    [Fact]
    public void MsiXVectorMaskFunctionMaskAndPendingBits()
    {
        using var rig = new PciTestRig();
        var f = new TestFunction();
        f.RequestIntx();
        var msix = f.AddMsiX(4, barIndex: 1);
        rig.Bus.Add(f, 0, 3, 0);
        rig.Bus.Build();
        int o = msix.Offset;
        Assert.Equal(3u, rig.Cf8Read(0, 3, 0, o + 2, 2) & 0x7ff); // table size N-1
        Assert.Equal(1u, rig.Cf8Read(0, 3, 0, o + 4, 4)); // table at offset 0 of BAR 1
        ulong bar = f.Bars[1]!.Address;
        Assert.Equal((uint)msix.PbaOffset | 1u, rig.Cf8Read(0, 3, 0, o + 8, 4));
        // Entries start masked.
        Assert.Equal(1ul, rig.Mmio.Read(bar + 2 * 16 + 12, 4));
        rig.Mmio.Write(bar + 2 * 16, 8, 0xfee0_2000);
        rig.Mmio.Write(bar + 2 * 16 + 8, 4, 0x0051);
        // Enable MSI-X: INTx is masked from now on.
        f.AssertIntx();
        int pin = f.IntxRoute!.IoapicPin;
        Assert.Equal(1, rig.Irq.Ioapic[pin]);
        rig.Cf8Write(0, 3, 0, o + 2, 2, 0x8000);
        Assert.Equal(0, rig.Irq.Ioapic[pin]);
        Assert.True(msix.Send(2));
        Assert.Empty(rig.Irq.Msis);
        Assert.Equal(0x4ul, rig.Mmio.Read(bar + (ulong)msix.PbaOffset, 8));
        // Unmask the vector but set the function mask first: still pending.
        rig.Cf8Write(0, 3, 0, o + 2, 2, 0xc000);
        rig.Mmio.Write(bar + 2 * 16 + 12, 4, 0);
        Assert.Empty(rig.Irq.Msis);
        rig.Cf8Write(0, 3, 0, o + 2, 2, 0x8000);
        Assert.Equal((0xfee0_2000ul, 0x51ul), Assert.Single(rig.Irq.Msis));
        Assert.Equal(0ul, rig.Mmio.Read(bar + (ulong)msix.PbaOffset, 8));
        Assert.True(msix.Send(2));
        Assert.Equal(2, rig.Irq.Msis.Count);
        // The PBA ignores writes; odd-sized table accesses are ignored.
        rig.Mmio.Write(bar + (ulong)msix.PbaOffset, 8, ulong.MaxValue);
        Assert.Equal(0ul, rig.Mmio.Read(bar + (ulong)msix.PbaOffset, 8));
        rig.Mmio.Write(bar + 2 * 16 + 1, 1, 0xff);
        Assert.Equal(0xfee0_2000ul, rig.Mmio.Read(bar + 2 * 16, 4));
        Assert.False(msix.Send(4));
    }
}
