// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Net.Sockets;
using Hyve.Tests.Vnc;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Host;

/// <summary>
/// issue 18, fault injection: host calls fail on purpose (guest memory that cannot be mapped, console output to
/// /dev/full, a file-size limit under a console log and a snapshot, a VNC, control or gdb client that vanishes in the
/// middle of a message). The VM either goes on (and what was written stays written) or ends with status 4 and one line.
/// </summary>
public class FaultInjectionTests
{
    // Prints 'x' on COM1 forever (the VM runs until told to stop).
    private static readonly string PrintingRom = GuestRom.ToFile(GuestRom.RealMode(a =>
    {
        var loop = a.CreateLabel();
        a.mov(dx, 0x3f8);
        a.mov(al, (byte)'x');
        a.Label(ref loop);
        a.@out(dx, al);
        a.jmp(loop);
    }));

    private static Process Start(string? prlimit, string runDir, params string[] args)
    {
        Published.Value.ToString();
        var psi = new ProcessStartInfo(prlimit is null ? Path.Combine(HyveProcess.RepoRoot, "hyve") : "prlimit")
        {
            RedirectStandardError = true, RedirectStandardOutput = true, RedirectStandardInput = true,
        };
        if (prlimit is not null)
        {
            // The limit is for hyve, not for the launcher's NativeAOT publish (done above): run the binary.
            psi.ArgumentList.Add(prlimit);
            psi.ArgumentList.Add(Path.Combine(HyveProcess.RepoRoot, ".build", "hyve", "hyve"));
        }
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["HYVE_RUN_DIR"] = runDir;
        return Process.Start(psi)!;
    }

    // ./hyve and ./hyvectl publish their NativeAOT binaries when a source is newer (-h then prints the usage).
    private static readonly Lazy<bool> Published = new(() =>
    {
        foreach (var prog in new[] { "hyve", "hyvectl" })
        {
            using var h = Process.Start(new ProcessStartInfo(Path.Combine(HyveProcess.RepoRoot, prog), "-h")
            {
                RedirectStandardError = true, RedirectStandardOutput = true,
            })!;
            h.StandardError.ReadToEndAsync();
            h.StandardOutput.ReadToEnd();
            h.WaitForExit();
        }
        return true;
    });

