// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

/// <summary>
/// The graphical console against QEMU (-vga std -vnc, TCG): a boot ROM sets the standard VGA to 1024x768x32 through
/// the DISPI ports, places BAR 0 itself (no firmware runs) and then either scrolls "text" up by 16 lines forever or
/// draws one screen and halts. An RFB client asking for ZRLE, CopyRect and Raw keeps one incremental request
/// outstanding and counts updates and bytes for 10 s; for the idle case the VMM's CPU time over those 10 s is read
/// from /proc. Both VMMs run their guest on a software CPU here (hyve's interpreter, QEMU's TCG), so the guests scroll
/// at different speeds: bytes per update and per second are the comparable figures.
/// </summary>
static class VncBench
{
    private const uint Fb = 0xD000_0000;
    private const int Seconds = 10;

    public static void Run(string hyve, Func<Action<Assembler>, string> rom, bool idleOnly = false)
    {
        string scroll = rom(a => Guest(a, scrollForever: true));
        string idle = rom(a => Guest(a, scrollForever: false));
        Console.WriteLine("vnc: 1024x768x32, client with ZRLE+CopyRect+Raw, one incremental request outstanding, 10 s each");
        var hs = idleOnly ? default : Measure(true, scroll, hyve);
        var qs = idleOnly ? default : Measure(false, scroll, hyve);
        if (!idleOnly) Console.WriteLine($"  scrolling: hyve {hs.Updates / (double)Seconds:F1} updates/s, {hs.Bytes / Seconds / 1024.0:F0} KiB/s, {hs.Bytes / Math.Max(1, hs.Updates) / 1024.0:F1} KiB/update;"
            + $" qemu {qs.Updates / (double)Seconds:F1} updates/s, {qs.Bytes / Seconds / 1024.0:F0} KiB/s, {qs.Bytes / Math.Max(1, qs.Updates) / 1024.0:F1} KiB/update;"
            + $" bytes/update hyve/qemu = {(double)hs.Bytes / Math.Max(1, hs.Updates) / ((double)qs.Bytes / Math.Max(1, qs.Updates)):F2}");
        var hi = Measure(true, idle, hyve, settle: 8000);
        var qi = Measure(false, idle, hyve, settle: 8000);
        Console.WriteLine($"  idle screen, client connected and up to date (from 9 s after connecting, one incremental request outstanding): VMM CPU time hyve {hi.CpuMs:F0} ms, qemu {qi.CpuMs:F0} ms over {Seconds} s"
            + $" ({hi.CpuMs / Seconds / 10:F2}% vs {qi.CpuMs / Seconds / 10:F2}% of a core); updates hyve {hi.Updates}, qemu {qi.Updates}");
        Console.WriteLine($"  idle, busiest threads: hyve: {(hi.Threads.Length > 0 ? hi.Threads : "none")}; qemu: {(qi.Threads.Length > 0 ? qi.Threads : "none")}");
    }

    private record struct Result(int Updates, long Bytes, double CpuMs, string Threads = "");

    private static Result Measure(bool isHyve, string romPath, string hyve, int settle = 3000)
    {
        int port = FreePort();
        var psi = isHyve
            ? new ProcessStartInfo(hyve) { ArgumentList = { "-o", "accel=soft", "-l", $"bootrom,{romPath}", "-s", "0,hostbridge", "-s", $"2,fbuf,tcp=127.0.0.1:{port}", "-s", "31,lpc", $"vncbench{port}" } }
            : new ProcessStartInfo("qemu-system-x86_64") { ArgumentList = { "-accel", "tcg", "-m", "256", "-bios", romPath, "-display", "none", "-vnc", $"127.0.0.1:{port - 5900}", "-nodefaults", "-device", "VGA" } };
        psi.RedirectStandardError = psi.RedirectStandardOutput = true;
        using var p = Process.Start(psi)!;
        try
        {
            using var s = Connect(port);
            var st = new NetworkStream(s);
            Handshake(st, out int w, out int h);
            Thread.Sleep(settle); // the guest sets its mode (idle: and the screen has been still a while)
            bool idle = settle >= 8000;
            if (idle)
            {
                // The idle case measures a client that already has the picture: the first full update is outside it.
                Request(st, w, h, incremental: false);
                ReadUpdate(st, ref w, ref h);
                Thread.Sleep(1000);
            }
            double cpu0 = CpuMs(p.Id);
            var threads0 = ThreadCpu(p.Id);
            var sw = Stopwatch.StartNew();
            int updates = 0;
            long bytes = 0;
            Request(st, w, h, incremental: idle);
            s.ReceiveTimeout = 1000;
            while (sw.Elapsed.TotalSeconds < Seconds)
            {
                long n;
                try { n = ReadUpdate(st, ref w, ref h); }
                catch (IOException) { continue; } // nothing changed within the timeout
                updates++;
                bytes += n;
                Request(st, w, h, incremental: true);
            }
            var threads1 = ThreadCpu(p.Id);
            var busy = threads1.Select(t => (t.Key, Ms: t.Value - threads0.GetValueOrDefault(t.Key))).Where(t => t.Ms >= 0.05).OrderByDescending(t => t.Ms).Take(6);
            return new Result(updates, bytes, CpuMs(p.Id) - cpu0, string.Join(", ", busy.Select(t => $"{t.Key} {t.Ms:F1} ms")));
        }
        finally
        {
            p.Kill();
            p.WaitForExit();
        }
    }

