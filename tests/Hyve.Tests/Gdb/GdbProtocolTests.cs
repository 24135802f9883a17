// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Xunit;

namespace Hyve.Tests.Gdb;

/// <summary>The remote protocol over a plain socket against the real ./hyve -G: framing, refusals, software breakpoints' bytes.</summary>
public class GdbProtocolTests
{
    private sealed class Client : IDisposable
    {
        private readonly Socket _sock;
        private readonly NetworkStream _s;

        public Client(int port) : this(new TcpClient("127.0.0.1", port).Client) { }

        public Client(string unixPath) : this(ConnectUnix(unixPath)) { }

        private Client(Socket sock)
        {
            _sock = sock;
            _s = new NetworkStream(sock, ownsSocket: true);
            _s.ReadTimeout = 10_000;
        }

        private static Socket ConnectUnix(string path)
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            s.Connect(new UnixDomainSocketEndPoint(path));
            return s;
        }

        public void SendRaw(string text) => _s.Write(Encoding.Latin1.GetBytes(text));

        public static string Frame(string payload)
        {
            int sum = 0;
            foreach (char c in payload) sum += c;
            return $"${payload}#{sum & 0xff:x2}";
        }

        public char ReadAck() => (char)_s.ReadByte();

        public string ReadPacket(bool ack = true)
        {
            int b;
            while ((b = _s.ReadByte()) != '$') if (b < 0) throw new IOException("closed");
            var sb = new StringBuilder();
            while ((b = _s.ReadByte()) != '#')
            {
                if (b < 0 || sb.Length > 0x10000) throw new IOException($"bad packet from the server: {sb}");
                sb.Append((char)b);
            }
            _s.ReadByte();
            _s.ReadByte();
            if (ack) _s.WriteByte((byte)'+');
            return sb.ToString();
        }

        public string AskNoAck(string payload)
        {
            SendRaw(Frame(payload));
            return ReadPacket(ack: false);
        }

        public string Ask(string payload)
        {
            SendRaw(Frame(payload));
            Assert.Equal('+', ReadAck());
            return ReadPacket();
        }

