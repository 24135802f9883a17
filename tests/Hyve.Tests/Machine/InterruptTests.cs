// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Machine;

/// <summary>
/// Interrupts end to end on the real ./hyve: the 8259 pair fed by the PIT and the RTC, an NMI from hyvectl,
/// and the RTC's time and NVRAM through the control socket across a reset, on each CPU engine. Each guest is a real-mode boot ROM
/// whose handlers sit in the ROM and run through its shadow at F000.
/// </summary>
public partial class InterruptTests
{
    private const ushort Handler = 0x8000;
    private const ushort Counter = 0x500;

    private static string Name() => "irq" + Guid.NewGuid().ToString("N")[..8];

    private static string Rom(Action<Assembler> code, params (ushort, Action<Assembler>)[] blocks) =>
        GuestRom.ToFile(GuestRom.RealModeWithBlocks(code, blocks));

    // DS = SS = 0, SP = 0x7000, the handler counter cleared, IVT[vector] = F000:Handler.
    private static void Setup(Assembler a, int vector)
    {
        a.cli();
        a.xor(ax, ax);
        a.mov(ds, ax);
        a.mov(ss, ax);
        a.mov(sp, 0x7000);
        a.mov(__word_ptr[Counter], 0);
        a.mov(__word_ptr[vector * 4], Handler);
        a.mov(__word_ptr[vector * 4 + 2], GuestRom.ShadowSegment);
    }

    // ICW1-ICW4 for both 8259s (edge triggered, cascaded through master IRQ2, 8086 mode), then OCW1 masks.
    private static void ProgramPics(Assembler a, byte masterBase, byte slaveBase, byte masterMask, byte slaveMask)
    {
        void Out(byte port, byte value)
        {
            a.mov(al, value);
            a.@out(port, al);
        }
        Out(0x20, 0x11); // ICW1: ICW4 needed, cascade mode
        Out(0x21, masterBase); // ICW2
        Out(0x21, 0x04); // ICW3: a slave on IR2
        Out(0x21, 0x01); // ICW4: 8086 mode, normal EOI
        Out(0xa0, 0x11);
        Out(0xa1, slaveBase);
        Out(0xa1, 0x02); // ICW3: slave identity 2
        Out(0xa1, 0x01);
        Out(0x21, masterMask); // OCW1
        Out(0xa1, slaveMask);
    }

    // Waits until the interrupt handler has counted to <paramref name="count"/>, sleeping in HLT between interrupts.
    private static void WaitForCount(Assembler a, ushort count)
    {
        var wait = a.CreateLabel();
        a.sti();
        a.Label(ref wait);
        a.hlt();
        a.cmp(__word_ptr[Counter], count);
        a.jb(wait);
        a.cli();
    }

    private static void Spin(Assembler a)
    {
        var l = a.CreateLabel();
        a.Label(ref l);
        a.jmp(l);
    }

    /// <summary>
    /// ./hyve with each stdout line stamped as it arrives, read on dedicated threads: the Process class's event
    /// readers run on the thread pool, which parallel tests that block in sleeps can starve for seconds.
    /// </summary>
    private sealed class TimedHyve : IDisposable
    {
        private readonly Process _process;
        private readonly List<(string Line, TimeSpan At)> _lines = [];
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private readonly Thread _out, _err;
        private string _stderr = "";

