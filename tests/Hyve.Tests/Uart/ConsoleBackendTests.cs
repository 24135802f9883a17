// SPDX-License-Identifier: BSD-2-Clause
using System.Net.Sockets;
using System.Text;
using Hyve.Config;
using Hyve.Devices;
using Xunit;

namespace Hyve.Tests.Uart;

public unsafe class ConsoleBackendTests
{
    private const ushort Base = 0x2F8;
    private const int RBR = 0, THR = 0, FCR = 2, LSR = 5;

    private static void WaitFor(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"timed out waiting for {what}");
            Thread.Sleep(2);
        }
    }

    private static void Send(Uart16550 uart, string text)
    {
        foreach (char c in text) uart.PortWrite(Base + THR, 1, c);
    }

    // Reads what the guest would: every byte, as it becomes ready, until `count` bytes arrived.
    private static string Receive(Uart16550 uart, int count)
    {
        var sb = new StringBuilder();
        WaitFor(() =>
        {
            while ((uart.PortRead(Base + LSR, 1) & 1) != 0) sb.Append((char)uart.PortRead(Base + RBR, 1));
            return sb.Length >= count;
        }, $"{count} received bytes");
        return sb.ToString();
    }

    private static string TempPath(string suffix) => Path.Combine(Path.GetTempPath(), $"hyve-{Guid.NewGuid():N}{suffix}");

    private static (int read, int write) Pipe()
    {
        int* fds = stackalloc int[2];
        Assert.Equal(0, ConsoleNative.pipe2(fds, ConsoleNative.O_CLOEXEC));
        return (fds[0], fds[1]);
    }

    private static void FdWrite(int fd, string text) => Assert.True(ConsoleNative.WriteAll(fd, Encoding.Latin1.GetBytes(text)));

    private static string FdRead(int fd, int count)
    {
        var buf = new byte[count];
        int got = 0;
        fixed (byte* p = buf)
        {
            while (got < count)
            {
                nint n = ConsoleNative.read(fd, p + got, count - got);
                if (n <= 0) break;
                got += (int)n;
            }
        }
        return Encoding.Latin1.GetString(buf, 0, got);
    }

    [Fact]
    public void FileBackendAppendsWhatTheGuestSent()
    {
        string path = TempPath(".log");
        File.WriteAllText(path, "before\n");
        try
        {
            var backend = new FileConsoleBackend(path);
            var uart = new Uart16550(Base, null, backend);
            Send(uart, "Linux version 6.1\r\n");
            // A full line reaches the file at once (the output thread is woken by the newline), before the VM ends.
            WaitFor(() => File.ReadAllText(path) == "before\nLinux version 6.1\r\n", "the line");
            Send(uart, "login: ");
            WaitFor(() => File.ReadAllText(path).EndsWith("login: ", StringComparison.Ordinal), "the prompt after the flush delay");
            Send(uart, "tail");
            backend.Dispose();
            Assert.Equal("before\nLinux version 6.1\r\nlogin: tail", File.ReadAllText(path));
            Assert.False(backend.HasInput);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void FileBackendBatchesOutputIntoFewWrites()
    {
        string path = TempPath(".log");
        try
        {
            using var backend = new FileConsoleBackend(path);
            var uart = new Uart16550(Base, null, backend);
            var line = new string('x', 10000);
            Send(uart, line);
            backend.Flush();
            Assert.Equal(line, File.ReadAllText(path));
        }
        finally { File.Delete(path); }
    }

    // Output flow control: while the host reader lags and the backend's buffer is full, LSR shows the transmitter busy
    // (THRE and TEMT clear), so a guest that polls LSR before each byte, as firmware and Linux's console do, waits
    // instead of losing lines; once the reader catches up THRE is back and every byte arrives in order.
    [Fact]
    public void A_lagging_reader_makes_the_transmitter_busy_and_a_polling_guest_loses_nothing()
    {
        var output = Pipe();
        var backend = new FdConsoleBackend(-1, output.write, ownsFds: false, makeRaw: false);
        try
        {
            var uart = new Uart16550(Base, null, backend);
            var sent = new StringBuilder();
            int n = 0;
            // The pipe (64 KiB) and the backend's buffer both fill: the guest then sees a busy transmitter.
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while ((uart.PortRead(Base + LSR, 1) & 0x60) == 0x60)
            {
                Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), "THRE never cleared");
                char c = (char)('a' + n++ % 26);
                uart.PortWrite(Base + THR, 1, c);
                sent.Append(c);
            }
            Assert.True(sent.Length >= ConsoleBackend.OutputCapacity, $"busy after only {sent.Length} bytes");
            Assert.Equal(0, (int)uart.PortRead(Base + LSR, 1) & 0x60);
            // The reader drains; a polling guest goes on once THRE is back.
            string got = FdRead(output.read, sent.Length);
            WaitFor(() => (uart.PortRead(Base + LSR, 1) & 0x60) == 0x60, "THRE after the reader caught up");
            Assert.Equal(sent.ToString(), got);
            Assert.Equal(0, backend.Dropped);
        }
        finally
        {
            backend.Dispose();
            ConsoleNative.close(output.read); ConsoleNative.close(output.write);
        }
    }

    [Fact]
    public void FdBackendCarriesBothDirectionsWithFlowControl()
    {
        var input = Pipe();
        var output = Pipe();
        var backend = new FdConsoleBackend(input.read, output.write, ownsFds: false, makeRaw: true);
        try
        {
            var uart = new Uart16550(Base, null, backend);
            // 200 bytes into a UART whose FIFO is off (one byte): the rest waits in the pipe, none is lost.
            var text = string.Concat(Enumerable.Range(0, 200).Select(i => (char)('a' + i % 26)));
            FdWrite(input.write, text);
            Assert.Equal(text, Receive(uart, text.Length));
            Assert.Equal(0, (int)uart.PortRead(Base + LSR, 1) & 0x02); // no overrun

            Send(uart, "ok\n");
            Assert.Equal("ok\n", FdRead(output.read, 3));
        }
        finally
        {
            backend.Dispose();
            ConsoleNative.close(input.read); ConsoleNative.close(input.write);
            ConsoleNative.close(output.read); ConsoleNative.close(output.write);
        }
    }

    [Fact]
    public void FdBackendInputStopsAtEndOfFileAndDisposeReturns()
    {
        var input = Pipe();
        var output = Pipe();
        var backend = new FdConsoleBackend(input.read, output.write, ownsFds: true, makeRaw: false);
        var uart = new Uart16550(Base, null, backend);
        uart.PortWrite(Base + FCR, 1, 0x01);
        FdWrite(input.write, "bye");
        ConsoleNative.close(input.write);
        Assert.Equal("bye", Receive(uart, 3));
        backend.Dispose();
        ConsoleNative.close(output.read);
    }

    [Fact]
    public void ListeningSocketServesOneClientAtATime()
    {
        string path = TempPath(".sock");
        var backend = SocketConsoleBackend.Listen(path);
        try
        {
            var uart = new Uart16550(Base, null, backend);
            uart.PortWrite(Base + FCR, 1, 0x01);
            Send(uart, "dropped\n"); // nobody connected yet
            backend.Flush(); // the output thread has taken it (and, with no client, dropped it)

            using (var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                client.Connect(new UnixDomainSocketEndPoint(path));
                WaitFor(() => backend.IsConnected, "the server to accept");
                client.Send("root\r"u8);
                Assert.Equal("root\r", Receive(uart, 5));
                Send(uart, "Password:\n");
                var buf = new byte[64];
                int n = 0;
                WaitFor(() => (n += client.Receive(buf, n, buf.Length - n, SocketFlags.None)) >= 10, "output at the client");
                Assert.Equal("Password:\n", Encoding.ASCII.GetString(buf, 0, n));
            }
            WaitFor(() => !backend.IsConnected, "the server to notice the client left");

            using (var again = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                again.Connect(new UnixDomainSocketEndPoint(path));
                again.Send("2"u8);
                Assert.Equal("2", Receive(uart, 1));
            }
        }
        finally
        {
            backend.Dispose();
        }
        Assert.False(File.Exists(path));
    }

    [Fact]
    public void FactoryPicksTheBackendFromThePath()
    {
        string log = TempPath(".log");
        string sock = TempPath(".sock");
        string explicitSock = TempPath(".s");
        try
        {
            using (var b = ConsoleBackends.Create(log)) Assert.IsType<FileConsoleBackend>(b);
            Assert.True(File.Exists(log));
            using (var b = ConsoleBackends.Create("/dev/null")) Assert.IsType<FdConsoleBackend>(b);
            using (var server = ConsoleBackends.Create(sock))
            {
                Assert.IsType<SocketConsoleBackend>(server);
                using var client = ConsoleBackends.Create(sock); // an existing, live socket: connect to it
                Assert.IsType<SocketConsoleBackend>(client);
            }
            using (var b = ConsoleBackends.Create("unix:" + explicitSock))
            {
                Assert.IsType<SocketConsoleBackend>(b);
                Assert.True(File.Exists(explicitSock));
            }
            var e = Assert.Throws<ConfigException>(() => ConsoleBackends.Create("/nonexistent-dir/x.log"));
            Assert.StartsWith("cannot open console backend '/nonexistent-dir/x.log'", e.Message);
        }
        finally
        {
            File.Delete(log);
            File.Delete(sock);
            File.Delete(explicitSock);
        }
    }

    [Fact]
    public void StaleSocketIsReplacedByAListeningOne()
    {
        string path = TempPath(".sock");
        // Leave a socket file behind with nobody listening, as a killed hyve would.
        var dead = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        dead.Bind(new UnixDomainSocketEndPoint(path));
        dead.Dispose();
        try
        {
            using var b = ConsoleBackends.Create(path);
            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            client.Connect(new UnixDomainSocketEndPoint(path));
        }
        finally { File.Delete(path); }
    }
}

