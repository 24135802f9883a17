// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Hyve.Net;
using Xunit;
using static Hyve.Tests.Net.NetFrames;

namespace Hyve.Tests.Net;

/// <summary>
/// The slirp backend against Debian's libslirp with no guest: the tests play the guest's side with frames they build,
/// and check what a guest on QEMU's user network expects: a DHCP offer of 10.0.2.15 with the router at 10.0.2.2 and DNS
/// at 10.0.2.3, ARP answers for the host, a TCP connection to 10.0.2.2 reaching a listener on the host's loopback, and a
/// hostfwd rule turning a host connection into a SYN to the guest's port.
/// </summary>
public sealed class SlirpBackendTests
{
    private static byte[] WaitFrame(SlirpBackend s, Func<byte[], bool> want, int ms = 5000)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < ms)
        {
            var f = s.Peek();
            if (f.IsEmpty) { Thread.Sleep(1); continue; }
            var copy = f.ToArray();
            s.Consume();
            if (want(copy)) return copy;
        }
        Assert.Fail("no matching frame from libslirp");
        return [];
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    [Fact]
    public void LibslirpIsDebiansAndVersionIsKnown()
    {
        using var s = new SlirpBackend([]);
        Assert.Matches(@"^4\.\d+\.\d+", LibSlirp.Version);
        Assert.Equal(Hyve.Virtio.VirtioNet.FeatureGuestCsum, s.OffloadFeatures); // whole checksums, nothing taken from the guest
        Assert.False(s.HasVnetHeader);
    }

    // libslirp's saved state (what a snapshot keeps of a slirp network) holds its DHCP leases: restored into a new
    // instance, the address leased before stays taken, so another machine is offered the next one.
    [Fact]
    public void SavedStateKeepsTheDhcpLeasesAndBrokenStateIsRefused()
    {
        byte[] other = [0x52, 0x54, 0x00, 0x12, 0x34, 0x99];
        static byte[] Offered(SlirpBackend s, byte[] mac, uint xid)
        {
            Assert.True(s.SendFrame(DhcpDiscover(mac, xid)));
            var f = WaitFrame(s, x => !DhcpReply(x).IsEmpty);
            return DhcpReply(f).ToArray()[16..20];
        }
        (int Version, byte[] State) saved;
        using (var a = new SlirpBackend([]))
        {
            Assert.Equal(Ip("10.0.2.15"), Offered(a, GuestMac, 1));
            saved = a.SaveState();
        }
        Assert.Equal(4, saved.Version);
        using (var fresh = new SlirpBackend([]))
            Assert.Equal(Ip("10.0.2.15"), Offered(fresh, other, 2));
        using (var b = new SlirpBackend([]))
        {
            b.LoadState(saved.Version, saved.State);
            Assert.Equal(Ip("10.0.2.16"), Offered(b, other, 3));
            Assert.Equal(Ip("10.0.2.15"), Offered(b, GuestMac, 4));
        }
        using (var c = new SlirpBackend([]))
        {
            Assert.Throws<InvalidDataException>(() => c.LoadState(saved.Version, saved.State[..^3]));
            Assert.Throws<InvalidDataException>(() => c.LoadState(99, saved.State));
        }
    }

    [Fact]
    public void DhcpDiscoverGetsAnOfferOf10_0_2_15WithRouterAndDns()
    {
        using var s = new SlirpBackend([]);
        Assert.True(s.SendFrame(DhcpDiscover(GuestMac, 0x1234abcd)));
        var f = WaitFrame(s, x => !DhcpReply(x).IsEmpty);
        var bootp = DhcpReply(f).ToArray();
        Assert.Equal(2, bootp[0]);                                             // BOOTREPLY
        Assert.Equal(0x1234abcdu, BinaryPrimitives.ReadUInt32BigEndian(bootp.AsSpan(4)));
        Assert.Equal(Ip("10.0.2.15"), bootp[16..20]);                          // yiaddr
        Assert.Equal(new byte[] { 2 }, DhcpOption(bootp, 53));                 // DHCPOFFER
        Assert.Equal(Ip("10.0.2.2"), DhcpOption(bootp, 3));                    // router
        Assert.Equal(Ip("10.0.2.3"), DhcpOption(bootp, 6));                    // DNS
        Assert.Equal(Ip("255.255.255.0"), DhcpOption(bootp, 1));               // netmask
    }

    [Fact]
    public void ArpForTheHostIsAnswered()
    {
        using var s = new SlirpBackend([]);
        s.SendFrame(ArpRequest(GuestMac, "10.0.2.15", "10.0.2.2"));
        var f = WaitFrame(s, x => EtherType(x) == TypeArp);
        Assert.Equal(GuestMac, f[0..6]);                                        // to the asker
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(f.AsSpan(14 + 6))); // ARP reply
        Assert.Equal(Ip("10.0.2.2"), f[(14 + 14)..(14 + 18)]);                 // sender protocol address
        Assert.Equal(f[6..12], f[(14 + 8)..(14 + 14)]);                        // sender MAC is the frame's source
        Assert.Equal(Ip("10.0.2.15"), f[(14 + 24)..(14 + 28)]);
    }

    [Fact]
    public async Task TcpSynTo10_0_2_2ReachesAListenerOnTheHostLoopback()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        using var s = new SlirpBackend([]);
        s.SendFrame(ArpRequest(GuestMac, "10.0.2.15", "10.0.2.2"));
        var reply = WaitFrame(s, x => EtherType(x) == TypeArp);
        var accept = listener.AcceptTcpClientAsync();
        s.SendFrame(Ethernet(reply[6..12], GuestMac, TypeIp, Ipv4(6, "10.0.2.15", "10.0.2.2", TcpSyn(40000, (ushort)port, 1000))));
        var done = await Task.WhenAny(accept, Task.Delay(5000));
        Assert.Same(accept, done);
        using var c = await accept;
        Assert.Equal(IPAddress.Loopback, ((IPEndPoint)c.Client.RemoteEndPoint!).Address);
        // And libslirp answers the guest's SYN with a SYN-ACK from 10.0.2.2.
        var synAck = WaitFrame(s, x => EtherType(x) == TypeIp && x[14 + 9] == 6);
        Assert.Equal(Ip("10.0.2.2"), synAck[(14 + 12)..(14 + 16)]);
        Assert.Equal(0x12, synAck[14 + 20 + 13] & 0x12);
        Assert.Equal(1001u, BinaryPrimitives.ReadUInt32BigEndian(synAck.AsSpan(14 + 20 + 8)));
    }

    [Fact]
    public void HostfwdTurnsAHostConnectionIntoASynToTheGuestPort()
    {
        int port = FreePort();
        using var s = new SlirpBackend([HostForward.Parse($"tcp:127.0.0.1:{port}-:22")]);
        // The guest makes itself known (libslirp learns its MAC from the ARP request).
        s.SendFrame(ArpRequest(GuestMac, "10.0.2.15", "10.0.2.2"));
        WaitFrame(s, x => EtherType(x) == TypeArp);
        using var client = new TcpClient();
        var connect = client.ConnectAsync(IPAddress.Loopback, port);
        var syn = WaitFrame(s, x => EtherType(x) == TypeIp && x[14 + 9] == 6);
        Assert.Equal(GuestMac, syn[0..6]);
        Assert.Equal(Ip("10.0.2.15"), syn[(14 + 16)..(14 + 20)]);
        Assert.Equal(22, BinaryPrimitives.ReadUInt16BigEndian(syn.AsSpan(14 + 20 + 2)));
        Assert.Equal(0x02, syn[14 + 20 + 13] & 0x12); // SYN without ACK
        GC.KeepAlive(connect);
    }

    [Theory]
    [InlineData("tcp:127.0.0.1:2222")]
    [InlineData("icmp:127.0.0.1:2222-:22")]
    [InlineData("tcp:127.0.0.1:99999-:22")]
    [InlineData("tcp:localhost:2222-:22")]
    [InlineData("tcp:127.0.0.1:2222-:0")]
    public void BadHostfwdRulesAreHostErrors(string rule)
    {
        var e = Assert.Throws<HostConfigException>(() => HostForward.Parse(rule));
        Assert.Contains(rule, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void SeveralRulesSeparatedBySemicolonsAndAPortInUseIsAHostError()
    {
        var r = SlirpBackend.ParseForwards("tcp:127.0.0.1:2222-:22;udp::5353-10.0.2.15:53");
        Assert.Equal(2, r.Length);
        Assert.True(r[1].Udp);
        Assert.Equal(IPAddress.Any, r[1].HostAddress);
        Assert.Equal(53, r[1].GuestPort);
        using var busy = new TcpListener(IPAddress.Loopback, 0);
        busy.Start();
        int port = ((IPEndPoint)busy.LocalEndpoint).Port;
        var e = Assert.Throws<HostConfigException>(() => new SlirpBackend([HostForward.Parse($"tcp:127.0.0.1:{port}-:22")]));
        Assert.Contains($"127.0.0.1:{port}", e.Message, StringComparison.Ordinal);
    }
}
