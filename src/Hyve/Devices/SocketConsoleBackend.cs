// SPDX-License-Identifier: BSD-2-Clause
using System.Net.Sockets;

namespace Hyve.Devices;

/// <summary>
/// A console on a UNIX stream socket. As a server, hyve creates the socket (mode 0600), takes one client at a
/// time and, when that client leaves, waits for the next; output while nobody is connected is dropped, as on a
/// serial line with nothing plugged in. As a client, hyve connects to a socket someone else listens on; input ends
/// when the peer closes. Either way guest output and input travel over the one connection.
/// </summary>
public sealed class SocketConsoleBackend : ConsoleBackend
{
    private readonly Socket? _listener;
    private readonly string? _createdPath;
    private readonly object _clientLock = new();
    private Socket? _client;

    private SocketConsoleBackend(Socket? listener, Socket? client, string? createdPath)
    {
        _listener = listener;
        _client = client;
        _createdPath = createdPath;
    }

    /// <summary>Creates a listening socket at <paramref name="path"/> (replacing a stale socket file left by a dead process).</summary>
    public static SocketConsoleBackend Listen(string path)
    {
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            // Only a socket whose process is gone may be replaced; a file or a symlink there is an error.
            Hyve.Vmm.Control.RunFiles.ReplaceStaleSocket(path);
            uint oldMask = Hyve.Vmm.Native.Libc.Umask(0x7f /* 0177 */); // created 0600, no window for others to connect
            try { listener.Bind(new UnixDomainSocketEndPoint(path)); }
            finally { Hyve.Vmm.Native.Libc.Umask(oldMask); }
            Hyve.Vmm.Control.RunFiles.RecordOwnSocket(path);
            listener.Listen(1);
        }
        catch
        {
            listener.Dispose();
            throw;
        }
        return new SocketConsoleBackend(listener, null, path);
    }

    /// <summary>Connects to the listening socket at <paramref name="path"/>; throws SocketException when nobody listens there.</summary>
    public static SocketConsoleBackend Connect(string path)
    {
        var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            client.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch
        {
            client.Dispose();
            throw;
        }
        return new SocketConsoleBackend(null, client, null);
    }

    /// <summary>True while a peer is connected.</summary>
    public bool IsConnected
    {
        get { lock (_clientLock) return _client is not null; }
    }

    /// <inheritdoc/>
    public override bool HasInput => true;

    /// <inheritdoc/>
    protected override void WriteOutput(ReadOnlySpan<byte> data)
    {
        // Sent outside the lock: a client that never reads blocks only the output thread, and disposal's shutdown
        // (which takes the lock) still gets through to unblock it.
        Socket? client;
        lock (_clientLock) client = _client;
        if (client is null) return;
        try
        {
            while (data.Length > 0 && !Stopping)
            {
                int n = client.Send(data);
                if (n <= 0) break;
                data = data[n..];
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // The peer went away mid-write; the input thread notices and (as a server) waits for the next one.
        }
    }

    /// <inheritdoc/>
    protected override int ReadInput(Span<byte> buffer)
    {
        while (!Stopping)
        {
            Socket? client;
            lock (_clientLock) client = _client;
            if (client is null)
            {
                if (_listener is null) return 0;
                try
                {
                    client = _listener.Accept();
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    return 0;
                }
                lock (_clientLock)
                {
                    if (Stopping) { client.Dispose(); return 0; }
                    _client = client;
                }
            }
            int n;
            try
            {
                n = client.Receive(buffer);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                n = 0;
            }
            if (n > 0) return n;
            lock (_clientLock)
            {
                if (ReferenceEquals(_client, client)) _client = null;
            }
            client.Dispose();
            if (_listener is null) return 0;
        }
        return 0;
    }

    /// <inheritdoc/>
    protected override void WakeInput()
    {
        _listener?.Dispose();
        lock (_clientLock)
        {
            try
            {
                _client?.Shutdown(SocketShutdown.Both);
            }
            catch (SocketException)
            {
                // Already disconnected.
            }
        }
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (Stopping) return;
        base.Dispose(disposing);
        lock (_clientLock)
        {
            _client?.Dispose();
            _client = null;
        }
        if (_createdPath is not null) Hyve.Vmm.Control.RunFiles.DeleteOwnSocket(_createdPath);
    }
}