        public TimedHyve(params string[] args)
        {
            var psi = new ProcessStartInfo(Path.Combine(HyveProcess.RepoRoot, "hyve"))
            {
                RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            };
            foreach (var a in args) psi.ArgumentList.Add(a);
            string runDir = Path.Combine(Path.GetTempPath(), "hyve-test-" + Guid.NewGuid().ToString("N")[..12]);
            Directory.CreateDirectory(runDir);
            psi.Environment["HYVE_RUN_DIR"] = runDir;
            _process = Process.Start(psi)!;
            var stdout = _process.StandardOutput;
            var stderr = _process.StandardError;
            // An exception on these threads would end the test host: a closed stream is simply the end.
            _out = new Thread(() =>
            {
                try
                {
                    while (stdout.ReadLine() is { } line)
                        lock (_lines) _lines.Add((line, _clock.Elapsed));
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
            }) { IsBackground = true };
            _err = new Thread(() =>
            {
                try { _stderr = stderr.ReadToEnd(); }
                catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
            }) { IsBackground = true };
            _out.Start();
            _err.Start();
        }

        public string Stdout
        {
            get { lock (_lines) return string.Concat(_lines.Select(l => l.Line + "\n")); }
        }

        /// <summary>When the first line starting with <paramref name="prefix"/> arrived (failing after <paramref name="seconds"/>).</summary>
        public TimeSpan SeenAt(string prefix, int seconds = 20)
        {
            var deadline = _clock.Elapsed + TimeSpan.FromSeconds(seconds);
            while (true)
            {
                lock (_lines)
                    foreach (var (line, at) in _lines)
                        if (line.StartsWith(prefix, StringComparison.Ordinal)) return at;
                if (!_out.IsAlive)
                    throw new InvalidOperationException($"hyve ended before '{prefix}'; stdout: {Stdout} {Finish()}");
                if (_clock.Elapsed > deadline) throw new TimeoutException($"no '{prefix}' in {seconds} s; stdout: {Stdout}");
                Thread.Sleep(2);
            }
        }

        /// <summary>Waits for hyve to exit and returns its status.</summary>
        public int WaitForExit(int seconds = 20)
        {
            if (!_process.WaitForExit(seconds * 1000))
                throw new TimeoutException($"hyve did not exit in {seconds} s; stdout: {Stdout}");
            _out.Join();
            _err.Join();
            return _process.ExitCode;
        }

        public string Stderr => _stderr;

        private string Finish()
        {
            try { return $"status {WaitForExit()}, stderr: {_stderr}"; }
            catch (TimeoutException) { return ""; }
        }

        public void Dispose()
        {
            try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            _out.Join(5000);
            _err.Join(5000);
            _process.Dispose();
        }
    }

    [Theory, KvmData, SoftData]
    public void PitChannel0At1kHzThroughThe8259Gives200InterruptsInAFifthOfASecond(string accel)
    {
        string rom = Rom(a =>
        {
            Setup(a, 0x20);
            ProgramPics(a, 0x20, 0x28, masterMask: 0xfe, slaveMask: 0xff);
            GuestRom.Print(a, "start\n");
            // Counter 0, LSB then MSB, mode 2 (rate generator), binary: 1193182 Hz / 1193 = 1000 Hz.
            a.mov(al, 0x34);
            a.@out(0x43, al);
            a.mov(al, 1193 & 0xff);
            a.@out(0x40, al);
            a.mov(al, 1193 >> 8);
            a.@out(0x40, al);
            WaitForCount(a, 200);
            GuestRom.Print(a, "done\n");
            a.hlt();
        }, (Handler, h =>
        {
            h.push(ax);
            h.push(ds);
            h.xor(ax, ax);
            h.mov(ds, ax);
            h.inc(__word_ptr[Counter]);
            h.mov(al, 0x20); // OCW2: non-specific EOI
            h.@out(0x20, al);
            h.pop(ds);
            h.pop(ax);
            h.iret();
        }));
        using var p = new TimedHyve(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name()));
        var start = p.SeenAt("start", 180); // the first run may rebuild ./hyve
        var done = p.SeenAt("done");
        int status = p.WaitForExit();
        double seconds = (done - start).TotalSeconds;
        Assert.True(seconds is >= 0.1 and <= 1.0, $"200 ticks at 1 kHz took {seconds:F3} s");
        Assert.Equal("start\ndone\n", p.Stdout);
        Assert.True(status == 2, $"status {status}, stderr: {p.Stderr}");
    }

