// SPDX-License-Identifier: BSD-2-Clause
using Xunit;
using Hyve.Config;
using Hyve.Pci;
using Hyve.Virtio;

namespace Hyve.Tests.Virtio;

/// <summary>The virtio PCI transport as a driver sees it (virtio 1.2 section 4.1), on virtio-rnd.</summary>
public sealed class VirtioTransportTests
{
    private const ulong Modern = VirtioPciDevice.FeatureVersion1 | VirtioPciDevice.FeatureEventIdx | VirtioPciDevice.FeatureIndirectDesc;

    private static List<(byte Id, int Offset)> Caps(PciDevice d)
    {
        var caps = new List<(byte, int)>();
        for (int p = d.GetConfig8(0x34); p != 0; p = d.GetConfig8(p + 1)) caps.Add((d.GetConfig8(p), p));
        return caps;
    }

    [Fact]
    public void TransitionalFunctionHasLegacyIdsAndEveryCapability()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        var d = drv.Device;
        Assert.Equal(0x1af4, d.VendorId);
        Assert.Equal(0x1005, d.DeviceId);           // transitional entropy device
        Assert.Equal(0, d.GetConfig8(0x08));        // revision 0
        Assert.Equal(4, d.GetConfig16(0x2e));       // subsystem ID = device type
        Assert.Equal(PciBarKind.Io, d.Bars[0]!.Kind);
        Assert.Equal(PciBarKind.Memory64, d.Bars[4]!.Kind);
        var caps = Caps(d);
        var types = caps.Where(c => c.Id == 0x09).Select(c => (int)d.GetConfig8(c.Offset + 3)).ToList();
        Assert.Equal([1, 2, 3, 5], types);          // common, notify, ISR, PCI cfg (entropy has no device config)
        Assert.Contains(caps, c => c.Id == 0x11);   // MSI-X
        Assert.Contains(caps, c => c.Id == 0x05);   // MSI
        Assert.NotEqual(0, d.InterruptPin);         // INTx
        Assert.Equal(2, d.MsiX!.Vectors);           // one queue + configuration
    }

    [Fact]
    public void ModernOnlyFunctionAndDashWDropMsiX()
    {
        var root = new ConfigTree();
        root.SetBool("virtio_msix", false);
        using var drv = new VirtioTestDriver("virtio-rnd", root, ("legacy", "false"));
        var d = drv.Device;
        Assert.Equal(0x1044, d.DeviceId);
        Assert.Equal(1, d.GetConfig8(0x08));
        Assert.Null(d.Bars[0]);
        Assert.Null(d.MsiX);
        Assert.NotNull(d.Msi);
        Assert.Equal(1, d.Msi!.Vectors);
        Assert.NotEqual(0, d.InterruptPin);
    }

    [Fact]
    public void FeaturesOkNeedsVersion1AndOnlyOfferedBitsStick()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        ulong offered = drv.Features();
        Assert.NotEqual(0ul, offered & VirtioPciDevice.FeatureVersion1);
        Assert.NotEqual(0ul, offered & VirtioPciDevice.FeatureEventIdx);
        Assert.NotEqual(0ul, offered & VirtioPciDevice.FeatureIndirectDesc);
        Assert.False(drv.Negotiate(VirtioPciDevice.FeatureEventIdx)); // no VERSION_1 on the modern interface
        drv.Write(0x14, 1, 0);
        Assert.Equal(0, drv.Status);
        Assert.True(drv.Negotiate(Modern | (1ul << 3))); // bit 3 is not offered
        Assert.Equal(Modern, drv.Device.DriverFeatures);
    }

    [Fact]
    public void IntxIsrIsReadToClear()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        Assert.True(drv.Negotiate(Modern));
        drv.SetupQueue(0, 16);
        drv.DriverOk();
        drv.Offer(0, 16, (VirtioTestDriver.DataBase, 64, true));
        drv.NotifyAndWait(0, 1);
        Assert.Equal(64u, drv.UsedElem(0, 0, 16).Len);
        Assert.Contains(drv.Mem(VirtioTestDriver.DataBase, 64).ToArray(), b => b != 0);
        int pin = drv.Device.IntxRoute!.IoapicPin;
        Assert.True(VirtioTestDriver.WaitFor(() => drv.Rig.Irq.Ioapic[pin] == 1));
        Assert.Equal(1ul, drv.Read(VirtioPciDevice.IsrOffset, 1));
        Assert.Equal(0, drv.Rig.Irq.Ioapic[pin]);
        Assert.Equal(0ul, drv.Read(VirtioPciDevice.IsrOffset, 1));
    }

    [Fact]
    public void MsiXVectorPerQueueHonoursMasking()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        var msix = drv.Device.MsiX!;
        var table = msix.Bar.Handler!;
        // Vector 1: address/data, masked.
        table.MmioWrite(16, 8, 0xfee0_0000);
        table.MmioWrite(24, 4, 0x45);
        table.MmioWrite(28, 4, 1);
        drv.Device.WriteConfig(msix.Offset + 2, 2, 0x8000 | (uint)(msix.Vectors - 1)); // MSI-X enable
        Assert.True(drv.Negotiate(Modern));
        drv.SetupQueue(0, 16, vector: 1);
        drv.Write(0x16, 2, 0);
        Assert.Equal(1ul, drv.Read(0x1a, 2));
        drv.DriverOk();
        drv.Offer(0, 16, (VirtioTestDriver.DataBase, 8, true));
        drv.NotifyAndWait(0, 1);
        Assert.True(VirtioTestDriver.WaitFor(() => msix.IsPending(1)));
        Assert.Empty(drv.Rig.Irq.Msis);
        table.MmioWrite(28, 4, 0); // unmask: the pending message goes out
        Assert.Equal((0xfee0_0000ul, 0x45ul), Assert.Single(drv.Rig.Irq.Msis));
        Assert.Equal(0, drv.Rig.Irq.Ioapic[drv.Device.IntxRoute!.IoapicPin]); // no INTx with MSI-X on
    }

    [Fact]
    public void VectorBeyondTheTableReadsNoVector()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        drv.Write(0x10, 2, 7);
        Assert.Equal(0xfffful, drv.Read(0x10, 2));
    }

    [Fact]
    public void BadChainSetsNeedsResetAndResetRecovers()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        Assert.True(drv.Negotiate(Modern));
        drv.SetupQueue(0, 16);
        drv.DriverOk();
        drv.SetDesc(0, 0, VirtioTestDriver.DataBase, 8, Virtqueue.DescNext | Virtqueue.DescWrite, 0); // loop
        drv.MakeAvailable(0, 16, 0);
        drv.Notify(0);
        Assert.True(VirtioTestDriver.WaitFor(() => (drv.Status & VirtioPciDevice.StatusNeedsReset) != 0));
        Assert.Equal(2ul, drv.Read(VirtioPciDevice.IsrOffset, 1) & 2); // configuration change
        drv.Write(0x14, 1, 0);
        Assert.Equal(0, drv.Status);
        drv.Write(0x16, 2, 0);
        Assert.Equal(0ul, drv.Read(0x1c, 2));
    }

    [Fact]
    public void QueueResetDisablesOneQueue()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        Assert.True(drv.Negotiate(Modern | VirtioPciDevice.FeatureRingReset));
        drv.SetupQueue(0, 16);
        drv.DriverOk();
        drv.Write(0x16, 2, 0);
        drv.Write(0x3a, 2, 1);
        Assert.Equal(1ul, drv.Read(0x3a, 2));
        Assert.Equal(0ul, drv.Read(0x1c, 2));
        Assert.Equal(0ul, drv.Read(0x20, 8));
        drv.SetupQueue(0, 16);
        Assert.Equal(0ul, drv.Read(0x3a, 2));
        Assert.Equal(1ul, drv.Read(0x1c, 2));
    }

    [Fact]
    public void UsedRingInUnbackedMemoryIsRefusedAtEnable()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        Assert.True(drv.Negotiate(Modern));
        drv.Write(0x16, 2, 0);
        drv.Write(0x30, 8, 0xfee0_0000); // the local APIC page, not RAM
        drv.Write(0x20, 8, VirtioTestDriver.Desc(0));
        drv.Write(0x28, 8, VirtioTestDriver.Avail(0));
        drv.Write(0x1c, 2, 1);
        Assert.NotEqual(0, drv.Status & VirtioPciDevice.StatusNeedsReset);
    }

    [Fact]
    public void PciCfgCapabilityReachesTheModernBar()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        var d = drv.Device;
        int cap = Caps(d).First(c => c.Id == 0x09 && d.GetConfig8(c.Offset + 3) == 5).Offset;
        d.WriteConfig(cap + 4, 1, VirtioPciDevice.ModernBar);
        d.WriteConfig(cap + 8, 4, 0x12);  // num_queues
        d.WriteConfig(cap + 12, 4, 2);
        Assert.Equal(1u, d.ReadConfig(cap + 16, 4));
        d.WriteConfig(cap + 8, 4, 0x14);  // device_status
        d.WriteConfig(cap + 12, 4, 1);
        d.WriteConfig(cap + 16, 4, VirtioPciDevice.StatusAcknowledge);
        Assert.Equal(VirtioPciDevice.StatusAcknowledge, drv.Status);
    }

    [Fact]
    public void LegacyInterfaceDrivesTheSameQueue()
    {
        using var drv = new VirtioTestDriver("virtio-rnd");
        var io = drv.Device.Bars[0]!.Handler!;
        io.MmioWrite(0x12, 1, VirtioPciDevice.StatusAcknowledge | VirtioPciDevice.StatusDriver);
        Assert.Equal(0ul, io.MmioRead(0x00, 4) & 0); // low feature word readable
        io.MmioWrite(0x04, 4, 0);
        io.MmioWrite(0x0e, 2, 0);
        ushort size = (ushort)io.MmioRead(0x0c, 2);
        Assert.Equal(64, size);
        io.MmioWrite(0x08, 4, VirtioTestDriver.RingBase >> 12);
        io.MmioWrite(0x12, 1, VirtioPciDevice.StatusAcknowledge | VirtioPciDevice.StatusDriver | VirtioPciDevice.StatusDriverOk);
        // 0.9.5 layout: descriptors, then the avail ring, then the used ring on the next 4 KiB boundary.
        var q = drv.Device.Queues[0];
        Assert.Equal(VirtioTestDriver.RingBase + 16ul * 64, q.Driver);
        Assert.Equal((q.Driver + 6 + 2 * 64 + 4095) & ~4095ul, q.Device);
        Assert.True(q.Enabled);
        Assert.Equal(VirtioPciDevice.StatusDriverOk, (byte)(io.MmioRead(0x12, 1) & VirtioPciDevice.StatusDriverOk));
    }

    [Fact]
    public void StateSectionRoundTripsQueuesAndFeatures()
    {
        using var a = new VirtioTestDriver("virtio-rnd");
        Assert.True(a.Negotiate(Modern));
        a.SetupQueue(0, 16);
        a.DriverOk();
        a.Offer(0, 16, (VirtioTestDriver.DataBase, 8, true));
        a.NotifyAndWait(0, 1);
        var dev = (Hyve.Vmm.State.IDeviceState)a.Device;
        var ms = new MemoryStream();
        ((Hyve.Vmm.State.IQuiescent)a.Device).Quiesce();
        dev.SaveState(new BinaryWriter(ms));
        ((Hyve.Vmm.State.IQuiescent)a.Device).Resume();

        var saved = ms.ToArray();
        // Version 2 ends with the device's own state, length-prefixed: the entropy device has none.
        Assert.Equal(0, System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(saved.AsSpan(saved.Length - 4)));
        foreach (var (payload, version) in new[] { (saved, 2), (saved[..^4], 1) })
        {
            using var b = new VirtioTestDriver("virtio-rnd");
            // A restore brings guest RAM back with the rings in it before the devices load.
            a.Mem(VirtioTestDriver.RingBase, 0x10000).CopyTo(b.Mem(VirtioTestDriver.RingBase, 0x10000));
            var rs = new MemoryStream(payload);
            ((Hyve.Vmm.State.IDeviceState)b.Device).LoadState(new BinaryReader(rs), version);
            Assert.Equal(rs.Length, rs.Position);
            Assert.Equal(Modern, b.Device.DriverFeatures);
            Assert.Equal(a.Device.DeviceStatus, b.Device.DeviceStatus);
            var q = b.Device.Queues[0];
            Assert.Equal((VirtioTestDriver.Desc(0), VirtioTestDriver.Used(0), (ushort)16, (ushort)1, (ushort)1, true),
                (q.Desc, q.Device, q.Size, q.LastAvail, q.UsedIdx, q.Enabled));
            // The device stays quiesced until the restore resumes it (once the vCPUs have their state); then every queue
            // is kicked: with the rings as saved there is nothing to serve and nothing to complain about.
            ((Hyve.Vmm.State.IQuiescent)b.Device).Resume();
            Thread.Sleep(50);
            Assert.Equal(0, b.Status & VirtioPciDevice.StatusNeedsReset);
            Assert.Equal(1, b.UsedIdx(0));
        }
    }
}
