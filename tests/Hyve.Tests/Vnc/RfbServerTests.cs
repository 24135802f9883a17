// SPDX-License-Identifier: BSD-2-Clause
using System.Net;
using Hyve.Display;
using Hyve.Vnc;
using Xunit;

namespace Hyve.Tests.Vnc;

/// <summary>A framebuffer in an array with a settable mode (32 bpp little-endian unless changed).</summary>
public sealed class FakeSurface : IDisplaySurface
{
    private int _gen;
    public byte[] Bytes = new byte[4 << 20];
    public DisplayMode Current;
    public FakeSurface(int w, int h) => SetMode(w, h);
    public void SetMode(int w, int h, int bpp = 32)
    {
        Current = new DisplayMode(true, w, h, bpp, w * ((bpp + 7) / 8), 0, false);
        _gen++;
    }
    public DisplayMode Mode => Current;
    public int ModeGeneration => _gen;
    public ReadOnlySpan<byte> Memory => Bytes;
    public void CopyPalette(Span<uint> palette) { for (int i = 0; i < palette.Length; i++) palette[i] = (uint)(i * 0x010101); }
    public void Put(int x, int y, uint rgb) => BitConverter.TryWriteBytes(Bytes.AsSpan((y * Current.Width + x) * 4), rgb);
    public uint Get(int x, int y) => BitConverter.ToUInt32(Bytes, (y * Current.Width + x) * 4) & 0xffffff;
    /// <summary>Fills with something a codec must get exactly right: gradients, noise, text-like strokes and flat areas.</summary>
    public void Pattern(int seed)
    {
        var rnd = new Random(seed);
        int w = Current.Width, h = Current.Height;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                uint v = y < h / 4 ? (uint)(x * 255 / w << 16 | y * 255 / h << 8 | (x ^ y) & 0xff)
                    : y < h / 2 ? (uint)rnd.Next(0x1000000)
                    : y < 3 * h / 4 ? ((x / 3 + y / 5) % 7 == 0 ? 0xffff00u : 0x000000u)
                    : 0x203040u;
                Put(x, y, v);
            }
    }
}

/// <summary>The VNC server against RFC 6143, driven by <see cref="RfbTestClient"/> over TCP on the loopback.</summary>
public class RfbServerTests
{
    private static (RfbServer Server, FakeSurface Surface) Start(int w = 320, int h = 200, string? password = null)
    {
        var surface = new FakeSurface(w, h);
        var server = RfbServer.Start(new FrameSource(surface, w, h), new IPEndPoint(IPAddress.Loopback, 0), password, "test-vm");
        return (server, surface);
    }

    private static void AssertPicture(FakeSurface s, RfbTestClient c)
    {
        Assert.Equal(s.Current.Width, c.Width);
        Assert.Equal(s.Current.Height, c.Height);
        for (int y = 0; y < c.Height; y++)
            for (int x = 0; x < c.Width; x++)
                if (s.Get(x, y) != c.Pixels[y * c.Width + x])
                    Assert.Fail($"pixel ({x},{y}): server 0x{s.Get(x, y):x6}, client 0x{c.Pixels[y * c.Width + x]:x6}");
    }

    [Fact]
    public void DesSpeaksFips46Vectors()
    {
        // The classic worked example (key 133457799BBCDFF1, plaintext 0123456789ABCDEF).
        var outp = new byte[8];
        VncDes.EncryptBlock(Convert.FromHexString("133457799BBCDFF1"), Convert.FromHexString("0123456789ABCDEF"), outp);
        Assert.Equal("85E813540F0AB405", Convert.ToHexString(outp));
        VncDes.EncryptBlock(Convert.FromHexString("0E329232EA6D0D73"), Convert.FromHexString("8787878787878787"), outp);
        Assert.Equal("0000000000000000", Convert.ToHexString(outp));
    }

