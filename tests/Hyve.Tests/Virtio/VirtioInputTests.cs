// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Config;
using Hyve.Pci;
using Hyve.Virtio;
using Xunit;

namespace Hyve.Tests.Virtio;

/// <summary>The virtio-input tablet against virtio 1.2 section 5.8: IDs, the select/subsel configuration window as Linux's
/// virtio_input driver reads it, and pointer events as they arrive in the event queue.</summary>
public class VirtioInputTests
{
    private const ulong Modern = VirtioPciDevice.FeatureVersion1;
    private const int Cfg = VirtioPciDevice.DeviceOffset;

    private static VirtioTestDriver Tablet() => new("virtio-input", null, ("path", "tablet"));

    // Points the window and returns (size, union bytes) as the driver reads them through the BAR.
    private static (int Size, byte[] U) Select(VirtioTestDriver drv, byte select, byte subsel)
    {
        drv.Write(Cfg + 0, 1, select);
        drv.Write(Cfg + 1, 1, subsel);
        int size = (int)drv.Read(Cfg + 2, 1);
        var u = new byte[128];
        for (int i = 0; i < 128; i++) u[i] = (byte)drv.Read(Cfg + 8 + i, 1);
        return (size, u);
    }

    [Fact]
    public void IsAModernOnlyInputFunction1af4_1052()
    {
        using var drv = Tablet();
        var d = drv.Device;
        Assert.Equal(0x1af4, d.VendorId);
        Assert.Equal(0x1052, d.DeviceId);       // 0x1040 + 18
        Assert.Equal(1, d.GetConfig8(0x08));    // revision 1: modern
        Assert.Equal(0x09, d.GetConfig8(0x0b)); // input device controller
        Assert.Null(d.Bars[VirtioPciDevice.LegacyBar]);
        Assert.Equal(2, d.Queues.Count);        // eventq, statusq
        Assert.True(drv.Negotiate(Modern));
    }

