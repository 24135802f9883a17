// SPDX-License-Identifier: BSD-2-Clause
using System.Text;
using Hyve.Boot;
using Hyve.Config;
using Hyve.Vmm;
using SharpFuzz;
using Options = Hyve.Config.Options;

namespace Hyve.Fuzz;

/// <summary>
/// Fuzz targets for the parsers that take outside input, driven by AFL++ through SharpFuzz (fuzz/run). Each target
/// takes one input and must end normally or with the one exception type that means "a host mistake, reported in one
/// line" (ConfigException, HostConfigException); anything else is a crash AFL records.
/// <c>Hyve.Fuzz TARGET</c> runs under afl-fuzz; <c>Hyve.Fuzz TARGET FILE...</c> replays inputs once (the regression test).
/// </summary>
public static class Program
{
    private static readonly Dictionary<string, Action<byte[]>> Targets = new()
    {
        // Command line: NUL-separated arguments.
        ["options"] = data => Options.Parse(Encoding.UTF8.GetString(data).Split('\0')),
        // A -k file.
        ["kfile"] = data =>
        {
            string f = TempFile(data);
            Options.Parse(["-k", f, "vm"]);
        },
        // Each kernel loader sees any bytes as a kernel image (bzImage, ELF/PVH, Multiboot 1/2 chosen by content).
        ["kernel"] = data =>
        {
            string f = TempFile(data);
            using var mem = new GuestMemory(64ul << 20);
            try { KernelLoader.Load(mem, f, null, "console=ttyS0"); }
            catch (HostConfigException) { }
            catch (Exception e) when (MoreTargets.IsHostError(e)) { }
        },
    };

    static Program()
    {
        foreach (var (name, body) in MoreTargets.All) Targets[name] = body;
        foreach (var (name, body) in ProtocolTargets.All) Targets[name] = body;
    }

    private static string? _temp;

    private static string TempFile(byte[] data)
    {
        _temp ??= Path.Combine(Path.GetTempPath(), $"hyve-fuzz-{Environment.ProcessId}");
        File.WriteAllBytes(_temp, data);
        return _temp;
    }

    /// <summary>Runs a target under AFL (one argument) or replays files (more arguments); 0 when every replay passes.</summary>
    public static int Main(string[] args)
    {
        if (args.Length == 0 || !Targets.TryGetValue(args[0], out var target))
        {
            Console.Error.WriteLine($"usage: Hyve.Fuzz {string.Join('|', Targets.Keys)} [INPUT...]");
            return 2;
        }
        void Guarded(byte[] data)
        {
            try { target(MoreTargets.Payload(data)); }
            catch (ConfigException) { }
            catch (HostConfigException) { }
            catch (Exception e) when (MoreTargets.IsHostError(e)) { }
        }
        if (args.Length > 1)
        {
            foreach (var f in args.Skip(1)) Guarded(File.ReadAllBytes(f));
            return 0;
        }
        Fuzzer.OutOfProcess.Run(stream =>
        {
            using var ms = new MemoryStream();
            stream.CopyTo(ms);
            Guarded(ms.ToArray());
        });
        return 0;
    }
}
