// SPDX-License-Identifier: BSD-2-Clause
// Benchmarks hyve against QEMU in one invocation and prints ratios (figures for closing notes, never test
// assertions). Usage: dotnet run -c Release --project bench/HyveBench -- [exits|startup|footprint|mips|all] [runs]
using System.Diagnostics;
using System.Runtime.InteropServices;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

string what = args.Length > 0 ? args[0] : "all";
int runs = args.Length > 1 ? int.Parse(args[1]) : 5;
string root = FindRoot();
string hyve = Path.Combine(root, "hyve");
string work = Directory.CreateTempSubdirectory("hyve-bench").FullName;
Environment.SetEnvironmentVariable("HYVE_RUN_DIR", work);
Run(hyve, "-h"); // publish once, outside the timings

if (what is "exits" or "all") ExitRoundTrip();
if (what is "startup" or "all") Startup();
if (what is "footprint" or "all") Footprint();
if (what is "mips" or "all") Mips();
if (what is "snapshot" or "all") Snapshots();
if (what is "vnc" or "vnc-idle" or "all") VncBench.Run(hyve, Rom, idleOnly: what == "vnc-idle");
return 0;

// 200,000 reads of COM1's line status register, then the debug-exit port: every read is a VM exit
// answered in user space by the UART model.
void ExitRoundTrip()
{
    const int reads = 200_000;
    string rom = Rom(a =>
    {
        a.mov(ecx, reads);
        a.mov(dx, 0x3fd);
        var loop = a.CreateLabel();
        a.Label(ref loop);
        a.@in(al, dx);
        a.dec(ecx);
        a.jnz(loop);
        a.mov(al, 0);
        a.@out(0xf4, al);
        a.cli();
        a.hlt();
    });
    var h = new List<double>();
    var q = new List<double>();
    var f = new List<double>();
    var hCpu = new List<Cpu>();
    var qCpu = new List<Cpu>();
    string? floor = BuildFloor();
    for (int i = 0; i < runs; i++)
    {
        h.Add(Time(hyve, $"-o accel=kvm -l bootrom,{rom} -l debug-exit,iobase=0xf4,iosize=4 bench{i}", hCpu));
        q.Add(Time("qemu-system-x86_64", $"-accel kvm -nodefaults -display none -m 256 -bios {rom} -device isa-debug-exit,iobase=0xf4,iosize=4", qCpu));
        if (floor is not null) f.Add(Time(floor, rom));
    }
    Report($"exit round trip ({reads} port reads)", h, q, "goal: hyve/qemu <= 0.90");
    // The host's floor: bench/floor/kvm-floor.c runs the same ROM with nothing but KVM_RUN and the two port answers.
    Console.WriteLine(floor is null
        ? "  floor: no C compiler (cc), bench/floor/kvm-floor.c not run"
        : $"  floor (bench/floor/kvm-floor.c, KVM_RUN and nothing else): {Median(f) * 1000:F1} ms; floor/qemu = {Median(f) / Median(q):F2}, hyve/floor = {Median(h) / Median(f):F2}");
    Console.WriteLine($"  hyve {reads / Median(h) / 1000:F0}k exits/s, qemu {reads / Median(q) / 1000:F0}k exits/s");
    // CPU time does not count time spent waiting for a core, so it compares the two fairly on a loaded host; the
    // split shows where an exit's cost lies (user: the VMM's dispatch; sys: KVM_RUN, the kernel's emulation, entry).
    Cpu hc = MedianCpu(hCpu), qc = MedianCpu(qCpu);
    Console.WriteLine($"  CPU time per exit (whole process, medians): hyve user {hc.User / reads * 1e6:F2} us + sys {hc.Sys / reads * 1e6:F2} us, "
        + $"qemu user {qc.User / reads * 1e6:F2} us + sys {qc.Sys / reads * 1e6:F2} us; hyve/qemu = {(hc.User + hc.Sys) / (qc.User + qc.Sys):F2}");
}

