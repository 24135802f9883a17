// SPDX-License-Identifier: BSD-2-Clause
using System.Net.Sockets;
using Hyve.Devices;
using Hyve.Vnc;

namespace Hyve.Display;

/// <summary>
/// The graphical console of a VM with an fbuf device: the VNC server over the standard VGA's framebuffer, with key
/// events going to the 8042 through the <c>-K</c> keymap and pointer events to the virtio-input tablet when there is one. With <c>wait</c> the constructor returns only once a client
/// has connected, so the guest's first instruction runs with someone watching (bhyve's rfb_init wait).
/// </summary>
public sealed class VncConsole : IDisposable
{
    private readonly RfbServer _server;
    private readonly KeyMap _keys;
    private readonly I8042 _kbc;

    /// <summary>Starts serving <paramref name="vga"/>; throws <see cref="HostConfigException"/> when the socket cannot be bound.</summary>
    public VncConsole(StdVga vga, I8042 kbc, string vmName, string? layout, Hyve.Virtio.VirtioInput? tablet = null)
    {
        _keys = KeyMap.ForLayout(layout);
        _kbc = kbc;
        var o = vga.Options;
        var source = new FrameSource(vga, o.Width, o.Height);
        System.Net.EndPoint ep = o.UnixPath is not null ? new UnixDomainSocketEndPoint(o.UnixPath) : o.Tcp!;
        _server = RfbServer.Start(source, ep, o.Password, vmName);
        _server.Keyboard = OnKey;
        if (tablet is not null) _server.Pointer = tablet.Pointer;
        if (o.Wait)
        {
            Console.Error.WriteLine($"hyve: waiting for a VNC client on {ep}");
            _server.WaitForClient();
        }
    }

    /// <summary>Where the server listens.</summary>
    public System.Net.EndPoint LocalEndPoint => _server.LocalEndPoint;

    private void OnKey(uint keysym, bool down)
    {
        if (_keys.TryGet(keysym, out var key)) _kbc.KeyEvent(key.Code, key.Extended, down);
    }

    /// <summary>Stops the server and closes its clients.</summary>
    public void Dispose() => _server.Dispose();
}
