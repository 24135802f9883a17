// SPDX-License-Identifier: BSD-2-Clause
using System.Collections.Concurrent;
using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace Hyve.Gdb;

public sealed partial class GdbServer
{
    /// <summary>One connected debugger: a reader thread frames packets; this thread answers them and reports stops.</summary>
    private sealed partial class Session(GdbServer server, Socket socket)
    {
        private readonly BlockingCollection<Event> _events = new();
        private readonly object _writeLock = new();
        private readonly ManualResetEventSlim _ended = new(false);
        private volatile bool _noAck;
        private volatile bool _closed;
        private bool _running; // vCPUs released by c/s: a stop reply is owed
        private int _gThread = 1, _cThread = -1; // gdb thread ids (vCPU + 1); -1 all, 0 any
        private string _lastStop = "S05";

        public void Post(Event e)
        {
            try { _events.Add(e); }
            catch (InvalidOperationException) { }
        }

        public void Close()
        {
            if (_closed) return;
            _closed = true;
            try { socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            socket.Close();
            _events.CompleteAdding();
        }

        /// <summary>Waits until <see cref="Run"/> has returned.</summary>
        public void WaitEnded(int timeoutMs) => _ended.Wait(timeoutMs);

        public void Run()
        {
            try { RunEvents(); }
            finally { _ended.Set(); }
        }

        private void RunEvents()
        {
            server.Attach();
            _lastStop = "T05thread:01;";
            var reader = new Thread(ReadLoop) { Name = "gdb-reader", IsBackground = true };
            reader.Start();
            foreach (var e in _events.GetConsumingEnumerable())
            {
                switch (e.Kind)
                {
                    case EventKind.Closed:
                        return;
                    case EventKind.Exited:
                        // gdb: "[Inferior 1 (Remote target) exited with code NN]". A debugger looking at a stopped
                        // guest asked for nothing: it sees the connection close.
                        if (_running) Send($"W{e.Vcpu & 0xff:x2}");
                        return;
                    case EventKind.Interrupt:
                        if (!_running) break;
                        server.StopAll();
                        lock (server._lock) server._stopPending = true;
                        ReportStop($"T02thread:{1:x2};");
                        break;
                    case EventKind.Stop:
                        if (!_running) break;
                        server.StopAll();
                        ReportStop($"T05thread:{e.Vcpu + 1:x2};{e.Text}");
                        break;
                    case EventKind.Packet:
                        if (Trace) Console.Error.WriteLine($"gdb: <- {e.Text}");
                        string? reply;
                        try
                        {
                            reply = Handle(e.Text!);
                        }
                        catch (Exception ex) when (ex is not (IOException or SocketException or ObjectDisposedException or TimeoutException))
                        {
                            // A packet no handler foresaw: an error reply, and the session goes on (the guest never
                            // pays for a debugger's malformed packet).
                            if (Trace) Console.Error.WriteLine($"gdb: packet '{e.Text}' failed: {ex.GetType().Name}");
                            FaultHook?.Invoke(ex);
                            reply = ErrInvalid;
                        }
                        if (reply is not null) Send(reply);
                        if (_closed) return;
                        break;
                }
            }
        }

        private void ReportStop(string stop)
        {
            _running = false;
            _lastStop = stop;
            int t = ParseStopThread(stop);
            _gThread = t;
            Send(stop);
        }

        private static int ParseStopThread(string stop)
        {
            int i = stop.IndexOf("thread:", StringComparison.Ordinal);
            if (i < 0) return 1;
            int end = stop.IndexOf(';', i);
            if (end < 0) end = stop.Length;
            return int.TryParse(stop.AsSpan(i + 7, end - i - 7), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int t) ? t : 1;
        }

        // Framing: $payload#cs, acks, and the out-of-band Ctrl-C byte. Packets larger than MaxPacket are refused
        // with '-' and dropped without reaching the command handler.
        private void ReadLoop()
        {
            var buf = new byte[4096];
            var packet = new StringBuilder();
            int state = 0; // 0 idle, 1 in payload, 2 first checksum digit, 3 second
            bool oversized = false;
            int sum = 0, cs = 0;
            try
            {
                while (true)
                {
                    int n = socket.Receive(buf);
                    if (n <= 0) break;
                    for (int i = 0; i < n; i++)
                    {
                        byte b = buf[i];
                        switch (state)
                        {
                            case 0:
                                if (b == 0x03) Post(new Event(EventKind.Interrupt));
                                else if (b == (byte)'$') { packet.Clear(); sum = 0; oversized = false; state = 1; }
                                break; // '+', '-' and noise between packets are ignored
                            case 1:
                                if (b == (byte)'#') { state = 2; break; }
                                if (b == (byte)'$') { packet.Clear(); sum = 0; oversized = false; break; } // a restart
                                sum += b;
                                if (packet.Length >= MaxPacket) oversized = true;
                                else packet.Append((char)b);
                                break;
                            case 2:
                                cs = HexDigit(b) << 4;
                                state = 3;
                                break;
                            case 3:
                                cs |= HexDigit(b);
                                state = 0;
                                bool good = cs == (sum & 0xff) && !oversized;
                                if (!_noAck || oversized) SendRaw(good ? "+" : "-");
                                if (good) Post(new Event(EventKind.Packet, 0, packet.ToString()));
                                break;
                        }
                    }
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            Post(new Event(EventKind.Closed));
        }

        private static int HexDigit(byte b) => b switch
        {
            >= (byte)'0' and <= (byte)'9' => b - '0',
            >= (byte)'a' and <= (byte)'f' => b - 'a' + 10,
            >= (byte)'A' and <= (byte)'F' => b - 'A' + 10,
            _ => 0x100, // never matches a checksum
        };

        private void SendRaw(string s)
        {
            var bytes = Encoding.Latin1.GetBytes(s);
            lock (_writeLock)
            {
                try { socket.Send(bytes); }
                catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            }
        }

        private void Send(string payload)
        {
            var sb = new StringBuilder(payload.Length + 4);
            int sum = 0;
            sb.Append('$');
            foreach (char c in payload)
            {
                sb.Append(c);
                sum += (byte)c;
            }
            sb.Append('#').Append((sum & 0xff).ToString("x2", CultureInfo.InvariantCulture));
            SendRaw(sb.ToString());
        }

        // Binary-escapes data for qXfer replies: '#', '$', '}' and '*' become '}' followed by the byte XOR 0x20.
        private static string EscapeBinary(string s)
        {
            var sb = new StringBuilder(s.Length);
            foreach (char c in s)
            {
                if (c is '#' or '$' or '}' or '*') sb.Append('}').Append((char)(c ^ 0x20));
                else sb.Append(c);
            }
            return sb.ToString();
        }

        private static byte[] UnescapeBinary(ReadOnlySpan<char> s)
        {
            var list = new List<byte>(s.Length);
            for (int i = 0; i < s.Length; i++)
            {
                if (s[i] == '}' && i + 1 < s.Length) list.Add((byte)(s[++i] ^ 0x20));
                else list.Add((byte)s[i]);
            }
            return [.. list];
        }
    }
}