    [Fact]
    public void ConfigurationAnswersNameIdsBitsAndAbsInfo()
    {
        using var drv = Tablet();
        var (size, u) = Select(drv, VirtioInput.CfgIdName, 0);
        Assert.Equal(VirtioInput.TabletName, Encoding.ASCII.GetString(u, 0, size));
        (size, u) = Select(drv, VirtioInput.CfgIdDevids, 0);
        Assert.Equal(8, size);
        Assert.Equal(VirtioInput.BusVirtual, BinaryPrimitives.ReadUInt16LittleEndian(u));
        // EV_KEY: BTN_LEFT (0x110), BTN_RIGHT, BTN_MIDDLE are bits 0-2 of byte 34.
        (size, u) = Select(drv, VirtioInput.CfgEvBits, (byte)VirtioInput.EvKey);
        Assert.Equal(35, size);
        Assert.Equal(0x07, u[34]);
        Assert.All(u.Take(34), b => Assert.Equal(0, b));
        (size, u) = Select(drv, VirtioInput.CfgEvBits, (byte)VirtioInput.EvAbs);
        Assert.Equal(1, size);
        Assert.Equal(0x03, u[0]); // ABS_X, ABS_Y
        (size, u) = Select(drv, VirtioInput.CfgEvBits, (byte)VirtioInput.EvRel);
        Assert.Equal(2, size);
        Assert.Equal(0x40, u[0]); // REL_HWHEEL (6)
        Assert.Equal(0x01, u[1]); // REL_WHEEL (8)
        foreach (byte axis in new byte[] { 0, 1 })
        {
            (size, u) = Select(drv, VirtioInput.CfgAbsInfo, axis);
            Assert.Equal(20, size);
            Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(u));
            Assert.Equal(32767u, BinaryPrimitives.ReadUInt32LittleEndian(u.AsSpan(4)));
        }
        // What the device does not have reads size 0: ABS_Z's info, EV_LED's bits, no properties, an unknown selector.
        Assert.Equal(0, Select(drv, VirtioInput.CfgAbsInfo, 2).Size);
        Assert.Equal(0, Select(drv, VirtioInput.CfgEvBits, 0x11).Size);
        Assert.Equal(0, Select(drv, VirtioInput.CfgPropBits, 0).Size);
        Assert.Equal(0, Select(drv, 0x7f, 0).Size);
        // The window reads back what the driver wrote.
        Assert.Equal(0x7fu, drv.Read(Cfg, 1));
    }

    [Fact]
    public void PointerEventEncodingScalesToTheAxisAndReportsButtonChanges()
    {
        Span<ulong> ev = stackalloc ulong[12];
        int n = VirtioInput.EncodePointer(1023, 0, 1, 0, 1024, 768, ev);
        Assert.Equal(
            [VirtioInput.Event(3, 0, 32767), VirtioInput.Event(3, 1, 0), VirtioInput.Event(1, 0x110, 1), VirtioInput.Event(0, 0, 0)],
            ev[..n].ToArray());
        // Release left, press right and a wheel-down notch; the middle of a 768-line axis.
        n = VirtioInput.EncodePointer(512, 384, 0x14, 1, 1024, 768, ev);
        Assert.Equal(
            [VirtioInput.Event(3, 0, 16399), VirtioInput.Event(3, 1, 16404), VirtioInput.Event(1, 0x110, 0),
             VirtioInput.Event(1, 0x111, 1), VirtioInput.Event(2, 8, -1), VirtioInput.Event(0, 0, 0)],
            ev[..n].ToArray());
        // The packed event is the little-endian virtio_input_event: le16 type, le16 code, le32 value.
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, VirtioInput.Event(2, 8, -1));
        Assert.Equal(new byte[] { 2, 0, 8, 0, 0xff, 0xff, 0xff, 0xff }, b.ToArray());
        Assert.Equal(0, VirtioInput.Scale(-5, 640));
        Assert.Equal(32767, VirtioInput.Scale(5000, 640));
    }

    [Fact]
    public void PointerEventsFillPostedBuffersAndWaitForMore()
    {
        using var drv = Tablet();
        Assert.True(drv.Negotiate(Modern));
        drv.SetupQueue(0, 8);
        drv.SetupQueue(1, 8);
        drv.DriverOk();
        // Before any buffer: the report waits in the backlog.
        ((VirtioInput)drv.Device).Pointer(320, 240, 1, 640, 480);
        for (int i = 0; i < 4; i++) drv.Offer(0, 8, (VirtioTestDriver.DataBase + (ulong)i * 8, 8, true));
        drv.NotifyAndWait(0, 4);
        var got = new List<ulong>();
        for (int i = 0; i < 4; i++)
        {
            var (id, len) = drv.UsedElem(0, i, 8);
            Assert.Equal(8u, len);
            got.Add(BinaryPrimitives.ReadUInt64LittleEndian(drv.Mem(VirtioTestDriver.DataBase + id * 8, 8)));
        }
        Assert.Equal([VirtioInput.Event(3, 0, 16409), VirtioInput.Event(3, 1, 16417), VirtioInput.Event(1, 0x110, 1), VirtioInput.Event(0, 0, 0)], got);
        // With buffers posted, the next report goes straight in (same buttons: no key event).
        for (int i = 4; i < 8; i++) drv.Offer(0, 8, (VirtioTestDriver.DataBase + (ulong)i * 8, 8, true));
        drv.NotifyAndWait(0, 4);
        ((VirtioInput)drv.Device).Pointer(0, 0, 1, 640, 480);
        Assert.True(VirtioTestDriver.WaitFor(() => drv.UsedIdx(0) == 7));
        // A status event (an LED request) is taken and ignored.
        drv.Offer(1, 8, (VirtioTestDriver.DataBase + 0x1000, 8, false));
        drv.NotifyAndWait(1, 1);
        Assert.Equal(0, drv.Device.DeviceStatus & VirtioPciDevice.StatusNeedsReset);
    }

    [Fact]
    public void ABacklogTheGuestNeverTakesIsBounded()
    {
        using var drv = Tablet();
        Assert.True(drv.Negotiate(Modern));
        drv.SetupQueue(0, 8);
        drv.DriverOk();
        var tablet = (VirtioInput)drv.Device;
        for (int i = 0; i < 200; i++) tablet.Pointer(i, i, 0, 640, 480);
        Assert.Equal(200 - VirtioInput.BacklogEvents / 3, tablet.DroppedReports);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("/dev/input/event0")]
    public void OnlyTheTabletIsBuilt(string? path)
    {
        var e = Assert.Throws<HostConfigException>(() => path is null ? new VirtioTestDriver("virtio-input") : new VirtioTestDriver("virtio-input", null, ("path", path)));
        Assert.Contains("virtio-input", e.Message, StringComparison.Ordinal);
        Assert.True(PciDeviceTypes.Find("virtio-input")!.Implemented);
        var root = new ConfigTree();
        PciSlotOption.Parse(root, "7,virtio-input,tablet");
        Assert.Equal("tablet", root.Get("pci.0.7.0.path"));
    }
}