// From exec to the guest's first port write: a ROM whose first instruction writes the debug-exit port.
// hyve: the bench puts its CLOCK_MONOTONIC time (Stopwatch's clock on Linux, in ns) in HYVE_BENCH_T0 just before
// it spawns the process, and hyve prints the monotonic time of the guest's first VM exit to stderr; the difference
// is the figure (it includes the bench's own fork/exec). QEMU cannot report that, so both are also timed over their
// whole process life (an upper bound: it adds tearing the VM down and the bench's wait for the exit).
void Startup()
{
    string rom = Rom(a => { a.@out(0xf4, al); a.hlt(); });
    var h = new List<double>();
    var q = new List<double>();
    var first = new List<double>();
    var firstViaLauncher = new List<double>();
    // The NativeAOT executable itself; ./hyve is a bash launcher (two bash starts and a source-staleness find) in front of it.
    string binary = Path.Combine(root, ".build", "hyve", "hyve");
    for (int i = 0; i < Math.Max(runs, 10) + 1; i++)
    {
        var (_, viaLauncher) = TimeFirstExit(hyve, $"-o accel=kvm -l bootrom,{rom} -l debug-exit,iobase=0xf4,iosize=4 launch{i}");
        var (life, firstExit) = TimeFirstExit(binary, $"-o accel=kvm -l bootrom,{rom} -l debug-exit,iobase=0xf4,iosize=4 start{i}");
        double ql = Time("qemu-system-x86_64", $"-accel kvm -nodefaults -display none -m 256 -bios {rom} -device isa-debug-exit,iobase=0xf4,iosize=4");
        if (i == 0) continue; // the first spawn warms the bench's own process-launch path
        h.Add(life);
        q.Add(ql);
        if (firstExit is double f) first.Add(f);
        if (viaLauncher is double v) firstViaLauncher.Add(v);
    }
    Report("start-up, whole process life (upper bound)", h, q, "");
    Console.WriteLine(first.Count == 0
        ? "start-up: hyve reported no first exit (HYVE_BENCH_T0 not honoured?)"
        : $"start-up: exec to the guest's first port write: hyve {Median(first) * 1000:F2} ms (median of {first.Count}, min {first.Min() * 1000:F2}); goal: hyve <= 5 ms");
    if (firstViaLauncher.Count > 0)
        Console.WriteLine($"  through the ./hyve launcher: {Median(firstViaLauncher) * 1000:F2} ms (median, min {firstViaLauncher.Min() * 1000:F2})");
}

(double Life, double? FirstExit) TimeFirstExit(string program, string arguments)
{
    var psi = new ProcessStartInfo(program, arguments) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
    long t0 = Stopwatch.GetTimestamp();
    psi.Environment["HYVE_BENCH_T0"] = t0.ToString(System.Globalization.CultureInfo.InvariantCulture);
    using var p = Process.Start(psi)!;
    var stdout = p.StandardOutput.ReadToEndAsync();
    string stderr = p.StandardError.ReadToEnd();
    stdout.Wait();
    p.WaitForExit();
    double life = Stopwatch.GetElapsedTime(t0).TotalSeconds;
    const string key = "first-exit-ns=";
    int at = stderr.IndexOf(key, StringComparison.Ordinal);
    if (at < 0) return (life, null);
    int end = at + key.Length;
    while (end < stderr.Length && char.IsAsciiDigit(stderr[end])) end++;
    long ns = long.Parse(stderr.AsSpan(at + key.Length, end - at - key.Length), System.Globalization.CultureInfo.InvariantCulture);
    return (life, (ns - t0) / (double)Stopwatch.Frequency);
}

