// SPDX-License-Identifier: BSD-2-Clause
// Benchmarks hyve against QEMU in one invocation and prints ratios (figures for closing notes, never test
// assertions). Usage: dotnet run -c Release --project bench/HyveBench -- [exits|startup|footprint|all] [runs]
using System.Diagnostics;
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
    for (int i = 0; i < runs; i++)
    {
        h.Add(Time(hyve, $"-l bootrom,{rom} -l debug-exit,iobase=0xf4,iosize=4 bench{i}"));
        q.Add(Time("qemu-system-x86_64", $"-accel kvm -nodefaults -display none -m 256 -bios {rom} -device isa-debug-exit,iobase=0xf4,iosize=4"));
    }
    Report($"exit round trip ({reads} port reads)", h, q, "goal: hyve/qemu <= 0.90");
    Console.WriteLine($"  hyve {reads / Median(h) / 1000:F0}k exits/s, qemu {reads / Median(q) / 1000:F0}k exits/s");
}

// From exec to the guest's first port write: a ROM whose first instruction writes the debug-exit port, so
// the process's whole life bounds the figure from above.
void Startup()
{
    string rom = Rom(a => { a.@out(0xf4, al); a.hlt(); });
    var h = new List<double>();
    var q = new List<double>();
    for (int i = 0; i < Math.Max(runs, 10); i++)
    {
        h.Add(Time(hyve, $"-l bootrom,{rom} -l debug-exit,iobase=0xf4,iosize=4 start{i}"));
        q.Add(Time("qemu-system-x86_64", $"-accel kvm -nodefaults -display none -m 256 -bios {rom} -device isa-debug-exit,iobase=0xf4,iosize=4"));
    }
    Report("exec to first guest port write (whole process life, upper bound)", h, q, "goal: hyve <= 5 ms");
}

// Resident memory of a running hyve that is not guest memory (guest pages are shared memfd pages: RssShmem).
void Footprint()
{
    string rom = Rom(a => { var l = a.CreateLabel(); a.Label(ref l); a.jmp(l); });
    using var p = Process.Start(new ProcessStartInfo(hyve) { ArgumentList = { "-l", $"bootrom,{rom}", "footprint" }, UseShellExecute = false })!;
    Thread.Sleep(1500);
    var status = File.ReadAllLines($"/proc/{p.Id}/status");
    long Kb(string key) => long.Parse(status.First(l => l.StartsWith(key)).Split(':')[1].Trim().Split(' ')[0]);
    long anon = Kb("RssAnon:"), file = Kb("RssFile:"), shmem = Kb("RssShmem:");
    p.Kill();
    p.WaitForExit();
    Console.WriteLine($"footprint: RSS without guest pages {(anon + file) / 1024.0:F1} MiB (anon {anon} KiB, file {file} KiB; guest shmem {shmem} KiB); goal: <= 4 MiB");
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

double Time(string program, string arguments)
{
    var sw = Stopwatch.StartNew();
    Run(program, arguments);
    return sw.Elapsed.TotalSeconds;
}

void Run(string program, string arguments)
{
    var psi = new ProcessStartInfo(program, arguments) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
    using var p = Process.Start(psi)!;
    p.StandardOutput.ReadToEnd();
    p.StandardError.ReadToEnd();
    p.WaitForExit();
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
