// SPDX-License-Identifier: BSD-2-Clause
using System.Net.Sockets;
using System.Text;
using Hyve.Display;
using Hyve.Gdb;
using Hyve.Soft;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vnc;
using GuestMemory = Hyve.Vmm.GuestMemory;

namespace Hyve.Fuzz;

/// <summary>
/// Fuzz targets for the three servers a peer talks to: the GDB remote protocol, the control socket (what hyvectl sends)
/// and the VNC server's client messages. Each drives the real server over a UNIX socket in this process, against a real
/// VM on the software CPU that idles in HLT (so a request reaches the same code as in hyve), sends the input, closes its
/// side and reads every reply until the server hangs up. A defect is an exception a server hid behind an error reply
/// (reported through the servers' fault hooks), an unhandled exception on a server thread, or a server that never ends
/// the conversation (<see cref="TimeoutException"/>).
/// Shared with the test suite, which replays each corpus through the same code (FuzzCorpusTests).
/// </summary>
public static class ProtocolTargets
{
    /// <summary>Target name to its body.</summary>
    public static readonly Dictionary<string, Action<byte[]>> All = new()
    {
        ["gdb"] = Gdb,
        ["control"] = Control,
        ["rfb"] = Rfb,
    };

    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(8);

    // ---- a VM for the servers -------------------------------------------------------------------------------------

    /// <summary>A 2-vCPU VM on the software CPU whose boot ROM is <c>sti; hlt; jmp $-3</c> at the reset vector: it idles,
    /// costs nothing while the fuzzer runs, and whatever a request does to it (a register write, a reset, a power-off)
    /// is undone by running it again from reset (the ROM is read-only).</summary>
    private sealed class IdleVm
    {
        public readonly Vm Vm;
        private readonly Thread _runner;
        private volatile bool _stop;

        public IdleVm(string name)
        {
            var mem = new GuestMemory(2ul << 20);
            Vm = new Vm(name, new CpuTopology(2, 1, 1, 2), mem, new ManualClock()) { Snapshots = new RefusingSnapshots() };
            var rom = new byte[0x10000];
            Array.Fill(rom, (byte)0xf4);
            rom[0xfff0] = 0xfb; rom[0xfff1] = 0xf4; rom[0xfff2] = 0xeb; rom[0xfff3] = 0xfd;
            string path = Path.Combine(Path.GetTempPath(), $"hyve-fuzz-rom-{Environment.ProcessId}-{name}");
            File.WriteAllBytes(path, rom);
            BootRom.Load(mem, path, null);
            File.Delete(path);
            _runner = new Thread(() =>
            {
                while (!_stop) Vm.Run(v => new SoftBackend(v));
            }) { IsBackground = true, Name = $"fuzz-vm-{name}" };
            _runner.Start();
            // The control socket and the debugger want vCPU threads: wait until the first run has them.
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while (sw.Elapsed < Deadline)
            {
                try { Vm.GetRegister(0, Hyve.X86.Reg.Rip); return; }
                catch (InvalidOperationException) { Thread.Sleep(5); }
            }
        }

        /// <summary>Keeps every vCPU out of the guest (they still serve requests), across runs: a register a request
        /// wrote never sends a vCPU spinning through garbage while the next input is tried.</summary>
        public void Hold()
        {
            for (int i = 0; i < Vm.CpuCount; i++) Vm.HoldCpu(i);
        }

        /// <summary>Ends the VM for good.</summary>
        public void Stop()
        {
            _stop = true;
            Vm.Suspend(SuspendHow.PowerOff);
            _runner.Join(Deadline);
            Vm.Memory.Dispose();
        }
    }

    /// <summary>Stops every server and VM the targets started (the test suite calls it after a replay; under AFL the
    /// process simply ends).</summary>
    public static void Shutdown()
    {
        GdbServer.FaultHook = null;
        ControlServer.FaultHook = null;
        _gdb?.Dispose();
        _control?.Dispose();
        _rfbOpen?.Dispose();
        _rfbPassword?.Dispose();
        _gdbVm?.Stop();
        _controlVm?.Stop();
        (_gdb, _control, _rfbOpen, _rfbPassword, _gdbVm, _controlVm, _surface) = (null, null, null, null, null, null, null);
    }

    /// <summary>Checkpoints and memory dumps are refused with the IOException a failing write gives (the path a fuzzer
    /// makes up is never written).</summary>
    private sealed class RefusingSnapshots : ISnapshotHandler
    {
        public void Checkpoint(string path, bool thenExit) => throw new IOException($"{path}: not written while fuzzing");
        public void DumpGuestMemory(string path) => throw new IOException($"{path}: not written while fuzzing");
    }