// Resident memory of a running hyve that is not guest memory (guest pages are shared memfd pages: RssShmem). Sampled
// twice: 50 ms after the spawn, while start-up's pages are still mapped, and 1.5 s after, once hyve has let go of them
// (StartupPages, 100 ms after the vCPUs start): the second is the running VM's resident set, the figure the goal names.
void Footprint()
{
    string rom = Rom(a => { var l = a.CreateLabel(); a.Label(ref l); a.jmp(l); });
    using var p = Process.Start(new ProcessStartInfo(hyve) { ArgumentList = { "-o", "accel=kvm", "-l", $"bootrom,{rom}", "footprint" }, UseShellExecute = false })!;
    var sw = Stopwatch.StartNew();
    string binary = Path.Combine(root, ".build", "hyve", "hyve");
    // ./hyve is a launcher that execs the binary: wait for the exec before the first sample.
    while (sw.ElapsedMilliseconds < 1000 && !File.ReadAllText($"/proc/{p.Id}/cmdline").StartsWith(binary, StringComparison.Ordinal)) Thread.Sleep(1);
    Thread.Sleep(50);
    var early = Sample(p.Id);
    Thread.Sleep(1500);
    var late = Sample(p.Id);
    p.Kill();
    p.WaitForExit();
    Console.WriteLine($"footprint: RSS without guest pages {(late.Anon + late.File) / 1024.0:F1} MiB (anon {late.Anon} KiB, file {late.File} KiB; guest shmem {late.Shmem} KiB; {late.Threads} threads); goal: <= 4 MiB");
    Console.WriteLine($"  50 ms after exec, before start-up's pages are let go: {(early.Anon + early.File) / 1024.0:F1} MiB (anon {early.Anon} KiB, file {early.File} KiB)");

    // QEMU for scale, by the same measure (its guest RAM is anonymous memory, so its anon figure includes the few guest
    // pages this ROM touches).
    using var q = Process.Start(new ProcessStartInfo("qemu-system-x86_64", $"-accel kvm -nodefaults -display none -m 256 -bios {rom}") { UseShellExecute = false })!;
    Thread.Sleep(1500);
    var qs = Sample(q.Id);
    q.Kill();
    q.WaitForExit();
    Console.WriteLine($"  qemu: {(qs.Anon + qs.File) / 1024.0:F1} MiB (anon {qs.Anon} KiB, file {qs.File} KiB; {qs.Threads} threads); hyve/qemu = {(double)(late.Anon + late.File) / (qs.Anon + qs.File):F2}");

    static (long Anon, long File, long Shmem, long Threads) Sample(int pid)
    {
        var status = File.ReadAllLines($"/proc/{pid}/status");
        long Kb(string key) => long.Parse(status.First(l => l.StartsWith(key)).Split(':')[1].Trim().Split(' ')[0]);
        return (Kb("RssAnon:"), Kb("RssFile:"), Kb("RssShmem:"), Kb("Threads:"));
    }
}