    private static (int Status, string Out, string Err) Ctl(string runDir, params string[] args)
    {
        var psi = new ProcessStartInfo(Path.Combine(HyveProcess.RepoRoot, "hyvectl")) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["HYVE_RUN_DIR"] = runDir;
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o, err.Result);
    }

    private static string NewRunDir() => Directory.CreateTempSubdirectory("hyve-fault").FullName;

    private static void WaitForSocket(Process p, string runDir, string name)
    {
        var sw = Stopwatch.StartNew();
        while (!File.Exists(Path.Combine(runDir, name)))
        {
            // (stderr is read only once hyve has ended: before, the read would wait for it to end)
            if (p.HasExited) Assert.Fail($"hyve exited with {p.ExitCode}: {p.StandardError.ReadToEnd()}");
            Assert.True(sw.Elapsed.TotalSeconds < 120, "no control socket");
            Thread.Sleep(20);
        }
    }

    private static long Dropped(string runDir, string name)
    {
        var (status, o, err) = Ctl(runDir, $"--vm={name}", "--get-stats");
        Assert.True(status == 0, err);
        foreach (var line in o.Split('\n'))
            if (line.StartsWith("console output bytes dropped", StringComparison.Ordinal))
                return long.Parse(line.Split('\t')[^1].Trim(), System.Globalization.CultureInfo.InvariantCulture);
        throw new InvalidOperationException("no drop counter in --get-stats: " + o);
    }

    private static void PowerOffAndExpectStatus1(Process p, string runDir, string name)
    {
        Assert.Equal(0, Ctl(runDir, $"--vm={name}", "--force-poweroff").Status);
        Assert.True(p.WaitForExit(60_000), "hyve did not end after --force-poweroff");
        Assert.Equal(1, p.ExitCode);
    }

    // Waits until the VM's drop counter passes zero: the failing writes happened and the VM still answers.
    private static long WaitForDrops(string runDir, string name)
    {
        var sw = Stopwatch.StartNew();
        long d;
        while ((d = Dropped(runDir, name)) == 0 && sw.Elapsed.TotalSeconds < 60) Thread.Sleep(200);
        return d;
    }

    // RLIMIT_AS below the guest's memory: the mapping fails at start-up, hyve ends with status 4 and one line, and
    // leaves no control socket behind.
    [Fact]
    public void Guest_memory_that_cannot_be_mapped_ends_start_up_with_one_line_and_status_4()
    {
        string runDir = NewRunDir(), name = "as" + Guid.NewGuid().ToString("N")[..6];
        using var p = Start($"--as={3L << 30}", runDir, "-m", "4G", "-o", "accel=soft", "-l", $"bootrom,{PrintingRom}", name);
        string err = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(60_000));
        Assert.Equal(4, p.ExitCode);
        Assert.Single(err.TrimEnd('\n').Split('\n'));
        Assert.StartsWith("hyve: ", err, StringComparison.Ordinal);
        Assert.Contains("ENOMEM", err, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(runDir, name)));
    }
    // RLIMIT_FSIZE (prlimit --fsize) under hyve, a little above guest memory (whose memfd is sized under the same
    // limit): SIGXFSZ is ignored, so the console log's write past the limit fails with EFBIG and is dropped and counted;
    // the log keeps what it held and every byte written before (all 'x'). A checkpoint needs more than the limit
    // (guest memory and the ROM): hyvectl reports it in one line, the file already at the target path is untouched,
    // no temporary file is left, and the VM runs on.
    [Fact]
    public void A_file_size_limit_fails_the_console_log_and_a_snapshot_and_the_VM_runs_on()
    {
        const long Limit = (64 << 20) + 16384;
        const int Room = 4096; // what the log can take before the limit
        string runDir = NewRunDir(), name = "fs" + Guid.NewGuid().ToString("N")[..6];
        string log = Path.Combine(runDir, "com1.log"), snap = Path.Combine(runDir, "old.hyvesnap");
        File.WriteAllText(snap, "an older snapshot\n");
        using (var f = File.Create(log)) { f.Write("earlier\n"u8); f.SetLength(Limit - Room); }
        using var p = Start($"--fsize={Limit}", runDir, "-m", "64M", "-o", "accel=soft", "-l", $"bootrom,{PrintingRom}", "-l", $"com1,{log}", name);
        try
        {
            WaitForSocket(p, runDir, name);
            long dropped = WaitForDrops(runDir, name);
            Assert.True(dropped > 0, "console output past the file-size limit is counted as dropped");
            byte[] written = File.ReadAllBytes(log);
            Assert.Equal(Limit, written.Length);
            Assert.Equal("earlier\n"u8.ToArray(), written[..8]);
            Assert.All(written[(int)(Limit - Room)..], b => Assert.Equal((byte)'x', b));

            var (status, _, err) = Ctl(runDir, $"--vm={name}", $"--checkpoint={snap}");
            Assert.NotEqual(0, status);
            Assert.Single(err.TrimEnd('\n').Split('\n'));
            Assert.Contains(snap, err, StringComparison.Ordinal);
            Assert.Contains("file-size limit", err, StringComparison.Ordinal);
            Assert.Equal("an older snapshot\n", File.ReadAllText(snap));
            Assert.DoesNotContain(Directory.GetFiles(runDir), f => Path.GetFileName(f).StartsWith(".old.hyvesnap", StringComparison.Ordinal));

            // The VM goes on printing (and dropping) after the failed checkpoint.
            var sw = Stopwatch.StartNew();
            while (Dropped(runDir, name) <= dropped && sw.Elapsed.TotalSeconds < 60) Thread.Sleep(100);
            Assert.True(Dropped(runDir, name) > dropped, "the guest stopped after the failed checkpoint");
            PowerOffAndExpectStatus1(p, runDir, name);
            Assert.DoesNotContain("Unhandled", p.StandardError.ReadToEnd(), StringComparison.Ordinal);
        }
        finally
        {
            if (!p.HasExited) p.Kill();
        }
    }

    // A VNC client, a control client and a debugger that each leave in the middle of a message, or while the server
    // is answering: the VM runs on (its console output to /dev/full keeps being dropped and counted: ENOSPC never stops
    // a vCPU) and each server still serves the next client.
    [Fact]
    public void Peers_that_vanish_mid_message_leave_the_VM_running_and_the_servers_serving()
    {
        string runDir = NewRunDir(), name = "pv" + Guid.NewGuid().ToString("N")[..6];
        string vnc = Path.Combine(runDir, "vnc.sock"), gdb = Path.Combine(runDir, "gdb.sock");
        using var p = Start(null, runDir, "-m", "64M", "-o", "accel=soft", "-l", $"bootrom,{PrintingRom}", "-l", "com1,/dev/full",
            "-s", $"2,fbuf,unix={vnc},w=640,h=480", "-G", $"unix:{gdb}", name);
        try
        {
            WaitForSocket(p, runDir, name);
            long dropped = WaitForDrops(runDir, name);
            Assert.True(dropped > 0, "console output to /dev/full is dropped and counted");

            // VNC: SetEncodings announcing 5 encodings, then gone after 1.
            using (var c = new RfbTestClient(new UnixDomainSocketEndPoint(vnc)))
            {
                Assert.Equal(0, c.Handshake());
                c.Send(2, 0, 0, 5, 0, 0, 0, 16);
            }
            // VNC: a full picture asked for, and the client gone (reset) before reading it.
            using (var c = new RfbTestClient(new UnixDomainSocketEndPoint(vnc)))
            {
                Assert.Equal(0, c.Handshake());
                c.Request(incremental: false);
            }
            // VNC: half a version string.
            using (var s = UnixConnect(vnc)) { s.Receive(new byte[12]); s.Send("RFB 00"u8); }
            // The next client gets its picture.
            using (var c = new RfbTestClient(new UnixDomainSocketEndPoint(vnc)))
            {
                Assert.Equal(0, c.Handshake());
                Assert.Equal((640, 480), (c.Width, c.Height));
                c.Request(incremental: false);
                Assert.NotEmpty(c.ReadUpdate());
            }

            // Control: a frame announcing 100 bytes, 10 sent, then gone; and a client gone before reading its answer.
            using (var s = UnixConnect(Path.Combine(runDir, name)))
            {
                var frame = new byte[14];
                BinaryPrimitives.WriteUInt32LittleEndian(frame, 100);
                s.Send(frame);
            }
            using (var s = UnixConnect(Path.Combine(runDir, name)))
            {
                var frame = new byte[8];
                BinaryPrimitives.WriteUInt32LittleEndian(frame, 4);
                BinaryPrimitives.WriteUInt16LittleEndian(frame.AsSpan(4), 1);
                BinaryPrimitives.WriteUInt16LittleEndian(frame.AsSpan(6), 21); // GetStats
                s.Send(frame);
            }

            // gdb: half a packet, then gone; a debugger that attaches (every vCPU stops), continues, and vanishes while
            // the guest runs; then one that attaches and is answered.
            using (var s = UnixConnect(gdb)) s.Send("$m10"u8);
            using (var s = GdbAttach(gdb))
            {
                s.Send(Encoding.ASCII.GetBytes(GdbFrame("c")));
                Thread.Sleep(200);
            }
            GdbAttach(gdb).Dispose();
            var sw = Stopwatch.StartNew();

            // Everyone is gone: the guest runs again and the console keeps dropping its output.
            long before = Dropped(runDir, name);
            sw.Restart();
            while (Dropped(runDir, name) <= before && sw.Elapsed.TotalSeconds < 60) Thread.Sleep(100);
            Assert.True(Dropped(runDir, name) > before, "the guest did not run on after its peers left");
            Assert.False(p.HasExited);
            PowerOffAndExpectStatus1(p, runDir, name);
            string stderr = p.StandardError.ReadToEnd();
            Assert.DoesNotContain("Unhandled", stderr, StringComparison.Ordinal);
            Assert.False(File.Exists(gdb), "the debug socket is removed when hyve ends");
        }
        finally
        {
            if (!p.HasExited) p.Kill();
        }
    }

    private static Socket UnixConnect(string path)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { ReceiveTimeout = 10_000 };
        s.Connect(new UnixDomainSocketEndPoint(path));
        return s;
    }

    // Connects a debugger and asks '?' (the stop reply); a session that just ended may still hold the server for a
    // moment (one debugger at a time: a second one is hung up on at once), so this tries again for a while.
    private static Socket GdbAttach(string path)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var s = UnixConnect(path);
            string reply;
            try
            {
                s.Send(Encoding.ASCII.GetBytes(GdbFrame("?")));
                reply = ReceiveSome(s);
            }
            catch (SocketException) { reply = ""; } // hung up on before the packet went out
            if (reply.Length > 0 || sw.Elapsed.TotalSeconds > 20)
            {
                Assert.StartsWith("+$T05", reply, StringComparison.Ordinal);
                return s;
            }
            s.Dispose();
            Thread.Sleep(100);
        }
    }

    private static string GdbFrame(string payload)
    {
        int sum = 0;
        foreach (char ch in payload) sum += ch;
        return $"${payload}#{sum & 0xff:x2}";
    }

    // Reads until a whole reply packet ("+$...#xx") arrived or the peer closed; "" when it closed at once.
    private static string ReceiveSome(Socket s)
    {
        var sb = new StringBuilder();
        var buf = new byte[4096];
        while (true)
        {
            int n;
            try { n = s.Receive(buf); }
            catch (SocketException) { break; }
            if (n <= 0) break;
            sb.Append(Encoding.Latin1.GetString(buf, 0, n));
            string t = sb.ToString();
            int hash = t.IndexOf('#', StringComparison.Ordinal);
            if (hash >= 0 && t.Length >= hash + 3) break;
        }
        return sb.ToString();
    }
}