    [Theory]
    [InlineData(8)]
    [InlineData(7)]
    [InlineData(3)]
    public void HandshakeWithoutPasswordOffersNoneAndSendsServerInit(int minor)
    {
        var (server, _) = Start();
        using var _s = server;
        using var c = new RfbTestClient(server.LocalEndPoint);
        int result = c.Handshake(minor);
        Assert.Equal("RFB 003.008\n", c.ServerVersion);
        Assert.Equal([1], c.SecurityTypes);
        // 3.8 sends a SecurityResult after None; 3.3 and 3.7 do not.
        Assert.Equal(minor == 8 ? 0 : -1, result);
        Assert.Equal((320, 200, "test-vm"), (c.Width, c.Height, c.Name));
        Assert.Equal(PixelFormat.Server, c.ServerFormat);
        Assert.True(server.WaitForClient(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void VncAuthenticationAcceptsThePasswordAndRefusesAnotherWithAReason()
    {
        var (server, _) = Start(password: "s3cret!x");
        using var _s = server;
        using (var good = new RfbTestClient(server.LocalEndPoint))
        {
            Assert.Equal(0, good.Handshake(8, "s3cret!x"));
            Assert.Equal([2], good.SecurityTypes);
            Assert.Equal(320, good.Width);
        }
        using (var old = new RfbTestClient(server.LocalEndPoint))
        {
            Assert.Equal(0, old.Handshake(3, "s3cret!x"));
            Assert.Equal([2], old.SecurityTypes);
        }
        using var bad = new RfbTestClient(server.LocalEndPoint);
        Assert.Equal(1, bad.Handshake(8, "guess"));
        Assert.Equal("authentication failed", bad.ReadReason());
        Assert.True(bad.ClosedByServer());
    }

    [Fact]
    public void RawUpdateCarriesThePictureInTheClientsPixelFormat()
    {
        var (server, surface) = Start();
        using var _s = server;
        surface.Pattern(1);
        using var c = new RfbTestClient(server.LocalEndPoint);
        c.Handshake();
        c.SetEncodings(0);
        c.Request(incremental: false);
        var rects = c.ReadUpdate();
        Assert.All(rects, r => Assert.Equal(0, r.Encoding));
        AssertPicture(surface, c);
        // 16-bit big-endian RGB565: the decoder scales back, so compare at 5/6/5 bits.
        c.SetPixelFormat(new PixelFormat(16, 16, true, true, 31, 63, 31, 11, 5, 0));
        c.Request(incremental: false);
        c.ReadUpdate();
        for (int y = 0; y < c.Height; y += 7)
            for (int x = 0; x < c.Width; x += 5)
            {
                uint s = surface.Get(x, y), d = c.Pixels[y * c.Width + x];
                Assert.True(Math.Abs((int)(s >> 16) - (int)(d >> 16)) <= 8 && Math.Abs((int)(s >> 8 & 0xff) - (int)(d >> 8 & 0xff)) <= 4,
                    $"({x},{y}) 0x{s:x6} vs 0x{d:x6}");
            }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ZrleRoundTripsEveryKindOfTileAndOnlyChangedTilesFollow(bool bigEndian)
    {
        var (server, surface) = Start(333, 201); // edges that are not multiples of 64
        using var _s = server;
        surface.Pattern(2);
        using var c = new RfbTestClient(server.LocalEndPoint);
        c.Handshake();
        c.SetPixelFormat(PixelFormat.Server with { BigEndian = bigEndian, RedShift = 0, BlueShift = 16 });
        c.SetEncodings(16, 0);
        c.Request(incremental: false);
        var first = c.ReadUpdate();
        Assert.All(first, r => Assert.Equal(16, r.Encoding));
        AssertPicture(surface, c);
        long fullBytes = c.UpdateBytes;
        Assert.True(fullBytes < 333 * 201 * 3, $"ZRLE sent {fullBytes} bytes for a picture of {333 * 201 * 3}");
        // A change inside one tile: the next incremental update is that tile alone.
        for (int x = 70; x < 90; x++) surface.Put(x, 70, 0xff0000);
        c.Request(incremental: true);
        var next = c.ReadUpdate();
        Assert.Equal([new RfbRect(64, 64, 64, 64, 16)], next);
        AssertPicture(surface, c);
    }

    [Fact]
    public void AScrolledScreenGoesAsCopyRectPlusTheNewLines()
    {
        var (server, surface) = Start(256, 256);
        using var _s = server;
        surface.Pattern(3);
        using var c = new RfbTestClient(server.LocalEndPoint);
        c.Handshake();
        c.SetEncodings(16, 1, 0);
        c.Request(incremental: false);
        c.ReadUpdate();
        c.Request(incremental: true);
        Thread.Sleep(100); // the server is waiting for a change now
        // Scroll up by 16 lines and draw a new bottom line, as a console does.
        var b = surface.Bytes;
        Array.Copy(b, 16 * 256 * 4, b, 0, (256 - 16) * 256 * 4);
        for (int y = 240; y < 256; y++) for (int x = 0; x < 256; x++) surface.Put(x, y, (uint)(x * 0x10101));
        long before = c.UpdateBytes;
        var rects = c.ReadUpdate();
        Assert.Equal(1, rects[0].Encoding);
        Assert.Equal(new RfbRect(0, 0, 256, 240, 1), rects[0]);
        AssertPicture(surface, c);
        Assert.True(c.UpdateBytes - before < 256 * 64 * 4, $"a scroll cost {c.UpdateBytes - before} bytes");
    }

    [Fact]
    public void AModeChangeSendsDesktopSizeThenTheNewPicture()
    {
        var (server, surface) = Start(320, 200);
        using var _s = server;
        using var c = new RfbTestClient(server.LocalEndPoint);
        c.Handshake();
        c.SetEncodings(16, -223);
        c.Request(incremental: false);
        c.ReadUpdate();
        c.Request(incremental: true);
        surface.SetMode(640, 480);
        surface.Pattern(4);
        var rects = c.ReadUpdate();
        Assert.Equal(new RfbRect(0, 0, 640, 480, -223), rects[0]);
        // The rest of that update, and maybe one more, bring the whole new picture.
        c.Request(incremental: false);
        c.ReadUpdate();
        AssertPicture(surface, c);
    }

    [Fact]
    public void MalformedMessagesCloseThatClientOnlyAndTheOthersGoOn()
    {
        var (server, surface) = Start();
        using var _s = server;
        surface.Pattern(5);
        using var good = new RfbTestClient(server.LocalEndPoint);
        good.Handshake();
        good.SetEncodings(0);
        using (var c = new RfbTestClient(server.LocalEndPoint))
        {
            c.Handshake();
            c.Send(0xff); // no such message type
            Assert.True(c.ClosedByServer());
        }
        using (var c = new RfbTestClient(server.LocalEndPoint))
        {
            c.Handshake();
            c.Send(2, 0, 0xff, 0xff); // SetEncodings with 65535 entries
            Assert.True(c.ClosedByServer());
        }
        using (var c = new RfbTestClient(server.LocalEndPoint))
        {
            c.Handshake();
            c.SetPixelFormat(new PixelFormat(24, 24, false, true, 255, 255, 255, 16, 8, 0)); // 24 bpp is not RFB
            Assert.True(c.ClosedByServer());
        }
        using (var c = new RfbTestClient(server.LocalEndPoint))
        {
            c.Send("RFB 004.000\n"u8.ToArray()); // wrong major version (sent before reading the server's)
            Assert.True(c.ClosedByServer());
        }
        good.Request(incremental: false);
        good.ReadUpdate();
        AssertPicture(surface, good);
    }

    [Fact]
    public void APortInUseIsAHostError()
    {
        var (server, _) = Start();
        using var _s = server;
        var ex = Assert.Throws<HostConfigException>(() =>
            RfbServer.Start(new FrameSource(new FakeSurface(8, 8), 8, 8), server.LocalEndPoint, null, "x"));
        Assert.Contains("VNC server on", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ASlowClientDoesNotHoldBackAFastOne()
    {
        var (server, surface) = Start(256, 256);
        using var _s = server;
        using var slow = new RfbTestClient(server.LocalEndPoint);
        slow.Handshake();
        slow.SetEncodings(0); // never reads: its socket buffers fill
        using var fast = new RfbTestClient(server.LocalEndPoint);
        fast.Handshake();
        fast.SetEncodings(0);
        for (int i = 0; i < 20; i++)
        {
            surface.Pattern(100 + i);
            slow.Request(incremental: false);
            fast.Request(incremental: false);
            fast.ReadUpdate();
        }
        surface.Pattern(999);
        fast.Request(incremental: false);
        fast.ReadUpdate();
        AssertPicture(surface, fast);
    }
}
