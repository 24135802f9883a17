// SPDX-License-Identifier: BSD-2-Clause
using System.Net;
using System.Net.Sockets;

namespace Hyve.Vnc;

/// <summary>A VNC key event: an X keysym pressed (true) or released.</summary>
public delegate void RfbKeyHandler(uint keysym, bool down);

/// <summary>A VNC pointer event: position in framebuffer pixels and the button mask (bit 0 left, 1 middle, 2 right, 3/4 wheel).</summary>
public delegate void RfbPointerHandler(int x, int y, int buttons, int width, int height);

/// <summary>
/// The VNC server (RFB 3.8, RFC 6143; 3.3 and 3.7 clients too), bhyve's rfb.c in role: it listens on TCP or a UNIX
/// socket, serves any number of clients, each on its own threads, and one refresher thread that compares the guest's
/// framebuffer with the server's copy at 30 Hz only while some client has asked for an update and sleeps otherwise. With
/// the framebuffer's dirty log it also sleeps while the guest writes nothing (woken by the first write, a mode or palette
/// change, or client input), so an idle screen costs no CPU.
/// No vCPU thread runs server code (the first framebuffer write after the refresher slept only sets its wake event); a client that reads slowly only delays its own next update, which then carries
/// the newest picture (frames in between are dropped for it).
/// </summary>
public sealed class RfbServer : IDisposable
{
    /// <summary>Milliseconds between refreshes while a client waits (about 30 Hz).</summary>
    public const int RefreshMs = 33;
    /// <summary>Milliseconds between refreshes once the screen has been still for a second.</summary>
    public const int IdleRefreshMs = 100;
    /// <summary>Milliseconds between refreshes once the screen has been still for about ten seconds; input from a
    /// client brings the refresh back to <see cref="RefreshMs"/> at once, so typing is not slowed.</summary>
    public const int StillRefreshMs = 250;

    private readonly Socket _listener;
    private readonly Thread _acceptThread, _refreshThread;
    private readonly List<RfbClient> _clients = [];
    private readonly object _gate = new();
    private readonly string? _unixPath;
    private readonly ManualResetEventSlim _firstClient = new(false);
    private readonly AutoResetEvent _wake = new(false);
    private volatile bool _input;
    private volatile bool _disposed;
    private int _wanting;
    private long _sleeps;

    /// <summary>Times the refresher went to sleep on the framebuffer's dirty log (for tests and diagnostics).</summary>
    public long Sleeps => Interlocked.Read(ref _sleeps);