public unsafe partial class TerminalRawModeTests
{
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int posix_openpt(int flags);

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int grantpt(int fd);

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int unlockpt(int fd);

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int ptsname_r(int fd, byte* buf, nint len);

    private const uint ICANON = 0x2, ECHO = 0x8, OPOST = 0x1;

    private static (uint oflag, uint lflag) Modes(int fd)
    {
        byte* t = stackalloc byte[64];
        Assert.Equal(0, ConsoleNative.tcgetattr(fd, t));
        return (*(uint*)(t + 4), *(uint*)(t + 12));
    }

    [Fact]
    public void TerminalIsRawWhileTheBackendLivesAndRestoredAfter()
    {
        int master = posix_openpt(ConsoleNative.O_RDWR | ConsoleNative.O_NOCTTY);
        if (master < 0) return; // no pty support in this sandbox: nothing to test
        byte* name = stackalloc byte[128];
        Assert.Equal(0, grantpt(master));
        Assert.Equal(0, unlockpt(master));
        Assert.Equal(0, ptsname_r(master, name, 128));
        string slavePath = new((sbyte*)name);
        int slave = ConsoleNative.open(slavePath, ConsoleNative.O_RDWR | ConsoleNative.O_NOCTTY, 0);
        Assert.True(slave >= 0);
        try
        {
            var before = Modes(slave);
            Assert.NotEqual(0u, before.lflag & ICANON);

            var backend = new FdConsoleBackend(slave, slave, ownsFds: false, makeRaw: true);
            Assert.True(ConsoleTerminal.IsRaw);
            var raw = Modes(slave);
            Assert.Equal(0u, raw.lflag & (ICANON | ECHO));
            Assert.Equal(0u, raw.oflag & OPOST);

            var uart = new Uart16550(0x3F8, null, backend);
            // Raw input: a key arrives at once, no line editing, no echo.
            byte k = (byte)'k';
            Assert.Equal(1, (int)ConsoleNative.write(master, &k, 1));
            var deadline = DateTime.UtcNow.AddSeconds(5);
            while ((uart.PortRead(0x3FD, 1) & 1) == 0 && DateTime.UtcNow < deadline) Thread.Sleep(2);
            Assert.Equal((uint)'k', uart.PortRead(0x3F8, 1));
            // Raw output: "\n" is not turned into "\r\n".
            uart.PortWrite(0x3F8, 1, 'o');
            uart.PortWrite(0x3F8, 1, '\n');
            byte* got = stackalloc byte[8];
            int n = 0;
            while (n < 2 && DateTime.UtcNow < deadline)
            {
                nint r = ConsoleNative.read(master, got + n, 8 - n);
                if (r > 0) n += (int)r;
            }
            Assert.Equal("o\n", new string((sbyte*)got, 0, n));

            backend.Dispose();
            Assert.False(ConsoleTerminal.IsRaw);
            var after = Modes(slave);
            Assert.Equal(before, after);
            ConsoleTerminal.RestoreTerminal(); // harmless when nothing is raw
        }
        finally
        {
            ConsoleNative.close(slave);
            ConsoleNative.close(master);
        }
    }
}

