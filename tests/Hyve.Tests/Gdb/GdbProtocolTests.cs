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
        private readonly TcpClient _tcp;
        private readonly NetworkStream _s;

        public Client(int port)
        {
            _tcp = new TcpClient("127.0.0.1", port);
            _s = _tcp.GetStream();
            _s.ReadTimeout = 10_000;
        }

        public void SendRaw(string text) => _s.Write(Encoding.Latin1.GetBytes(text));

        public static string Frame(string payload)
        {
            int sum = 0;
            foreach (char c in payload) sum += c;
            return $"${payload}#{sum & 0xff:x2}";
        }

        public char ReadAck() => (char)_s.ReadByte();

        public string ReadPacket()
        {
            int b;
            while ((b = _s.ReadByte()) != '$') if (b < 0) throw new IOException("closed");
            var sb = new StringBuilder();
            while ((b = _s.ReadByte()) != '#') sb.Append((char)b);
            _s.ReadByte();
            _s.ReadByte();
            _s.WriteByte((byte)'+');
            return sb.ToString();
        }

        public string Ask(string payload)
        {
            SendRaw(Frame(payload));
            Assert.Equal('+', ReadAck());
            return ReadPacket();
        }

        public void Dispose() => _tcp.Dispose();
    }

    [KvmGdbFact]
    public void MalformedOversizedAndUnknownPacketsLeaveTheVmAlone()
    {
        int port = GdbGuest.FreePort();
        string name = "gdbp" + Guid.NewGuid().ToString("N")[..8];
        using var vm = HyveProcess.Start("-G", port.ToString(CultureInfo.InvariantCulture), "-l", $"bootrom,{GuestRom.ToFile(GdbGuest.Rom())}",
            "-l", "com1,stdio", name);
        vm.WaitForOutput("ready\n");
        using (var c = new Client(port))
        {
            // Attaching stops every vCPU: hyvectl sees them in the debug set.
            Assert.Equal("T05thread:01;", c.Ask("?"));
            Assert.Contains("suspended cpus:\t 0", vm.Ctl($"--vm={name}", "--get-suspended-cpus").Out, StringComparison.Ordinal);

            Assert.Contains("PacketSize=4000", c.Ask("qSupported:swbreak+"), StringComparison.Ordinal);
            Assert.Equal("", c.Ask("qNoSuchThing"));
            Assert.Equal("", c.Ask("jWhatever"));
            Assert.Equal("E22", c.Ask("mzz,4"));
            Assert.Equal("E22", c.Ask("P9999=00"));
            Assert.Equal(Convert.ToHexString(Encoding.ASCII.GetBytes("vCPU 0")).ToLowerInvariant(), c.Ask("qThreadExtraInfo,1"));
            Assert.Equal("m1", c.Ask("qfThreadInfo"));

            // A bad checksum is refused with '-'.
            c.SendRaw("$g#00");
            Assert.Equal('-', c.ReadAck());
            // An oversized packet is refused with '-' without being looked at.
            c.SendRaw(Client.Frame("M8000,1:" + new string('a', 0x5000)));
            Assert.Equal('-', c.ReadAck());

            // Z0 plants an INT3 in RAM; memory reads still show the original byte; z0 puts it back.
            string original = c.Ask($"m{GdbGuest.RamRoutine:x},1");
            Assert.Equal("66", original); // the operand-size prefix of inc dword [Counter]
            Assert.Equal("OK", c.Ask($"Z0,{GdbGuest.RamRoutine:x},1"));
            Assert.Equal(original, c.Ask($"m{GdbGuest.RamRoutine:x},1"));
            Assert.Equal("OK", c.Ask($"z0,{GdbGuest.RamRoutine:x},1"));
            // ROM cannot hold an INT3.
            Assert.Equal("E14", c.Ask("Z0,fffffff0,1"));

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
    }
}