    private RfbServer(Socket listener, FrameSource source, string? password, string name, string? unixPath)
    {
        _listener = listener;
        Source = source;
        Password = password;
        Name = name;
        _unixPath = unixPath;
        // The first write to the framebuffer after the refresher went to sleep wakes it (software CPU).
        if (source.Log is { } log) log.Dirtied += () => _wake.Set();
        _acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = "vnc-accept" };
        _refreshThread = new Thread(RefreshLoop) { IsBackground = true, Name = "vnc-refresh" };
    }

    /// <summary>Listens on <paramref name="endpoint"/> (an <see cref="IPEndPoint"/> or <see cref="UnixDomainSocketEndPoint"/>);
    /// throws <see cref="HostConfigException"/> when it cannot (the port in use, say).</summary>
    public static RfbServer Start(FrameSource source, EndPoint endpoint, string? password, string name)
    {
        string? unixPath = (endpoint as UnixDomainSocketEndPoint)?.ToString();
        var s = endpoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // SO_REUSEADDR alone (level 1, option 2), so a restart binds past old connections in TIME_WAIT; .NET's
            // ReuseAddress would add SO_REUSEPORT and let a second server share a port that is in use.
            if (endpoint is IPEndPoint) s.SetRawSocketOption(1, 2, BitConverter.GetBytes(1));
            s.Bind(endpoint);
            s.Listen(8);
        }
        catch (SocketException e)
        {
            s.Dispose();
            throw new HostConfigException($"VNC server on {endpoint}: {e.Message}");
        }
        var server = new RfbServer(s, source, password, name, unixPath);
        server._acceptThread.Start();
        server._refreshThread.Start();
        return server;
    }

    /// <summary>The picture it serves.</summary>
    public FrameSource Source { get; }
    /// <summary>The VNC password, or null for no authentication.</summary>
    public string? Password { get; }
    /// <summary>The desktop name sent in ServerInit.</summary>
    public string Name { get; }
    /// <summary>Where it listens (the bound port when 0 was asked for).</summary>
    public EndPoint LocalEndPoint => _listener.LocalEndPoint!;
    /// <summary>Receives key events.</summary>
    public RfbKeyHandler? Keyboard { get; set; }
    /// <summary>Receives pointer events.</summary>
    public RfbPointerHandler? Pointer { get; set; }

    /// <summary>Clients connected now (initialised or not).</summary>
    public int ClientCount
    {
        get { lock (_gate) return _clients.Count; }
    }

    /// <summary>Blocks until a client has completed the handshake (bhyve's <c>wait</c>).</summary>
    public void WaitForClient() => _firstClient.Wait();

    /// <summary>Blocks until a client has completed the handshake or <paramref name="timeout"/> passed.</summary>
    public bool WaitForClient(TimeSpan timeout) => _firstClient.Wait(timeout);

    private void AcceptLoop()
    {
        while (!_disposed)
        {
            Socket s;
            try { s = _listener.Accept(); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { if (_disposed) return; continue; }
            if (s.AddressFamily != AddressFamily.Unix) s.NoDelay = true;
            var c = new RfbClient(this, s);
            lock (_gate) _clients.Add(c);
            c.Start();
        }
    }

    internal void ClientReady() => _firstClient.Set();

    // A key or pointer event: the guest will likely draw soon, so look again now and keep looking often.
    internal void InputArrived()
    {
        _input = true;
        _wake.Set();
    }

    // A client's own look at the screen found a change: every client hears of it, as from the refresher.
    internal void PictureChanged()
    {
        RfbClient[] clients;
        lock (_gate) clients = [.. _clients];
        foreach (var c in clients) c.Signal();
    }

    internal void ClientClosed(RfbClient c)
    {
        lock (_gate) _clients.Remove(c);
    }

    // A client asked for an update (or stopped waiting): the refresher runs while at least one waits.
    internal void Wants(bool on)
    {
        lock (_gate)
        {
            _wanting += on ? 1 : -1;
            if (_wanting > 0) Monitor.PulseAll(_gate);
        }
    }

    private void RefreshLoop()
    {
        int still = 0, phase = 0;
        while (!_disposed)
        {
            RfbClient[] clients;
            lock (_gate)
            {
                while (_wanting <= 0 && !_disposed) Monitor.Wait(_gate);
                if (_disposed) return;
                clients = [.. _clients];
            }
            // Without a dirty log, a screen still for ~5 s is looked at one line in eight per refresh (see FrameSource.Tick(int, int)).
            bool changed = still > 70 && Source.Log is null ? Source.Tick(8, phase++) : Source.Tick();
            if (_input) { _input = false; still = 0; }
            if (changed)
            {
                still = 0;
                foreach (var c in clients) c.Signal();
            }
            else still++;
            if (Source.Log is { Notifies: true } log && Source.Quiet && log.Arm())
            {
                // Nothing written and nothing left to recheck: sleep until the guest writes the framebuffer, changes
                // mode or palette, a client types or points, or the server stops. An idle screen costs no wake-ups.
                Interlocked.Increment(ref _sleeps);
                _wake.WaitOne();
                // Let the guest finish what it started drawing before looking.
                if (!_disposed) _wake.WaitOne(RefreshMs / 2);
                continue;
            }
            _wake.WaitOne(still > 70 ? StillRefreshMs : still > 30 ? IdleRefreshMs : RefreshMs);
        }
    }

    /// <summary>Closes the listener and every client.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        lock (_gate) Monitor.PulseAll(_gate);
        _listener.Dispose();
        RfbClient[] clients;
        lock (_gate) clients = [.. _clients];
        foreach (var c in clients) c.Close(null);
        if (_unixPath is not null) try { File.Delete(_unixPath); } catch (IOException) { }
        _firstClient.Set();
        _wake.Set();
    }
}