        public void Dispose()
        {
            _s.Dispose();
            _sock.Dispose();
        }
    }

    [Fact]
    public void Soft_MalformedOversizedAndUnknownPacketsLeaveTheVmAlone() => MalformedOversizedAndUnknown("soft");

    [KvmGdbFact]
    public void Kvm_MalformedOversizedAndUnknownPacketsLeaveTheVmAlone() => MalformedOversizedAndUnknown("kvm");

    [Fact]
    public void Soft_CtrlCByteStopsARunningGuestAndItsEndIsReported() => CtrlCAndExit("soft");

    [KvmGdbFact]
    public void Kvm_CtrlCByteStopsARunningGuestAndItsEndIsReported() => CtrlCAndExit("kvm");

    private static void MalformedOversizedAndUnknown(string accel)
    {
        int port = GdbGuest.FreePort();
        string name = GdbGuest.NewName();
        using var vm = GdbGuest.StartVm(accel, port, GdbGuest.Rom(), name);
        vm.WaitForOutput("ready\n");
        using (var c = new Client(port))
        {
            // Attaching stops every vCPU: hyvectl sees them in the debug set.
            Assert.Equal("T05thread:01;", c.Ask("?"));
            Assert.Contains("suspended cpus:\t 0", vm.Ctl($"--vm={name}", "--get-suspended-cpus").Out, StringComparison.Ordinal);

            // One debugger at a time: a second connection is closed at once.
            using (var second = new TcpClient("127.0.0.1", port))
            {
                second.ReceiveTimeout = 5000;
                Assert.Equal(0, second.GetStream().Read(new byte[16]));
            }

            Assert.Contains("PacketSize=4000", c.Ask("qSupported:swbreak+"), StringComparison.Ordinal);
            // Unknown packets: the empty reply.
            Assert.Equal("", c.Ask("qNoSuchThing"));
            Assert.Equal("", c.Ask("jWhatever"));
            Assert.Equal("", c.Ask("vNoSuchThing;1"));
            Assert.Equal("", c.Ask("Z9,8000,1"));
            Assert.Equal("", c.Ask("QNoSuchSetting:1"));
            Assert.Equal("", c.Ask(""));
            // Malformed ones: an error, nothing done.
            Assert.Equal("E22", c.Ask("mzz,4"));
            Assert.Equal("E22", c.Ask("m8000"));
            Assert.Equal("E22", c.Ask("m8000,"));
            Assert.Equal("E22", c.Ask("m8000,11111111111111111"));
            Assert.Equal("E22", c.Ask("P9999=00"));
            Assert.Equal("E22", c.Ask("P0=zz"));
            Assert.Equal("E22", c.Ask("G00"));
            Assert.Equal("E22", c.Ask("M8000,2:00"));
            Assert.Equal("E22", c.Ask("M8000,1"));
            Assert.Equal("E22", c.Ask("Z0,8000"));
            Assert.Equal("E22", c.Ask("Z1,zz,1"));
            Assert.Equal("E22", c.Ask("Z2,9001,4")); // a misaligned watchpoint
            Assert.Equal("E22", c.Ask("vCont;x"));
            Assert.Equal("E22", c.Ask("vCont;"));
            // issue 18 #1: an action with no letter once threw out of the server and killed hyve (status 134).
            Assert.Equal("E22", c.Ask("vCont;:1"));
            Assert.Equal("E22", c.Ask("vCont;c;:1"));
            Assert.Equal("E22", c.Ask("vCont;:"));
            Assert.Equal("E22", c.Ask("Hg"));
            Assert.Equal("E22", c.Ask("Z1,8000"));
            Assert.Equal("E22", c.Ask("qXfer:features:read:target.xml:"));
            Assert.Equal("E22", c.Ask("H"));
            Assert.Equal("E03", c.Ask("Hg99"));
            Assert.Equal("E03", c.Ask("T99"));
            Assert.Equal("E03", c.Ask("qThreadExtraInfo,5"));
            // Memory that is not there, or not RAM: an error, never a device access.
            Assert.Equal("E14", c.Ask("mfffffffffffff000,10"));
            Assert.Equal("E14", c.Ask("Mfffffff0,1:90")); // the ROM
            Assert.Equal("E14", c.Ask("Mfec00000,4:00000000")); // the IOAPIC
            Assert.Equal("E14", c.Ask("Z0,fec00000,1"));
            // A huge length is cut to what a packet holds.
            Assert.Equal(0x4000, c.Ask("m0,ffffffff").Length);
            Assert.Equal(Convert.ToHexString(Encoding.ASCII.GetBytes("vCPU 0")).ToLowerInvariant(), c.Ask("qThreadExtraInfo,1"));
            Assert.Equal("m1", c.Ask("qfThreadInfo"));
            Assert.Equal("l", c.Ask("qsThreadInfo"));
            string xml = c.Ask("qXfer:features:read:target.xml:0,3fff");
            Assert.Contains("efer", xml, StringComparison.Ordinal);
            Assert.Contains("fs_base", xml, StringComparison.Ordinal);
            Assert.Equal("E00", c.Ask("qXfer:features:read:other.xml:0,100"));

            // A bad checksum is refused with '-'.
            c.SendRaw("$g#00");
            Assert.Equal('-', c.ReadAck());
            c.SendRaw("$g#zz");
            Assert.Equal('-', c.ReadAck());
            // An oversized packet is refused with '-' without being looked at.
            c.SendRaw(Client.Frame("M8000,1:" + new string('a', 0x5000)));
            Assert.Equal('-', c.ReadAck());
            // Noise between packets is ignored; a '$' inside a packet starts it again.
            c.SendRaw("garbage+-\n");
            c.SendRaw("$junk" + Client.Frame("qC"));
            Assert.Equal('+', c.ReadAck());
            Assert.Equal("QC1", c.ReadPacket());

            // Z0 plants an INT3 in RAM; memory reads still show the original byte; z0 puts it back.
            string original = c.Ask($"m{GdbGuest.RamRoutine:x},1");
            Assert.Equal("66", original); // the operand-size prefix of inc dword [Counter]
            Assert.Equal("OK", c.Ask($"Z0,{GdbGuest.RamRoutine:x},1"));
            Assert.Equal(original, c.Ask($"m{GdbGuest.RamRoutine:x},1"));
            Assert.Equal("OK", c.Ask($"z0,{GdbGuest.RamRoutine:x},1"));
            Assert.Equal("E22", c.Ask($"z0,{GdbGuest.RamRoutine:x},1")); // not there any more
            // ROM cannot hold an INT3.
            Assert.Equal("E14", c.Ask("Z0,fffffff0,1"));
            // Four debug registers, no more.
            for (int i = 0; i < 4; i++) Assert.Equal("OK", c.Ask($"Z1,{0x8100 + i:x},1"));
            Assert.Equal("E22", c.Ask("Z1,8200,1"));
            for (int i = 0; i < 4; i++) Assert.Equal("OK", c.Ask($"z1,{0x8100 + i:x},1"));

            // The guest's counter does not move while it is stopped.
            string counter = c.Ask($"m{GdbGuest.Counter:x},4");
            Thread.Sleep(200);
            Assert.Equal(counter, c.Ask($"m{GdbGuest.Counter:x},4"));

            // Detach: every vCPU runs on, and the counter moves again.
            Assert.Equal("OK", c.Ask("D"));
        }
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (!vm.Ctl($"--vm={name}", "--get-suspended-cpus").Out.Contains("(none)", StringComparison.Ordinal) && sw.Elapsed.TotalSeconds < 10)
            Thread.Sleep(50);
        Assert.Contains("(none)", vm.Ctl($"--vm={name}", "--get-suspended-cpus").Out, StringComparison.Ordinal);
        Assert.False(vm.HasExited);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-poweroff").Status);
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
        Assert.Equal("ready\n", vm.Stdout);
    }

    // issue 18 #1: -G unix:PATH listens on a mode-0600 UNIX socket (no TCP port anyone could reach), and a malformed
    // packet there is answered E22 with the guest running on.
    [Fact]
    public void Soft_UnixSocketDebugServerIsPrivate()
    {
        if (!OperatingSystem.IsLinux()) return;
        string name = GdbGuest.NewName();
        string path = Path.Combine(Path.GetTempPath(), name + ".gdb");
        using var vm = HyveProcess.Start("-o", "accel=soft", "-G", "unix:" + path,
            "-l", $"bootrom,{GuestRom.ToFile(GdbGuest.Rom())}", "-l", "com1,stdio", name);
        vm.WaitForOutput("ready\n");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        using (var c = new Client(path))
        {
            Assert.Equal("T05thread:01;", c.Ask("?"));
            Assert.Equal("E22", c.Ask("vCont;:1"));
            Assert.Equal("66", c.Ask($"m{GdbGuest.RamRoutine:x},1"));
            Assert.Equal("OK", c.Ask("D"));
        }
        Assert.False(vm.HasExited);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-poweroff").Status);
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
        Assert.False(File.Exists(path), "the debug socket is removed when hyve ends");
    }

    private static void CtrlCAndExit(string accel)
    {
        int port = GdbGuest.FreePort();
        string name = GdbGuest.NewName();
        using var vm = GdbGuest.StartVm(accel, port, GdbGuest.Rom(), name);
        vm.WaitForOutput("ready\n");
        using var c = new Client(port);
        Assert.Equal("T05thread:01;", c.Ask("?"));
        Assert.Equal("OK", c.Ask("QStartNoAckMode"));

        // Continue: no reply until the guest stops.
        c.SendRaw(Client.Frame("c"));
        Thread.Sleep(300);
        Assert.Contains("(none)", vm.Ctl($"--vm={name}", "--get-suspended-cpus").Out, StringComparison.Ordinal);
        // The Ctrl-C byte stops every vCPU; the stop reply says SIGINT.
        c.SendRaw("\x03");
        Assert.StartsWith("T02thread:", c.ReadPacket(ack: false), StringComparison.Ordinal);
        Assert.Contains("suspended cpus:\t 0", vm.Ctl($"--vm={name}", "--get-suspended-cpus").Out, StringComparison.Ordinal);
        string counter = c.AskNoAck($"m{GdbGuest.Counter:x},4");
        Thread.Sleep(200);
        Assert.Equal(counter, c.AskNoAck($"m{GdbGuest.Counter:x},4"));
        // A Ctrl-C while stopped changes nothing.
        c.SendRaw("\x03");
        Assert.Equal(counter, c.AskNoAck($"m{GdbGuest.Counter:x},4"));

        // Let the loop end and continue: the guest halts (status 2) and the debugger hears of it.
        Assert.Equal("OK", c.AskNoAck($"M{GdbGuest.Flag:x},2:0100"));
        c.SendRaw(Client.Frame("c"));
        Assert.Equal("W02", c.ReadPacket(ack: false));
        vm.WaitForExit(60);
        Assert.Equal(2, vm.ExitCode);
        Assert.Equal("ready\n1234\n", vm.Stdout);
    }
}
