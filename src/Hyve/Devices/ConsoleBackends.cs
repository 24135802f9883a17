// SPDX-License-Identifier: BSD-2-Clause
using System.Net.Sockets;
using Hyve.Config;

namespace Hyve.Devices;

/// <summary>
/// Makes a console backend from a backend spec, the value of <c>lpc.comN.path</c> (or a PCI uart's <c>path</c>):
/// <list type="bullet">
/// <item><c>stdio</c>: hyve's stdin and stdout (stdin raw while the VM runs if it is a terminal). One port at most.</item>
/// <item><c>unix:PATH</c>, or a PATH ending in <c>.sock</c> that does not exist yet: hyve listens on a new UNIX socket there
/// (mode 0600) and serves one client at a time; the socket file is removed when the VM ends.</item>
/// <item>An existing UNIX socket: hyve connects to it as a client; if nobody listens there (a stale socket left
/// by a dead process), hyve replaces it with its own listening socket.</item>
/// <item>An existing character device (a tty, a pty, <c>/dev/null</c>): opened read-write, raw mode if a tty (bhyve's only kind of path).</item>
/// <item>An existing FIFO: output only, opened without waiting for a reader.</item>
/// <item>Any other path: a file the guest's output is appended to (created if missing); no input.</item>
/// </list>
/// </summary>
public static class ConsoleBackends
{
    private static int _stdioTaken;

    /// <summary>Creates the backend for <paramref name="spec"/>; throws <see cref="ConfigException"/> with a one-line reason when it cannot.</summary>
    public static IConsoleBackend Create(string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (spec.Length == 0) throw new ConfigException("empty console backend");
        try
        {
            if (spec == "stdio")
            {
                if (Interlocked.Exchange(ref _stdioTaken, 1) != 0)
                    throw new ConfigException("stdio is already the console of another port");
                try
                {
                    return new StdioBackendLease(FdConsoleBackend.OpenStdio());
                }
                catch
                {
                    Volatile.Write(ref _stdioTaken, 0);
                    throw;
                }
            }
            if (spec.StartsWith("unix:", StringComparison.Ordinal))
            {
                string path = spec[5..];
                if (path.Length == 0) throw new ConfigException("empty socket path in console backend 'unix:'");
                return SocketConsoleBackend.Listen(path);
            }
            int type = ConsoleNative.FileType(spec);
            if (type == ConsoleNative.S_IFSOCK)
            {
                try
                {
                    return SocketConsoleBackend.Connect(spec);
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
                {
                    return SocketConsoleBackend.Listen(spec);
                }
            }
            if (type == ConsoleNative.S_IFCHR) return FdConsoleBackend.OpenDevice(spec);
            if (type == ConsoleNative.S_IFIFO) return FdConsoleBackend.OpenFifo(spec);
            if (type < 0 && spec.EndsWith(".sock", StringComparison.Ordinal)) return SocketConsoleBackend.Listen(spec);
            return new FileConsoleBackend(spec);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or SocketException or ArgumentException or NotSupportedException or Hyve.Vmm.Control.ControlServerException)
        {
            throw new ConfigException($"cannot open console backend '{spec}': {e.Message}");
        }
    }

    // Gives the stdio slot back when the VM's stdio console is disposed (a reset builds the devices again).
    private sealed class StdioBackendLease(FdConsoleBackend inner) : IConsoleBackend
    {
        private int _disposed;
        public bool HasInput => inner.HasInput;
        public void Attach(IConsoleReceiver receiver) => inner.Attach(receiver);
        public void Write(byte value) => inner.Write(value);
        public bool OutputFull => inner.OutputFull;
        public void Flush() => inner.Flush();
        public void ReceiverHasRoom() => inner.ReceiverHasRoom();

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            inner.Dispose();
            Volatile.Write(ref _stdioTaken, 0);
        }
    }
}