// Guest instructions per second on a fixed integer loop, in real mode from the boot ROM (operand-size prefixed 32-bit
// arithmetic: the loop is add eax,ecx / xor ebx,eax / dec ecx / jnz = 4 instructions an iteration), timed with the
// software CPU, with KVM (this host's KVM emulates at ~2 MIPS, so it runs a proportionally smaller count) and with QEMU's
// TCG. Start-up and tear-down are subtracted by timing a one-iteration ROM the same way.
void Mips()
{
    const long softIters = 50_000_000, kvmIters = 500_000, tcgIters = 50_000_000;
    string MipsRom(long iters) => Rom(a =>
    {
        a.mov(ecx, (uint)iters);
        a.xor(eax, eax);
        a.xor(ebx, ebx);
        var loop = a.CreateLabel();
        a.Label(ref loop);
        a.add(eax, ecx);
        a.xor(ebx, eax);
        a.dec(ecx);
        a.jnz(loop);
        a.mov(al, 0);
        a.@out(0xf4, al);
        a.cli();
        a.hlt();
    });
    string soft = MipsRom(softIters), kvm = MipsRom(kvmIters), tcg = MipsRom(tcgIters), empty = MipsRom(1);
    int n = Math.Max(1, Math.Min(runs, 3));
    // The rate uses the process's CPU time (user + sys): the loop runs on one host thread, and CPU time does not count time
    // spent waiting for a core on a loaded host. Wall-clock figures are printed beside it.
    double Rate(string accelArgs, bool qemu, string rom, long iters)
    {
        var full = new List<double>();
        var zero = new List<double>();
        var fullCpu = new List<Cpu>();
        var zeroCpu = new List<Cpu>();
        for (int i = 0; i < n; i++)
        {
            string Args(string r) => qemu
                ? $"{accelArgs} -nodefaults -display none -m 256 -bios {r} -device isa-debug-exit,iobase=0xf4,iosize=4"
                : $"{accelArgs} -l bootrom,{r} -l debug-exit,iobase=0xf4,iosize=4 mips{i}";
            zero.Add(Time(qemu ? "qemu-system-x86_64" : hyve, Args(empty), zeroCpu));
            full.Add(Time(qemu ? "qemu-system-x86_64" : hyve, Args(rom), fullCpu));
        }
        Cpu fc = MedianCpu(fullCpu), zc = MedianCpu(zeroCpu);
        double loopCpu = Math.Max(fc.User + fc.Sys - zc.User - zc.Sys, 1e-6);
        double loopWall = Math.Max(Median(full) - Median(zero), 1e-6);
        double instrs = 4.0 * (iters - 1);
        Console.WriteLine($"  {(qemu ? "qemu " : "hyve ")}{accelArgs,-14} {4 * iters / 1e6,7:F0}M instructions: CPU {fc.User + fc.Sys:F2} s - start-up {zc.User + zc.Sys:F2} s = "
            + $"{instrs / loopCpu / 1e6,8:F1} M instr/s (wall {Median(full):F2} - {Median(zero):F2} s = {instrs / loopWall / 1e6:F1} M instr/s)");
        return instrs / loopCpu;
    }
    Console.WriteLine($"mips: integer loop in real mode from the boot ROM (medians of {n})");
    double s = Rate("-o accel=soft", false, soft, softIters);
    double si = Rate("-o accel=soft -o soft.jit=false", false, soft, softIters);
    double k = File.Exists("/dev/kvm") ? Rate("-o accel=kvm", false, kvm, kvmIters) : double.NaN;
    double t = Rate("-accel tcg", true, tcg, tcgIters);
    Console.WriteLine($"mips: hyve-soft translated {s / 1e6:F1} M/s, interpreted {si / 1e6:F1} M/s (translated/interpreted = {s / si:F2})");
    Console.WriteLine($"mips: hyve-soft {s / 1e6:F1} M/s, hyve-kvm {k / 1e6:F1} M/s, qemu-tcg {t / 1e6:F1} M/s; hyve-soft/qemu-tcg = {s / t:F3}; goal: hyve-soft >= 100 M/s");
}