public class LpcComPortsTests
{
    private sealed class Lines : Hyve.Vmm.IIrqLines
    {
        public readonly List<string> Log = [];
        public void IsaAssert(int irq) => Log.Add($"+{irq}");
        public void IsaDeassert(int irq) => Log.Add($"-{irq}");
        public void PicAssert(int irq) { }
        public void PicDeassert(int irq) { }
        public void IsaPulse(int irq) => Log.Add($"^{irq}");
        public void IoapicAssert(int pin) { }
        public void IoapicDeassert(int pin) { }
        public void IoapicPulse(int pin) { }
        public void Msi(ulong address, ulong data) { }
    }

    [Fact]
    public void BuildsAllFourPortsOnTheirLegacyPortsAndIrqs()
    {
        string log = Path.Combine(Path.GetTempPath(), $"hyve-{Guid.NewGuid():N}.log");
        var config = Options.Parse(["-l", $"com2,{log}", "vm"]).Config;
        var bus = new Hyve.Vmm.PortBus();
        var lines = new Lines();
        try
        {
            using (var coms = LpcComPorts.Create(config, bus, lines))
            {
                Assert.Same(coms.Ports[0], bus.Find(0x3F8));
                Assert.Same(coms.Ports[1], bus.Find(0x2FF));
                Assert.Same(coms.Ports[2], bus.Find(0x3E8));
                Assert.Same(coms.Ports[3], bus.Find(0x2E8));
                Assert.Null(coms.Ports[0].Backend);

                bus.Write(0x2F9, 1, 0x02);           // COM2 IER: THRE interrupt
                Assert.Equal(["+3"], lines.Log);
                Assert.Equal(0x02u, bus.Read(0x2FA, 1));
                Assert.Equal(["+3", "-3"], lines.Log);
                foreach (char c in "com2\n") bus.Write(0x2F8, 1, c);
                bus.Write(0x3F8, 1, 'x');            // COM1 has no backend: dropped
            }
            Assert.Equal("com2\n", File.ReadAllText(log));
            Assert.Null(bus.Find(0x2F8));
        }
        finally { File.Delete(log); }
    }

    [Fact]
    public void BadBackendFailsCleanly()
    {
        var config = Options.Parse(["-l", "com1,/nonexistent-dir/x", "vm"]).Config;
        var bus = new Hyve.Vmm.PortBus();
        Assert.Throws<ConfigException>(() => LpcComPorts.Create(config, bus, new Lines()));
        Assert.Null(bus.Find(0x3F8));
    }
}