    private static int FreePort()
    {
        for (int port = 5960 + Random.Shared.Next(30); ; port++)
        {
            try { using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp); s.Bind(new IPEndPoint(IPAddress.Loopback, port)); return port; }
            catch (SocketException) { }
        }
    }

    private static Socket Connect(int port)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try { s.Connect(IPAddress.Loopback, port); return s; }
            catch (SocketException) when (sw.Elapsed.TotalSeconds < 60) { s.Dispose(); Thread.Sleep(100); }
        }
    }

    // CPU time per thread (name/tid, from schedstat's nanoseconds) from /proc/PID/task, to say where an idle VMM spends it.
    private static Dictionary<string, double> ThreadCpu(int pid)
    {
        var d = new Dictionary<string, double>();
        foreach (var dir in Directory.GetDirectories($"/proc/{pid}/task"))
        {
            try
            {
                string comm = File.ReadAllText(Path.Combine(dir, "comm")).Trim();
                long ns = long.Parse(File.ReadAllText(Path.Combine(dir, "schedstat")).Split(' ')[0]);
                d[$"{comm}/{Path.GetFileName(dir)}"] = ns / 1e6;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // the thread ended meanwhile
        }
        return d;
    }

    private static double CpuMs(int pid) => StatMs(File.ReadAllText($"/proc/{pid}/stat"));

    private static double StatMs(string f)
    {
        var parts = f[(f.LastIndexOf(')') + 2)..].Split(' ');
        return (long.Parse(parts[11]) + long.Parse(parts[12])) * 1000.0 / 100; // utime + stime in clock ticks (USER_HZ 100)
    }

    private static void Handshake(Stream s, out int w, out int h)
    {
        var b = new byte[24];
        s.ReadExactly(b, 0, 12);
        s.Write("RFB 003.008\n"u8);
        int n = s.ReadByte();
        s.ReadExactly(b, 0, n);
        s.WriteByte(1);
        s.ReadExactly(b, 0, 4); // SecurityResult
        s.WriteByte(1);
        s.ReadExactly(b, 0, 24);
        w = BinaryPrimitives.ReadUInt16BigEndian(b);
        h = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(2));
        var name = new byte[BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(20))];
        s.ReadExactly(name);
        // SetEncodings: ZRLE, CopyRect, Raw, DesktopSize.
        var e = new byte[4 + 16];
        e[0] = 2; e[3] = 4;
        BinaryPrimitives.WriteInt32BigEndian(e.AsSpan(4), 16);
        BinaryPrimitives.WriteInt32BigEndian(e.AsSpan(8), 1);
        BinaryPrimitives.WriteInt32BigEndian(e.AsSpan(12), 0);
        BinaryPrimitives.WriteInt32BigEndian(e.AsSpan(16), -223);
        s.Write(e);
    }

    private static void Request(Stream s, int w, int h, bool incremental)
    {
        var b = new byte[10];
        b[0] = 3; b[1] = (byte)(incremental ? 1 : 0);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), (ushort)w);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(8), (ushort)h);
        s.Write(b);
    }

    // Reads one FramebufferUpdate (skipping other messages); returns its size in bytes.
    private static long ReadUpdate(Stream s, ref int w, ref int h)
    {
        int type;
        var b = new byte[16];
        while ((type = s.ReadByte()) != 0)
        {
            if (type < 0) throw new EndOfStreamException();
            if (type == 2) continue;
            if (type == 1) { s.ReadExactly(b, 0, 5); int n = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(3)); s.ReadExactly(new byte[n * 6]); continue; }
            if (type == 3) { s.ReadExactly(b, 0, 7); s.ReadExactly(new byte[BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(3))]); continue; }
            throw new InvalidDataException($"server message {type}");
        }
        s.ReadExactly(b, 0, 3);
        int rects = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(1));
        long total = 4;
        for (int i = 0; i < rects; i++)
        {
            s.ReadExactly(b, 0, 12);
            total += 12;
            int rw = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(4)), rh = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(6));
            int enc = BinaryPrimitives.ReadInt32BigEndian(b.AsSpan(8));
            long skip = enc switch
            {
                0 => (long)rw * rh * 4,
                1 => 4,
                -223 => 0,
                16 => -1,
                _ => throw new InvalidDataException($"encoding {enc}"),
            };
            if (enc == -223) { w = rw; h = rh; }
            if (skip < 0)
            {
                s.ReadExactly(b, 0, 4);
                skip = BinaryPrimitives.ReadUInt32BigEndian(b);
                total += 4;
            }
            var buf = new byte[Math.Min(skip, 1 << 20)];
            for (long left = skip; left > 0;) { int k = (int)Math.Min(left, buf.Length); s.ReadExactly(buf, 0, k); left -= k; }
            total += skip;
        }
        return total;
    }

    // Real-mode ROM: a flat 4 GiB DS/ES (unreal mode) for the framebuffer, BAR 0 of 00:02.0 placed at Fb with memory
    // decode on, DISPI 1024x768x32, then the scroll loop or one picture and a halt.
    private static void Guest(Assembler a, bool scrollForever)
    {
        a.cli();
        // GDT in RAM at 0x500 (null, flat 4 GiB data), GDTR at 0x510.
        a.xor(ax, ax);
        a.mov(ds, ax);
        a.mov(__dword_ptr[0x500], 0);
        a.mov(__dword_ptr[0x504], 0);
        a.mov(__dword_ptr[0x508], 0x0000ffff);
        a.mov(__dword_ptr[0x50c], 0x00cf9200);
        a.mov(__word_ptr[0x510], 23);
        a.mov(__dword_ptr[0x512], 0x500);
        a.lgdt(__[0x510]);
        a.mov(eax, cr0);
        a.or(al, 1);
        a.mov(cr0, eax);
        a.mov(bx, 8);
        a.mov(ds, bx);
        a.mov(es, bx);
        a.and(al, 0xfe);
        a.mov(cr0, eax);
        a.xor(ax, ax);
        a.mov(ds, ax);
        a.mov(es, ax);
        // PCI: BAR 0 and the command register of bus 0, device 2.
        PciWrite(a, 0x10, Fb);
        PciWrite(a, 0x04, 0x7);
        foreach (var (index, value) in new (int, int)[] { (4, 0), (3, 32), (1, 1024), (2, 768), (4, 0x41) })
        {
            a.mov(dx, 0x1ce); a.mov(ax, (ushort)index); a.@out(dx, ax);
            a.mov(dx, 0x1cf); a.mov(ax, (ushort)value); a.@out(dx, ax);
        }
        // Attribute controller index with bit 5 (palette address source) set: QEMU blanks the screen without it.
        a.mov(dx, 0x3da); a.@in(al, dx);
        a.mov(dx, 0x3c0); a.mov(al, 0x20); a.@out(dx, al);
        a.xor(ebp, ebp);
        var top = a.CreateLabel();
        a.Label(ref top);
        if (scrollForever)
        {
            // Move rows 16..767 up to 0..751.
            a.mov(esi, Fb + 16 * 4096);
            a.mov(edi, Fb);
            a.mov(ecx, 752 * 1024);
            var copy = a.CreateLabel();
            a.Label(ref copy);
            a.mov(eax, __dword_ptr[esi]);
            a.mov(__dword_ptr[edi], eax);
            a.add(esi, 4);
            a.add(edi, 4);
            a.dec(ecx);
            a.jnz(copy);
        }
        // A new 16-line band of two-colour "text" at the bottom (the whole screen when idle).
        a.mov(edi, scrollForever ? Fb + 752 * 4096 : Fb);
        a.mov(ecx, scrollForever ? 16 * 1024 : 768 * 1024);
        a.imul(edx, ebp, 0x45d9f3b);
        var fill = a.CreateLabel();
        var dark = a.CreateLabel();
        var store = a.CreateLabel();
        a.Label(ref fill);
        a.mov(eax, ecx);
        a.xor(eax, edx);
        a.test(eax, 0x13);
        a.jnz(dark);
        a.mov(eax, 0xc0c0c0);
        a.jmp(store);
        a.Label(ref dark);
        a.mov(eax, 0x000020);
        a.Label(ref store);
        a.mov(__dword_ptr[edi], eax);
        a.add(edi, 4);
        a.dec(ecx);
        a.jnz(fill);
        a.inc(ebp);
        if (scrollForever) a.jmp(top);
        var halt = a.CreateLabel();
        a.Label(ref halt);
        a.sti(); // halted with interrupts on: idle, not a VM halt (which ends the VM, as in bhyve)
        a.hlt();
        a.jmp(halt);
    }

    private static void PciWrite(Assembler a, int reg, uint value)
    {
        a.mov(dx, 0xcf8);
        a.mov(eax, 0x8000_0000u | 2 << 11 | (uint)reg);
        a.@out(dx, eax);
        a.mov(dx, 0xcfc);
        a.mov(eax, value);
        a.@out(dx, eax);
    }
}