// Checkpoint and restore of a 512 MiB guest with 100 MiB touched, on the software CPU, against QEMU's TCG (migrate to a
// file with HMP's synchronous migrate; restore with -incoming from the file). The guest fills 100 MiB from 16 MiB with
// non-zero words, prints "F" on COM1, then writes the POST port in a loop (every iteration a port exit).
// hyve checkpoint: the wall time of ./hyvectl --checkpoint minus that of a ./hyvectl query (its own start-up).
// hyve restore: exec of the hyve binary to the restored guest's first port write (HYVE_BENCH_T0, as in start-up).
// QEMU restore: exec to 'info status' answering "running" (polled; an upper bound by the poll interval, 1 ms).
void Snapshots()
{
    string rom = Pm32Rom(a =>
    {
        a.mov(edi, 0x100_0000);
        a.mov(ecx, (100 << 20) / 4);
        a.mov(eax, 0x5a5a_0001);
        var fill = a.CreateLabel();
        a.Label(ref fill);
        a.mov(__dword_ptr[edi], eax);
        a.add(edi, 4);
        a.inc(eax);
        a.dec(ecx);
        a.jnz(fill);
        a.mov(dx, 0x3f8);
        a.mov(al, (byte)'F');
        a.@out(dx, al);
        var spin = a.CreateLabel();
        a.Label(ref spin);
        a.@out(0x80, al);
        a.jmp(spin);
    });
    string binary = Path.Combine(root, ".build", "hyve", "hyve");
    string hyvectl = Path.Combine(root, "hyvectl");
    Run(hyvectl, "-h");
    var cps = new List<double>();
    var ctlAlone = new List<double>();
    var restores = new List<double>();
    var qcps = new List<double>();
    var qrestores = new List<double>();
    long fileBytes = 0, fileAllocated = 0;
    int n = Math.Max(1, Math.Min(runs, 5));
    for (int i = 0; i < n; i++)
    {
        string name = $"snap{i}", file = Path.Combine(work, $"{name}.hyvesnap");
        var psi = new ProcessStartInfo(binary) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var x in new[] { "-o", "accel=soft", "-m", "512M", "-l", $"bootrom,{rom}", "-l", "com1,stdio", name }) psi.ArgumentList.Add(x);
        using (var p = Process.Start(psi)!)
        {
            var o = new System.Text.StringBuilder();
            p.OutputDataReceived += (_, e) => { };
            var buf = new char[1];
            while (p.StandardOutput.Read(buf, 0, 1) == 1 && buf[0] != 'F') { }
            ctlAlone.Add(Time(hyvectl, $"--vm={name} --get-cpu-topology"));
            cps.Add(Time(hyvectl, $"--vm={name} --checkpoint={file}"));
            Run(hyvectl, $"--vm={name} --force-poweroff");
            p.WaitForExit();
        }
        fileBytes = new FileInfo(file).Length;
        fileAllocated = Allocated(file);
        // Restore: the guest's first port write after the restore is the figure; SIGTERM then ends it (no ACPI guest:
        // hyve powers off at once) and hyve reports the time.
        var rpsi = new ProcessStartInfo(binary) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var x in new[] { "-r", file, $"{name}r" }) rpsi.ArgumentList.Add(x);
        long t0 = Stopwatch.GetTimestamp();
        rpsi.Environment["HYVE_BENCH_T0"] = t0.ToString(System.Globalization.CultureInfo.InvariantCulture);
        using (var r = Process.Start(rpsi)!)
        {
            Thread.Sleep(300);
            Process.Start("kill", $"-TERM {r.Id}")!.WaitForExit();
            string err = r.StandardError.ReadToEnd();
            r.WaitForExit();
            const string key = "first-exit-ns=";
            int at = err.IndexOf(key, StringComparison.Ordinal);
            if (at >= 0)
            {
                int end = at + key.Length;
                while (end < err.Length && char.IsAsciiDigit(err[end])) end++;
                long ns = long.Parse(err.AsSpan(at + key.Length, end - at - key.Length), System.Globalization.CultureInfo.InvariantCulture);
                restores.Add((ns - t0) / (double)Stopwatch.Frequency);
            }
            else Console.WriteLine($"  restore {i}: no first exit reported: {err.Trim()}");
        }
        File.Delete(file);

        string qfile = Path.Combine(work, $"q{i}.mig"), qserial = Path.Combine(work, $"q{i}.serial");
        var q = Hmp($"-accel tcg -nodefaults -display none -m 512 -bios {rom} -serial file:{qserial}");
        while (!File.Exists(qserial) || !File.ReadAllText(qserial).Contains('F')) Thread.Sleep(5);
        var sw = Stopwatch.StartNew();
        q.Command($"migrate \"exec:cat > {qfile}\"");
        qcps.Add(sw.Elapsed.TotalSeconds);
        q.Quit();
        // The same devices as the saved VM (QEMU refuses a stream with a section it has no device for).
        var qr = Hmp($"-accel tcg -nodefaults -display none -m 512 -bios {rom} -serial file:{qserial}.r -incoming \"exec:cat {qfile}\"");
        while (!qr.Command("info status").Contains("running", StringComparison.Ordinal)) Thread.Sleep(1);
        qrestores.Add(qr.Since.Elapsed.TotalSeconds);
        qr.Quit();
        File.Delete(qfile);
    }
    Console.WriteLine($"snapshot: 512 MiB guest, 100 MiB touched, software CPU (medians of {n})");
    Console.WriteLine($"  checkpoint: hyve {(Median(cps) - Median(ctlAlone)) * 1000:F0} ms (hyvectl wall {Median(cps) * 1000:F0} ms - its start-up {Median(ctlAlone) * 1000:F0} ms), "
        + $"qemu migrate-to-file {Median(qcps) * 1000:F0} ms; hyve/qemu = {(Median(cps) - Median(ctlAlone)) / Median(qcps):F2}; goal: hyve <= 500 ms");
    Console.WriteLine($"  file: {fileBytes >> 20} MiB long, {fileAllocated >> 20} MiB allocated (zero pages are holes)");
    if (restores.Count > 0)
        Console.WriteLine($"  restore to the first guest instruction: hyve {Median(restores) * 1000:F2} ms (min {restores.Min() * 1000:F2}), "
            + $"qemu -incoming to running {Median(qrestores) * 1000:F1} ms; hyve/qemu = {Median(restores) / Median(qrestores):F3}; goal: hyve <= 5 ms");
}

