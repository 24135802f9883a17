// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Net;

namespace Hyve.Display;

/// <summary>What <c>vga=</c> asks of the display: bhyve's <c>io</c> (default: legacy VGA ports decoded), <c>off</c>, <c>on</c>.</summary>
public enum FbufVga
{
    /// <summary>The VGA and DISPI I/O ports answer at their legacy addresses (bhyve's default).</summary>
    Io,
    /// <summary>Only the PCI BARs decode.</summary>
    Off,
    /// <summary>As <see cref="Io"/>, plus the VGA BIOS as the function's option ROM and text mode 3 on the screen.</summary>
    On,
}

/// <summary>
/// bhyve's fbuf settings (pci_fbuf.c, bhyve(8) "Framebuffer device settings"): <c>tcp=[ADDR:]PORT</c> (IPv4, or
/// <c>[IPv6]</c>; default 127.0.0.1:5900), or <c>unix=PATH</c>; <c>w</c>/<c>h</c> the preferred mode (default
/// 1024x768); <c>password</c> turns on VNC authentication; <c>wait</c> holds the boot until a VNC client connects;
/// <c>vga=on|io|off</c>: <c>on</c> also gives the function SeaBIOS's VGA BIOS (Debian's vgabios-stdvga.bin) as its
/// expansion ROM and shows VGA text mode 3 (the buffer at 0xB8000) while no DISPI mode is set, for SeaBIOS and vgacon.
/// </summary>
public sealed record FbufOptions(EndPoint? Tcp, string? UnixPath, int Width, int Height, string? Password, bool Wait, FbufVga Vga)
{
    /// <summary>Default VNC port.</summary>
    public const int DefaultPort = 5900;

    /// <summary>bhyve's defaults.</summary>
    public static FbufOptions Default { get; } = new(new IPEndPoint(IPAddress.Loopback, DefaultPort), null, 1024, 768, null, false, FbufVga.Io);

    /// <summary>Reads the conf keys; throws <see cref="HostConfigException"/> naming the bad one.</summary>
    public static FbufOptions Parse(IReadOnlyDictionary<string, string> conf, string where)
    {
        var o = Default;
        foreach (var (key, value) in conf)
        {
            switch (key)
            {
                case "tcp":
                case "rfb": // bhyve's older name
                    o = o with { Tcp = ParseEndPoint(value, where) };
                    break;
                case "unix":
                    if (value.Length == 0) throw new HostConfigException($"{where}.unix: empty socket path");
                    o = o with { UnixPath = value, Tcp = null };
                    break;
                case "w":
                    o = o with { Width = Dimension(value, where + ".w", 640, StdVga.MaxXres) };
                    break;
                case "h":
                    o = o with { Height = Dimension(value, where + ".h", 480, StdVga.MaxYres) };
                    break;
                case "password":
                    o = o with { Password = value };
                    break;
                case "wait":
                    o = o with { Wait = value is "true" or "1" or "yes" or "on" };
                    break;
                case "vga":
                    o = o with
                    {
                        Vga = value switch
                        {
                            "io" => FbufVga.Io,
                            "off" => FbufVga.Off,
                            "on" => FbufVga.On,
                            _ => throw new HostConfigException($"{where}.vga: '{value}' is not on, off or io"),
                        },
                    };
                    break;
                default:
                    throw new HostConfigException($"{where}: unknown fbuf option '{key}'");
            }
        }
        if (conf.ContainsKey("unix")) o = o with { Tcp = null };
        return o;
    }

    private static int Dimension(string s, string what, int min, int max)
    {
        if (!int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) || v < min || v > max)
            throw new HostConfigException($"{what}: '{s}' is not a number from {min} to {max}");
        return v;
    }

    /// <summary>Parses bhyve's <c>IPv4:port</c>, <c>[IPv6]:port</c> or a bare port (on 127.0.0.1).</summary>
    public static IPEndPoint ParseEndPoint(string s, string where)
    {
        string host = "127.0.0.1", port = s;
        if (s.StartsWith('['))
        {
            int close = s.IndexOf("]:", StringComparison.Ordinal);
            if (close < 0) throw new HostConfigException($"{where}.tcp: '{s}' is not [IPv6]:port");
            host = s[1..close];
            port = s[(close + 2)..];
        }
        else if (s.LastIndexOf(':') is int c and >= 0)
        {
            host = s[..c];
            port = s[(c + 1)..];
        }
        if (!IPAddress.TryParse(host, out var ip))
        {
            try { ip = Dns.GetHostAddresses(host)[0]; }
            catch (Exception e) when (e is System.Net.Sockets.SocketException or ArgumentException or IndexOutOfRangeException)
            {
                throw new HostConfigException($"{where}.tcp: cannot resolve '{host}'");
            }
        }
        if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int p) || p > 65535)
            throw new HostConfigException($"{where}.tcp: '{port}' is not a port number");
        return new IPEndPoint(ip, p);
    }
}
