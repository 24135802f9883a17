// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Config;
using Hyve.Tests.Virtio;
using Hyve.Virtio;
using Xunit;
using static Hyve.Tests.Net.NetFrames;

namespace Hyve.Tests.Net;

/// <summary>
/// virtio-net as a driver sees it (virtio 1.2 section 5.1), on the slirp backend: features and configuration,
/// the 12-byte header, a DHCP exchange through the transmit and receive queues, mergeable receive buffers
/// (num_buffers), frames held until the driver posts buffers, and chains that break the queue's rules.
/// </summary>
public sealed class VirtioNetTests
{
    private const ulong Modern = VirtioPciDevice.FeatureVersion1 | VirtioPciDevice.FeatureEventIdx;
    private const ulong RxData = VirtioTestDriver.DataBase, TxData = VirtioTestDriver.DataBase + 0x80000;

    private static VirtioTestDriver Net(params (string, string)[] conf) =>
        new("virtio-net", null, [("backend", "slirp"), .. conf]);

    private static void Start(VirtioTestDriver d, ulong features)
    {
        Assert.True(d.Negotiate(features));
        d.SetupQueue(VirtioNet.RxQueue, 256);
        d.SetupQueue(VirtioNet.TxQueue, 256);
        d.DriverOk();
    }

    private static void Transmit(VirtioTestDriver d, byte[] frame, ushort txUsed)
    {
        // Header and frame in two descriptors, as Linux sends them without offloads.
        new byte[12].CopyTo(d.Mem(TxData, 12));
        frame.CopyTo(d.Mem(TxData + 64, frame.Length));
        d.Offer(VirtioNet.TxQueue, 256, (TxData, 12, false), (TxData + 64, (uint)frame.Length, false));
        d.NotifyAndWait(VirtioNet.TxQueue, txUsed);
    }

    [Fact]
    public void OffersMacStatusAndMergeableBuffersWithoutOffloadsOnSlirp()
    {
        using var d = Net();
        ulong f = d.Features();
        Assert.NotEqual(0ul, f & VirtioNet.FeatureMac);
        Assert.NotEqual(0ul, f & VirtioNet.FeatureStatus);
        Assert.NotEqual(0ul, f & VirtioNet.FeatureMrgRxbuf);
        Assert.Equal(0ul, f & (VirtioNet.FeatureCsum | VirtioNet.FeatureGuestCsum | VirtioNet.FeatureHostTso4 | VirtioNet.FeatureGuestTso4));
        Assert.Equal(0ul, f & VirtioNet.FeatureMtu);
        Assert.Equal(0x1000, d.Device.DeviceId);   // transitional network device
        Assert.Equal(0x02, d.Device.GetConfig8(0x0b)); // network controller
        // bhyve's rule: 00:a0:98 and MD5("slot-func-vmname"); the test rig's function is slot 3, function 0, no name.
        var md5 = System.Security.Cryptography.MD5.HashData("3-0-"u8.ToArray());
        byte[] mac = [.. Enumerable.Range(0, 6).Select(i => (byte)d.Read(VirtioPciDevice.DeviceOffset + i, 1))];
        Assert.Equal(new byte[] { 0x00, 0xa0, 0x98, md5[0], md5[1], md5[2] }, mac);
        Assert.Equal(VirtioNet.StatusLinkUp, (ushort)d.Read(VirtioPciDevice.DeviceOffset + 6, 2));
    }

    [Fact]
    public void MacAndMtuOptionsReachTheConfiguration()
    {
        using var d = Net(("mac", "02:11:22:33:44:55"), ("mtu", "9000"));
        Assert.NotEqual(0ul, d.Features() & VirtioNet.FeatureMtu);
        Assert.Equal(0x3322_1102ul, d.Read(VirtioPciDevice.DeviceOffset, 4));
        Assert.Equal(0x5544ul, d.Read(VirtioPciDevice.DeviceOffset + 4, 2));
        Assert.Equal(9000ul, d.Read(VirtioPciDevice.DeviceOffset + 10, 2));
    }