static long Allocated(string path)
{
    var psi = new ProcessStartInfo("stat", $"-c %b*%B {path}") { UseShellExecute = false, RedirectStandardOutput = true };
    using var p = Process.Start(psi)!;
    var parts = p.StandardOutput.ReadToEnd().Trim().Split('*');
    p.WaitForExit();
    return long.Parse(parts[0]) * long.Parse(parts[1]);
}

// QEMU with its human monitor on stdin/stdout: Command sends a line and returns what QEMU printed before the next prompt.
Monitor Hmp(string arguments)
{
    var psi = new ProcessStartInfo("qemu-system-x86_64", arguments + " -monitor stdio")
    { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
    var sw = Stopwatch.StartNew();
    var p = Process.Start(psi)!;
    _ = p.StandardError.ReadToEndAsync();
    var m = new Monitor(p, sw);
    m.ReadToPrompt();
    return m;
}

string Pm32Rom(Action<Assembler> code32)
{
    const uint code32Base = 0xffff1000;
    const int gdtOffset = 0xff00;
    var a32 = new Assembler(32);
    a32.mov(ax, 0x10);
    a32.mov(ds, ax);
    a32.mov(es, ax);
    a32.mov(ss, ax);
    a32.mov(esp, 0x7000);
    code32(a32);
    var ms = new MemoryStream();
    a32.Assemble(new StreamCodeWriter(ms), code32Base);
    string path = Rom(a =>
    {
        a.cli();
        a.db(0x66, 0x2e, 0x0f, 0x01, 0x16, gdtOffset & 0xff, gdtOffset >> 8); // o32 lgdt cs:[gdtOffset]
        a.mov(eax, cr0);
        a.or(eax, 1);
        a.mov(cr0, eax);
        a.db(0x66, 0xea); // jmp dword 0x08:code32Base
        a.dd(code32Base);
        a.dw(0x08);
    });
    var rom = File.ReadAllBytes(path);
    ms.ToArray().CopyTo(rom, (int)(code32Base - 0xffff0000));
    BitConverter.GetBytes((ushort)23).CopyTo(rom, gdtOffset);
    BitConverter.GetBytes(0xffff0000u + gdtOffset + 8).CopyTo(rom, gdtOffset + 2);
    BitConverter.GetBytes(0x00cf9b000000fffful).CopyTo(rom, gdtOffset + 16);
    BitConverter.GetBytes(0x00cf93000000fffful).CopyTo(rom, gdtOffset + 24);
    File.WriteAllBytes(path, rom);
    return path;
}

// Compiles bench/floor/kvm-floor.c with the system's C compiler; null when there is none.
string? BuildFloor()
{
    string exe = Path.Combine(work, "kvm-floor");
    try
    {
        using var cc = Process.Start(new ProcessStartInfo("cc", $"-O2 -o {exe} {Path.Combine(root, "bench", "floor", "kvm-floor.c")}") { UseShellExecute = false })!;
        cc.WaitForExit();
        return cc.ExitCode == 0 ? exe : null;
    }
    catch (System.ComponentModel.Win32Exception)
    {
        return null;
    }
}

string Rom(Action<Assembler> code)
{
    var a = new Assembler(16);
    code(a);
    var ms = new MemoryStream();
    a.Assemble(new StreamCodeWriter(ms), 0);
    var rom = new byte[64 * 1024];
    Array.Fill(rom, (byte)0xf4);
    ms.ToArray().CopyTo(rom, 0);
    rom[0xfff0] = 0xe9; rom[0xfff1] = 0x0d; rom[0xfff2] = 0x00; // reset vector: jmp near to offset 0
    string path = Path.Combine(work, $"rom{Guid.NewGuid():N}.bin");
    File.WriteAllBytes(path, rom);
    return path;
}

double Time(string program, string arguments, List<Cpu>? cpu = null)
{
    var before = Cpu.Children();
    var sw = Stopwatch.StartNew();
    Run(program, arguments);
    double wall = sw.Elapsed.TotalSeconds;
    var after = Cpu.Children();
    cpu?.Add(new Cpu(after.User - before.User, after.Sys - before.Sys));
    return wall;
}

void Run(string program, string arguments)
{
    var psi = new ProcessStartInfo(program, arguments) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
    using var p = Process.Start(psi)!;
    p.StandardOutput.ReadToEnd();
    p.StandardError.ReadToEnd();
    p.WaitForExit();
}

static Cpu MedianCpu(List<Cpu> xs)
{
    var s = xs.OrderBy(x => x.User + x.Sys).ToList();
    return s[s.Count / 2];
}

static double Median(List<double> xs)
{
    var s = xs.OrderBy(x => x).ToList();
    return s[s.Count / 2];
}

static void Report(string name, List<double> hyveTimes, List<double> qemuTimes, string goal)
{
    double h = Median(hyveTimes), q = Median(qemuTimes);
    Console.WriteLine($"{name}: hyve {h * 1000:F1} ms, qemu {q * 1000:F1} ms (medians of {hyveTimes.Count}), hyve/qemu = {h / q:F2}; {goal}");
}

static string FindRoot()
{
    var d = new DirectoryInfo(AppContext.BaseDirectory);
    while (d is not null && !File.Exists(Path.Combine(d.FullName, "Hyve.slnx"))) d = d.Parent;
    return d?.FullName ?? throw new InvalidOperationException("run from inside the repository");
}

/// <summary>CPU seconds in user and kernel mode.</summary>
readonly record struct Cpu(double User, double Sys)
{
    // struct rusage begins with ru_utime and ru_stime (struct timeval: seconds, microseconds), then 14 longs.
    [DllImport("libc", SetLastError = true)]
    private static extern unsafe int getrusage(int who, long* usage);

    /// <summary>CPU time of all waited-for children so far (RUSAGE_CHILDREN).</summary>
    public static unsafe Cpu Children()
    {
        long* u = stackalloc long[18];
        if (getrusage(-1, u) != 0) return default;
        return new Cpu(u[0] + u[1] / 1e6, u[2] + u[3] / 1e6);
    }
}

/// <summary>QEMU's human monitor over a pipe.</summary>
sealed class Monitor(Process p, Stopwatch since)
{
    /// <summary>Time since QEMU was started.</summary>
    public Stopwatch Since { get; } = since;

    /// <summary>Reads until the "(qemu) " prompt; returns what came before it.</summary>
    public string ReadToPrompt()
    {
        var sb = new System.Text.StringBuilder();
        var buf = new char[1];
        while (p.StandardOutput.Read(buf, 0, 1) == 1)
        {
            sb.Append(buf[0]);
            if (sb.Length >= 7 && sb.ToString(sb.Length - 7, 7) == "(qemu) ") return sb.ToString();
        }
        return sb.ToString();
    }

    /// <summary>Sends a command and waits for the next prompt.</summary>
    public string Command(string line)
    {
        p.StandardInput.WriteLine(line);
        p.StandardInput.Flush();
        return ReadToPrompt();
    }

    /// <summary>Quits QEMU.</summary>
    public void Quit()
    {
        p.StandardInput.WriteLine("quit");
        p.StandardInput.Flush();
        if (!p.WaitForExit(10_000)) p.Kill();
        p.Dispose();
    }
}