    // Issue 15: a register-only loop runs as a translated block that loops on itself in host code; interrupts must still
    // arrive in it (the translated loop returns to the vCPU loop within its instruction budget). The handler counts in
    // ESI, which the loop tests: it ends only if the 200 timer interrupts are taken while it spins.
    [Theory, SoftData]
    public void PitInterruptsArriveInAHotTranslatedLoop(string accel)
    {
        string rom = Rom(a =>
        {
            Setup(a, 0x20);
            ProgramPics(a, 0x20, 0x28, masterMask: 0xfe, slaveMask: 0xff);
            GuestRom.Print(a, "start\n");
            a.mov(al, 0x34);
            a.@out(0x43, al);
            a.mov(al, 1193 & 0xff);
            a.@out(0x40, al);
            a.mov(al, 1193 >> 8);
            a.@out(0x40, al);
            a.xor(esi, esi);
            a.xor(ecx, ecx);
            a.sti();
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.add(ecx, 3);
            a.cmp(esi, 200);
            a.jb(spin);
            a.cli();
            GuestRom.Print(a, "done\n");
            a.hlt();
        }, (Handler, h =>
        {
            h.inc(esi);
            h.push(ax);
            h.mov(al, 0x20);
            h.@out(0x20, al);
            h.pop(ax);
            h.iret();
        }));
        using var p = new TimedHyve(Backends.Args(accel, "-o", "soft.jit=true", "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name()));
        var start = p.SeenAt("start", 180);
        var done = p.SeenAt("done");
        int status = p.WaitForExit();
        double seconds = (done - start).TotalSeconds;
        Assert.True(seconds is >= 0.1 and <= 1.0, $"200 ticks at 1 kHz took {seconds:F3} s");
        Assert.Equal("start\ndone\n", p.Stdout);
        Assert.True(status == 2, $"status {status}, stderr: {p.Stderr}");
    }

    [Theory, KvmData, SoftData]
    public void RtcUpdateEndedInterruptArrivesAsIrq8ThroughTheSlave8259(string accel)
    {
        // The PC BIOS layout: master at vector 8, slave at 0x70, so IRQ 8 is vector 0x70.
        string rom = Rom(a =>
        {
            Setup(a, 0x70);
            ProgramPics(a, 0x08, 0x70, masterMask: 0xfb, slaveMask: 0xfe); // IRQ2 (cascade) and IRQ8 only
            a.mov(al, 0x0c); // read register C once: nothing stale pending
            a.@out(0x70, al);
            a.@in(al, 0x71);
            a.mov(al, 0x0b);
            a.@out(0x70, al);
            a.@in(al, 0x71);
            a.or(al, 0x10); // UIE: an interrupt each time the update cycle ends (once a second)
            a.mov(ah, al);
            a.mov(al, 0x0b);
            a.@out(0x70, al);
            a.mov(al, ah);
            a.@out(0x71, al);
            GuestRom.Print(a, "armed\n");
            WaitForCount(a, 2);
            GuestRom.Print(a, "done\n");
            a.hlt();
        }, (Handler, h =>
        {
            h.pusha();
            h.push(ds);
            h.xor(ax, ax);
            h.mov(ds, ax);
            h.mov(al, 0x0c); // reading register C acknowledges the interrupt and lowers IRQ 8
            h.@out(0x70, al);
            h.@in(al, 0x71);
            h.mov(bl, al);
            h.mov(al, 0x20);
            h.@out(0xa0, al); // EOI to the slave, then to the master for the cascade
            h.@out(0x20, al);
            h.inc(__word_ptr[Counter]);
            GuestRom.Print(h, "rtc irq, register c ");
            h.mov(al, bl);
            h.xor(ah, ah);
            GuestRom.PrintHexAx(h);
            GuestRom.Print(h, "\n");
            h.pop(ds);
            h.popa();
            h.iret();
        }));
        using var p = new TimedHyve(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", Name()));
        var armed = p.SeenAt("armed", 180);
        var first = p.SeenAt("rtc irq", 5);
        p.SeenAt("done", 5);
        int status = p.WaitForExit();
        Assert.True((first - armed).TotalSeconds < 1.5, $"first update-ended interrupt after {(first - armed).TotalSeconds:F3} s");
        // Register C showed IRQF (bit 7) and UF (bit 4) each time.
        Assert.Equal("armed\nrtc irq, register c 0090\nrtc irq, register c 0090\ndone\n", p.Stdout);
        Assert.True(status == 2, $"status {status}, stderr: {p.Stderr}");
    }

    [Theory, KvmData, SoftData]
    public void HyvectlInjectNmiReachesTheGuestsNmiHandler(string accel)
    {
        string rom = Rom(a =>
        {
            Setup(a, 2);
            GuestRom.Print(a, "ready\n");
            Spin(a); // interrupts stay off: only an NMI gets through
        }, (Handler, h =>
        {
            GuestRom.Print(h, "nmi\n");
            h.iret();
        }));
        string name = Name();
        using var p = HyveProcess.Start(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", name));
        p.WaitForOutput("ready\n", 180);
        p.WaitForSocket(name);
        var nmi = p.Ctl($"--vm={name}", "--inject-nmi");
        Assert.True(nmi.Status == 0, $"hyvectl --inject-nmi: {nmi.Status} {nmi.Err}");
        p.WaitForOutput("nmi\n", 10);
        Assert.Equal(0, p.Ctl($"--vm={name}", "--force-poweroff").Status);
        p.WaitForExit(20);
        Assert.Equal("ready\nnmi\n", p.Stdout);
        Assert.Equal(1, p.ExitCode);
    }

    [GeneratedRegex(@"^rtc time 0x([0-9a-f]+): ")]
    private static partial Regex RtcTimeLine();

    private static long RtcTime(HyveProcess p, string name)
    {
        var r = p.Ctl($"--vm={name}", "--get-rtc-time");
        Assert.True(r.Status == 0, $"hyvectl --get-rtc-time: {r.Status} {r.Err}");
        var m = RtcTimeLine().Match(r.Out);
        Assert.True(m.Success, $"unexpected --get-rtc-time output: {r.Out}");
        return long.Parse(m.Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture);
    }

    [Theory, KvmData, SoftData]
    public void RtcNvramSurvivesAResetAndRtcTimeFollowsTheHostAndRoundTrips(string accel)
    {
        string rom = Rom(a =>
        {
            GuestRom.Print(a, "banner\n");
            a.cli();
            Spin(a);
        });
        string name = Name();
        // -u: the RTC keeps UTC, so it compares with the host's UTC whatever the host's time zone.
        using var p = HyveProcess.Start(Backends.Args(accel, "-u", "-l", $"bootrom,{rom}", "-l", "com1,stdio", name));
        p.WaitForOutput("banner\n", 180);
        p.WaitForSocket(name);

        var set = p.Ctl($"--vm={name}", "--rtc-nvram-offset=0x40", "--set-rtc-nvram=0x5a");
        Assert.True(set.Status == 0, $"hyvectl --set-rtc-nvram: {set.Status} {set.Err}");
        Assert.Equal(0, p.Ctl($"--vm={name}", "--force-reset").Status);
        var sw = Stopwatch.StartNew();
        while (p.Stdout != "banner\nbanner\n" && sw.Elapsed.TotalSeconds < 20) Thread.Sleep(20);
        Assert.Equal("banner\nbanner\n", p.Stdout);
        var get = p.Ctl($"--vm={name}", "--rtc-nvram-offset=0x40", "--get-rtc-nvram");
        Assert.Equal(0, get.Status);
        Assert.Equal("rtc nvram[064]: 0x5a\n", get.Out);

        long host = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        Assert.InRange(RtcTime(p, name), host - 3, host + 3);

        const long when = 0x6925a850; // Tue Nov 25 13:00:00 2025 UTC
        var setTime = p.Ctl($"--vm={name}", $"--set-rtc-time={when}");
        Assert.True(setTime.Status == 0, $"hyvectl --set-rtc-time: {setTime.Status} {setTime.Err}");
        Assert.InRange(RtcTime(p, name), when, when + 2);
        var line = p.Ctl($"--vm={name}", "--get-rtc-time").Out;
        Assert.StartsWith("rtc time 0x6925a85", line, StringComparison.Ordinal);
        Assert.Contains("Tue Nov 25 13:00:0", line, StringComparison.Ordinal);

        Assert.Equal(0, p.Ctl($"--vm={name}", "--force-poweroff").Status);
        p.WaitForExit(20);
        Assert.Equal(1, p.ExitCode);
    }
}
