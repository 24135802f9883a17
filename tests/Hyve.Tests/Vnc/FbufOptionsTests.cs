// SPDX-License-Identifier: BSD-2-Clause
using System.Net;
using System.Net.Sockets;
using Hyve.Display;
using Hyve.Vnc;
using Xunit;

namespace Hyve.Tests.Vnc;

/// <summary>bhyve's fbuf settings (bhyve(8) "Framebuffer device settings") and the UNIX-socket server.</summary>
public class FbufOptionsTests
{
    private static FbufOptions Parse(params (string K, string V)[] kv) =>
        FbufOptions.Parse(kv.ToDictionary(p => p.K, p => p.V), "pci.0.29.0");

    [Fact]
    public void DefaultsAreBhyves()
    {
        var o = Parse();
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 5900), o.Tcp);
        Assert.Equal((1024, 768, false, FbufVga.Io), (o.Width, o.Height, o.Wait, o.Vga));
        Assert.Null(o.Password);
    }

    [Fact]
    public void TcpTakesIpv4Ipv6AndABarePort()
    {
        Assert.Equal(new IPEndPoint(IPAddress.Any, 5901), Parse(("tcp", "0.0.0.0:5901")).Tcp);
        Assert.Equal(new IPEndPoint(IPAddress.IPv6Loopback, 5902), Parse(("tcp", "[::1]:5902")).Tcp);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 5903), Parse(("tcp", "5903")).Tcp);
        var o = Parse(("unix", "/tmp/x.sock"), ("w", "1920"), ("h", "1080"), ("password", "pw"), ("wait", "true"), ("vga", "off"));
        Assert.Equal(("/tmp/x.sock", 1920, 1080, "pw", true, FbufVga.Off), (o.UnixPath, o.Width, o.Height, o.Password, o.Wait, o.Vga));
        Assert.Null(o.Tcp);
    }

    [Theory]
    [InlineData("tcp", "127.0.0.1:99999")]
    [InlineData("w", "100000")]
    [InlineData("h", "12")]
    [InlineData("vga", "maybe")]
    [InlineData("colour", "blue")]
    public void BadSettingsAreHostErrorsNamingTheKey(string key, string value)
    {
        var e = Assert.Throws<HostConfigException>(() => Parse((key, value)));
        Assert.Contains(key, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TheServerListensOnAUnixSocketAndRemovesItAtTheEnd()
    {
        string path = Path.Combine(Path.GetTempPath(), $"hyve-vnc-{Guid.NewGuid():N}.sock");
        var surface = new FakeSurface(64, 64);
        surface.Pattern(7);
        using (var server = RfbServer.Start(new FrameSource(surface, 64, 64), new UnixDomainSocketEndPoint(path), null, "unix-vm"))
        {
            using var c = new RfbTestClient(new UnixDomainSocketEndPoint(path));
            Assert.Equal(0, c.Handshake());
            c.SetEncodings(16);
            c.Request(incremental: false);
            c.ReadUpdate();
            Assert.Equal(surface.Get(10, 40), c.Pixels[40 * 64 + 10]);
        }
        Assert.False(File.Exists(path));
    }
}

/// <summary>The frame source's cheap look at a still screen.</summary>
public class FrameSourceTests
{
    [Fact]
    public void AnInterlacedLookSeesTextAtOnceAndAOneLineChangeWithinEightLooks()
    {
        var surface = new FakeSurface(128, 128);
        surface.Pattern(8);
        var src = new FrameSource(surface, 128, 128);
        Assert.True(src.Tick());
        Assert.False(src.Tick(8, 0));
        for (int y = 40; y < 56; y++) surface.Put(5, y, 0xffffff); // a glyph-high stroke
        Assert.True(src.Tick(8, 3));
        Assert.Equal(0xffffffu, src.Pixels[50 * 128 + 5] & 0xffffff);
        surface.Put(9, 61, 0x123456);                             // one line only
        int looks = 0;
        while (!src.Tick(8, looks)) looks++;
        Assert.True(looks < 8);
        Assert.Equal(0x123456u, src.Pixels[61 * 128 + 9] & 0xffffff);
    }
}