    private static string SocketPath(string what)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"hyve-fuzz-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        return Path.Combine(dir, what);
    }

    private static Socket Connect(string path)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        s.Connect(new UnixDomainSocketEndPoint(path));
        s.ReceiveTimeout = (int)Deadline.TotalMilliseconds;
        s.SendTimeout = (int)Deadline.TotalMilliseconds;
        return s;
    }

    /// <summary>Sends <paramref name="data"/> while reading whatever comes back, closes the sending side, and reads
    /// until the server hangs up; the count of bytes received. A server that neither reads nor hangs up within the
    /// deadline is a hang (<see cref="TimeoutException"/>).</summary>
    private static long Converse(Socket s, ReadOnlySpan<byte> data)
    {
        long received = 0;
        var buf = new byte[65536];
        var reader = new Thread(() =>
        {
            try
            {
                int n;
                while ((n = s.Receive(buf)) > 0) Interlocked.Add(ref received, n);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock) { Interlocked.Exchange(ref received, long.MinValue); }
            catch (SocketException) { } // reset after the server's own hang-up
            catch (ObjectDisposedException) { }
        }) { IsBackground = true, Name = "fuzz-reader" };
        reader.Start();
        try
        {
            int sent = 0;
            while (sent < data.Length) sent += s.Send(data[sent..]);
            s.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted)
        {
            // The server hung up before reading everything (a protocol error ends a VNC or control connection).
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut || e.SocketErrorCode == SocketError.WouldBlock)
        {
            throw new TimeoutException("the server stopped reading");
        }
        if (!reader.Join(Deadline + TimeSpan.FromSeconds(2))) throw new TimeoutException("the server did not hang up");
        long r = Interlocked.Read(ref received);
        if (r == long.MinValue) throw new TimeoutException("the server neither answered nor hung up");
        return r;
    }

    private static void WaitUntil(Func<bool> done, string what)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (!done())
        {
            if (sw.Elapsed > Deadline) throw new TimeoutException(what);
            Thread.Sleep(1);
        }
    }

    // ---- GDB remote protocol --------------------------------------------------------------------------------------

    private static IdleVm? _gdbVm;
    private static GdbServer? _gdb;
    private static string? _gdbPath;
    private static Exception? _gdbFault;

    /// <summary>
    /// A debugger's conversation: the input is one packet a line (LF), each framed as <c>$payload#checksum</c> with the
    /// right checksum, except that a line starting with '!' is sent as it is (framing: bad checksums, acks, Ctrl-C,
    /// noise) and '\' escapes a leading '!'. A kill packet ('k') is left out (it ends the VM by design). The server must
    /// answer every packet or end the session, never hide an exception, and detach when the input ends.
    /// </summary>
    public static void Gdb(byte[] data)
    {
        if (_gdb is null)
        {
            _gdbVm = new IdleVm("gdb");
            _gdbPath = SocketPath("gdb");
            _gdb = new GdbServer(_gdbVm.Vm, _gdbPath);
            GdbServer.FaultHook = e => _gdbFault ??= e;
        }
        var wire = new MemoryStream();
        foreach (var raw in Encoding.Latin1.GetString(data).Split('\n'))
        {
            if (raw.StartsWith('!')) { wire.Write(Encoding.Latin1.GetBytes(raw[1..])); continue; }
            string p = raw.StartsWith('\\') ? raw[1..] : raw;
            if (p.StartsWith('k')) continue;
            int sum = 0;
            foreach (char c in p) sum += (byte)c;
            wire.Write(Encoding.Latin1.GetBytes($"${p}#{sum & 0xff:x2}"));
        }
        _gdbFault = null;
        var server = _gdb;
        using (var s = Connect(_gdbPath!)) Converse(s, wire.ToArray());
        // The session detaches (every vCPU released) before the server takes the next debugger.
        WaitUntil(() => !server.HasSession, "the gdb session did not end");
        _gdbVm!.Hold(); // detaching released them
        if (_gdbFault is { } f) throw new FuzzDefectException("gdb", f);
    }

    // ---- control socket -------------------------------------------------------------------------------------------

    private static IdleVm? _controlVm;
    private static ControlServer? _control;
    private static Exception? _controlFault;

    /// <summary>
    /// What a control client (hyvectl or anyone with the socket) sends: the input is the byte stream itself, frames of
    /// <c>[u32 length][u16 version][u16 op][payload]</c> one after another. Every request is answered (or the connection
    /// closed after a bad length); a request that ends in an exception other than the VM refusing an argument, a VM
    /// that is between runs, or a failed write is a defect.
    /// </summary>
    public static void Control(byte[] data)
    {
        if (_control is null)
        {
            _controlVm = new IdleVm("ctl");
            _controlVm.Hold();
            string dir = Path.GetDirectoryName(SocketPath("ctl"))!;
            _control = ControlServer.Start(_controlVm.Vm, dir);
            ControlServer.FaultHook = e => { if (IsDefect(e)) _controlFault ??= e; };
        }
        _controlFault = null;
        using (var s = Connect(_control.SocketPath)) Converse(s, data);
        if (_controlFault is { } f) throw new FuzzDefectException("control", f);
    }

    /// <summary>An exception a control request may end with only through a defect: the runtime's own argument checks
    /// (an ArgumentException subtype with the runtime's message, which is a resource key under NativeAOT), null
    /// references, indexes out of range, overflow. Hyve's own ArgumentException sentences are answers.</summary>
    public static bool IsDefect(Exception e) => e switch
    {
        ArgumentException a => a.GetType() != typeof(ArgumentException) && RuntimeMessage(a.Message),
        IOException or InvalidOperationException or TimeoutException or UnauthorizedAccessException
            or NotSupportedException or OperationCanceledException => false,
        _ => true,
    };

    private static bool RuntimeMessage(string m) =>
        m.StartsWith("Specified ", StringComparison.Ordinal) || m.StartsWith("Value cannot be null", StringComparison.Ordinal)
        || m.StartsWith("Index was out of range", StringComparison.Ordinal) || m.StartsWith("Arg_", StringComparison.Ordinal)
        || m.StartsWith("Value was ", StringComparison.Ordinal);

    // ---- RFB (VNC) client messages ---------------------------------------------------------------------------------

    /// <summary>A 64x48 framebuffer in an array, 32 bpp, with a pattern, whose mode the input can change.</summary>
    private sealed class Surface : IDisplaySurface
    {
        private readonly byte[] _bytes = new byte[256 * 256 * 4];
        private int _gen;

        public Surface()
        {
            for (int i = 0; i < _bytes.Length; i++) _bytes[i] = (byte)(i * 7 ^ i >> 8);
            SetMode(64, 48, 32);
        }

        public void SetMode(int w, int h, int bpp)
        {
            Mode = new DisplayMode(true, w, h, bpp, w * ((bpp + 7) / 8), 0, false);
            _gen++;
        }

        public DisplayMode Mode { get; private set; }
        public int ModeGeneration => _gen;
        public ReadOnlySpan<byte> Memory => _bytes;
        public void CopyPalette(Span<uint> palette) { for (int i = 0; i < palette.Length; i++) palette[i] = (uint)(i * 0x010203); }
        public void Scribble(int seed) { for (int i = 0; i < 4096; i++) _bytes[(seed * 4099 + i * 31) % _bytes.Length] ^= (byte)i; }
    }

    private static Surface? _surface;
    private static RfbServer? _rfbOpen, _rfbPassword;

    /// <summary>
    /// A VNC client's bytes after the server's version string: byte 0 picks the server (bit 0: one with a password, so
    /// VNC authentication is asked for) and how the picture changes meanwhile (bits 1-2: nothing, new pixels, a new mode
    /// of 32x32 at 16 bpp or 80x60 at 8 bpp); the rest is what the client sends (version, security type, ClientInit,
    /// messages). The server must end the connection on anything malformed, with no exception on its threads.
    /// </summary>
    public static void Rfb(byte[] data)
    {
        if (data.Length < 1) return;
        if (_surface is null)
        {
            _surface = new Surface();
            var src = new FrameSource(_surface, 64, 48);
            _rfbOpen = RfbServer.Start(src, new UnixDomainSocketEndPoint(SocketPath("rfb")), null, "fuzz");
            _rfbPassword = RfbServer.Start(src, new UnixDomainSocketEndPoint(SocketPath("rfb-pw")), "secret", "fuzz-pw");
        }
        var server = (data[0] & 1) != 0 ? _rfbPassword! : _rfbOpen!;
        lock (_surface)
        {
            switch ((data[0] >> 1) & 3)
            {
                case 1: _surface.Scribble(data.Length); break;
                case 2: _surface.SetMode(32, 32, 16); break;
                case 3: _surface.SetMode(80, 60, 8); break;
            }
        }
        string path = (data[0] & 1) != 0 ? SocketPath("rfb-pw") : SocketPath("rfb");
        using (var s = Connect(path))
        {
            Converse(s, data.AsSpan(1));
        }
        WaitUntil(() => server.ClientCount == 0, "the VNC client was not closed");
        if (((data[0] >> 1) & 3) >= 2) lock (_surface) _surface.SetMode(64, 48, 32);
    }
}

/// <summary>A server hid a defect behind an error reply or a closed connection: what the fuzzer reports as a crash.</summary>
public sealed class FuzzDefectException(string target, Exception inner)
    : Exception($"{target}: {inner.GetType().Name}: {inner.Message}", inner);