    [Theory]
    [InlineData("mac", "01:11:22:33:44:55")] // multicast
    [InlineData("mac", "00:00:00:00:00:00")]
    [InlineData("mac", "02:11:22:33:44")]
    [InlineData("mtu", "67")]
    [InlineData("backend", "vde0")]
    public void BadOptionsAreHostErrors(string key, string value)
    {
        (string, string)[] conf = key == "backend" ? [(key, value)] : [("backend", "slirp"), (key, value)];
        var e = Assert.ThrowsAny<Exception>(() => new VirtioTestDriver("virtio-net", null, conf).Dispose());
        Assert.IsType<HostConfigException>(e);
        Assert.Contains("virtio-net", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RepeatedHostfwdOptionsAreKeptAsOneSemicolonList()
    {
        var c = new ConfigTree();
        PciSlotOption.Parse(c, "3,virtio-net,slirp,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-:53,mac=02:00:00:00:00:01");
        Assert.Equal("slirp", c.Get("pci.0.3.0.backend"));
        Assert.Equal("tcp:127.0.0.1:2222-:22;udp::5353-:53", c.Get("pci.0.3.0.hostfwd"));
        Assert.Equal("02:00:00:00:00:01", c.Get("pci.0.3.0.mac"));
    }

    [Fact]
    public void DhcpThroughTheQueuesWithTheV1Header()
    {
        using var d = Net();
        Start(d, Modern | VirtioNet.FeatureMac | VirtioNet.FeatureMrgRxbuf);
        Assert.Equal(12, ((VirtioNet)d.Device).HeaderLength);
        for (int i = 0; i < 4; i++) d.Offer(VirtioNet.RxQueue, 256, (RxData + (ulong)i * 0x1000, 2048, true));
        d.Notify(VirtioNet.RxQueue);
        Transmit(d, DhcpDiscover(GuestMac, 7), 1);
        Assert.True(VirtioTestDriver.WaitFor(() => d.UsedIdx(VirtioNet.RxQueue) >= 1));
        var (id, len) = d.UsedElem(VirtioNet.RxQueue, 0, 256);
        Assert.Equal(0u, id);
        var buf = d.Mem(RxData, (int)len).ToArray();
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(buf.AsSpan(10))); // num_buffers
        Assert.Equal(0, buf[0]);                                                   // flags: no offload in use
        var frame = buf[12..];
        var bootp = DhcpReply(frame).ToArray();
        Assert.Equal(Ip("10.0.2.15"), bootp[16..20]);
        Assert.Equal(new byte[] { 2 }, DhcpOption(bootp, 53));
        Assert.Equal(0, d.Status & VirtioPciDevice.StatusNeedsReset);
    }

    [Fact]
    public void AFrameSpansSeveralMergeableBuffersAndWaitsForThem()
    {
        using var d = Net();
        Start(d, Modern | VirtioNet.FeatureMrgRxbuf);
        // No receive buffers yet: the offer waits in the backend.
        Transmit(d, DhcpDiscover(GuestMac, 9), 1);
        Thread.Sleep(200);
        Assert.Equal(0, d.UsedIdx(VirtioNet.RxQueue));
        for (int i = 0; i < 16; i++) d.Offer(VirtioNet.RxQueue, 256, (RxData + (ulong)i * 0x100, 128, true));
        d.Notify(VirtioNet.RxQueue);
        Assert.True(VirtioTestDriver.WaitFor(() => d.UsedIdx(VirtioNet.RxQueue) >= 2));
        Thread.Sleep(50);
        int n = BinaryPrimitives.ReadUInt16LittleEndian(d.Mem(RxData + 10, 2));
        Assert.True(n > 1, $"num_buffers {n}");
        Assert.Equal(n, d.UsedIdx(VirtioNet.RxQueue));
        var all = new List<byte>();
        for (int i = 0; i < n; i++)
        {
            var (id, len) = d.UsedElem(VirtioNet.RxQueue, i, 256);
            Assert.Equal((uint)i, id);
            Assert.True(i == n - 1 ? len <= 128 : len == 128);
            all.AddRange(d.Mem(RxData + (ulong)i * 0x100, (int)len).ToArray());
        }
        var bootp = DhcpReply(all.ToArray().AsSpan(12)).ToArray();
        Assert.Equal(9u, BinaryPrimitives.ReadUInt32BigEndian(bootp.AsSpan(4)));
        Assert.Equal(Ip("10.0.2.15"), bootp[16..20]);
    }

    [Fact]
    public void LegacyHeaderIsTenBytesWithoutVersion1OrMergeableBuffers()
    {
        using var d = Net();
        // Through the legacy interface a driver may take neither: the header is the 10-byte virtio_net_hdr.
        var legacy = d.Device.Bars[VirtioPciDevice.LegacyBar]!.Handler!;
        legacy.MmioWrite(0x04, 4, (uint)VirtioNet.FeatureMac);
        legacy.MmioWrite(0x0e, 2, VirtioNet.RxQueue);
        legacy.MmioWrite(0x08, 4, VirtioTestDriver.RingBase >> 12);
        legacy.MmioWrite(0x12, 1, 1 | 2 | 4);
        legacy.MmioWrite(0x10, 2, VirtioNet.RxQueue);
        Assert.True(VirtioTestDriver.WaitFor(() => ((VirtioNet)d.Device).HeaderLength == 10));
    }

    [Fact]
    public void AReceiveBufferSmallerThanTheHeaderNeedsReset()
    {
        using var d = Net();
        Start(d, Modern | VirtioNet.FeatureMrgRxbuf);
        d.Offer(VirtioNet.RxQueue, 256, (RxData, 8, true));
        d.Notify(VirtioNet.RxQueue);
        Transmit(d, DhcpDiscover(GuestMac, 1), 1);
        Assert.True(VirtioTestDriver.WaitFor(() => (d.Status & VirtioPciDevice.StatusNeedsReset) != 0));
    }

    [Fact]
    public void ATransmitChainWithoutItsHeaderNeedsReset()
    {
        using var d = Net();
        Start(d, Modern | VirtioNet.FeatureMrgRxbuf);
        d.Offer(VirtioNet.TxQueue, 256, (TxData, 6, false));
        d.Notify(VirtioNet.TxQueue);
        Assert.True(VirtioTestDriver.WaitFor(() => (d.Status & VirtioPciDevice.StatusNeedsReset) != 0));
    }
}
