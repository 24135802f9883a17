// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Text;

namespace Hyve.Config;

/// <summary>What <see cref="Options.Parse"/> found: a config tree, or an error, or a request for help text.</summary>
public sealed class ParseResult
{
    internal ParseResult(ConfigTree config) => Config = config;

    /// <summary>The configuration the options wrote (also filled, partially, when <see cref="Error"/> is set).</summary>
    public ConfigTree Config { get; }

    /// <summary>A one-line reason when the command line is wrong; print it to stderr and exit with status 4.</summary>
    public string? Error { get; internal set; }

    /// <summary>True when the usage text should follow <see cref="Error"/> on stderr (unknown option, missing VM name).</summary>
    public bool ShowUsage { get; internal set; }

    /// <summary>Text to print to stdout before exiting with status 0 (<c>-h</c>, <c>-s help</c>, <c>-l help</c>); null otherwise.</summary>
    public string? HelpText { get; internal set; }

    /// <summary>True when <see cref="HelpText"/> is set: print it to stdout and exit with status 0.</summary>
    public bool ShowHelp => HelpText is not null;

    /// <summary>True when <c>config.dump</c> is set: print <see cref="ConfigTree.Dump"/> to stdout and exit without starting a VM
    /// (bhyve exits with status 1 here). Topology and memory size are not checked in that case, as in bhyve.</summary>
    public bool DumpConfig { get; internal set; }

    /// <summary>The checked CPU topology (valid when there is no error and no dump/help).</summary>
    public Topology Topology { get; internal set; }

    /// <summary>The checked guest memory size in bytes (valid when there is no error and no dump/help).</summary>
    public ulong MemorySize { get; internal set; }
}

/// <summary>
/// bhyve(8)'s command line. Every option only writes keys of the config tree, with bhyve_config(5) names:
/// <c>-c</c> cpus/sockets/cores/threads/maxcpus, <c>-m</c> memory.size, <c>-s</c> pci.B.S.F.*, <c>-l</c> lpc.*,
/// <c>-o k=v</c> any key, <c>-k file</c> k=v lines, <c>-p</c> vcpu.N.cpuset, <c>-G</c> gdb.port/gdb.address/gdb.wait,
/// <c>-r</c> restore_file, <c>-f</c> fwcfg.user.N.{name,string|file}, <c>-U</c> uuid, <c>-K</c> keyboard.layout, and the flags
/// <c>-A</c> acpi_tables=true, <c>-a</c> x86.x2apic=false, <c>-C</c> memory.guest_in_core=true, <c>-D</c> destroy_on_poweroff=true,
/// <c>-e</c> x86.strictio=true, <c>-H</c> x86.vmexit_on_hlt=true, <c>-P</c> x86.vmexit_on_pause=true, <c>-S</c> memory.wired=true,
/// <c>-u</c> rtc.use_localtime=false, <c>-W</c> virtio_msix=false, <c>-w</c> x86.strictmsr=false, <c>-x</c> x86.x2apic=true,
/// <c>-Y</c> x86.mptable=false, <c>-I</c> ignored (deprecated in bhyve). The VM name (last argument) goes to <c>name</c>.
/// Options are applied left to right, so a later <c>-o</c> or <c>-k</c> overrides an earlier one.
/// </summary>
public static class Options
{
    private const string Flags = "aACDehHIPSuWwxY";
    private const string WithArgument = "cfGkKlmoprsU";

    /// <summary>Linux's CPU_SETSIZE: host CPU numbers for <c>-p</c> run 0..1023.</summary>
    public const int HostCpuSetSize = 1024;

    /// <summary>bhyve's limit on an fw_cfg file name (QEMU_FWCFG_MAX_NAME, including the terminating NUL).</summary>
    public const int FwCfgMaxName = 56;

    /// <summary>The usage text (<c>-h</c> prints it to stdout; a usage error prints it to stderr).</summary>
    public static string Usage(string program = "hyve")
    {
        string pad = new(' ', program.Length);
        var sb = new StringBuilder();
        sb.Append("Usage: ").Append(program).Append(" [-aACDeHhPSuWwxY]\n");
        sb.Append("       ").Append(pad).Append(" [-c [[cpus=]numcpus][,sockets=n][,cores=n][,threads=n][,maxcpus=n]]\n");
        sb.Append("       ").Append(pad).Append(" [-f [name=]name,(string|file)=value] [-G [w][addr:]port] [-k config_file]\n");
        sb.Append("       ").Append(pad).Append(" [-K layout] [-l lpc] [-m mem] [-o var=value] [-p vcpu:hostcpu]\n");
        sb.Append("       ").Append(pad).Append(" [-r file] [-s pci] [-U uuid] vmname\n");
        sb.Append("       -A: create ACPI tables\n");
        sb.Append("       -a: local APIC is in xAPIC mode (default)\n");
        sb.Append("       -C: include guest memory in core file\n");
        sb.Append("       -c: number of CPUs and/or topology specification\n");
        sb.Append("       -D: destroy on power-off\n");
        sb.Append("       -e: exit on unhandled I/O access\n");
        sb.Append("       -f: add fw_cfg file\n");
        sb.Append("       -G: start a debug server ([w][addr:]port on 127.0.0.1 by default, or [w]unix:PATH)\n");
        sb.Append("       -H: vmexit from the guest on HLT\n");
        sb.Append("       -h: help\n");
        sb.Append("       -k: key=value flat config file\n");
        sb.Append("       -K: PS2 keyboard layout\n");
        sb.Append("       -l: LPC device configuration (com1..com4,stdio|path|socket; bootrom,rom[,vars]; fwcfg,qemu; debug-exit)\n");
        sb.Append("       -m: memory size (plain number: MiB; or with K/M/G/T suffix)\n");
        sb.Append("       -o: set config 'var' to 'value'\n");
        sb.Append("       -P: vmexit from the guest on pause\n");
        sb.Append("       -p: pin 'vcpu' to 'hostcpu'\n");
        sb.Append("       -r: path to checkpoint file\n");
        sb.Append("       -S: guest memory cannot be swapped\n");
        sb.Append("       -s: <slot,driver,configinfo> PCI slot config\n");
        sb.Append("       -U: UUID\n");
        sb.Append("       -u: RTC keeps UTC time\n");
        sb.Append("       -W: force virtio to use single-vector MSI\n");
        sb.Append("       -w: ignore unimplemented MSRs\n");
        sb.Append("       -x: local APIC is in x2APIC mode\n");
        sb.Append("       -Y: disable MPtable generation\n");
        return sb.ToString();
    }

    /// <summary>
    /// Parses bhyve(8)'s command line (POSIX getopt rules: grouped flags, attached or separate arguments, <c>--</c>,
    /// options end at the first operand). Never throws for a user mistake: the result carries the error.
    /// Usage: <c>var r = Options.Parse(args); if (r.Error != null) { ...exit 4 } else if (r.HelpText != null) ...</c>.
    /// </summary>
    public static ParseResult Parse(string[] args)
    {
        var config = new ConfigTree();
        // bhyve_init_config's defaults, set before the options so that the options override them.
        config.Set("memory.size", "256M");
        config.SetBool("x86.strictmsr", true);
        config.Set("lpc.fwcfg", "bhyve");
        config.TrackWrites();
        var result = new ParseResult(config);
        int fwcfgItems = 0;
        try
        {
            int i = 0;
            for (; i < args.Length; i++)
            {
                string a = args[i];
                if (a == "--") { i++; break; }
                if (a.Length < 2 || a[0] != '-') break;
                for (int j = 1; j < a.Length; j++)
                {
                    char c = a[j];
                    if (WithArgument.Contains(c))
                    {
                        string arg;
                        if (j + 1 < a.Length) arg = a[(j + 1)..];
                        else if (i + 1 < args.Length) arg = args[++i];
                        else return UsageError(result, $"option requires an argument -- '{c}'");
                        string? help = ApplyWithArgument(config, c, arg, ref fwcfgItems);
                        if (help is not null) { result.HelpText = help; return result; }
                        break;
                    }
                    if (!Flags.Contains(c)) return UsageError(result, $"illegal option -- '{c}'");
                    if (c == 'h') { result.HelpText = Usage(); return result; }
                    ApplyFlag(config, c);
                }
            }

            int operands = args.Length - i;
            if (operands > 1) return UsageError(result, $"too many arguments: '{args[i + 1]}' after the VM name '{args[i]}'");
            if (operands == 1)
            {
                if (args[i].Length == 0) return UsageError(result, "empty VM name");
                config.Set("name", args[i]);
            }
            // With -r the name may come from the snapshot (as in bhyve); the caller fills it in before use.
            if (config.Get("name") is null && config.Get("restore_file") is null)
                return UsageError(result, "missing VM name");

            RefuseUnimplemented(config);
            HostSandbox.Wanted(config); // sandbox=on|off, checked before anything starts

            if (config.GetBool("config.dump", false))
            {
                result.DumpConfig = true;
                return result;
            }

            result.Topology = Topology.FromConfig(config);
            result.MemorySize = config.GetMemorySize();
            if (result.MemorySize > Hyve.Vmm.GuestMemory.MaxSize)
                throw new ConfigException($"memory size '{config.Get("memory.size")}' is more than the supported maximum of 1T");
            if (result.MemorySize < Hyve.Vmm.GuestMemory.MinSize)
                throw new ConfigException($"memory size '{config.Get("memory.size")}' is less than the minimum of 1M (the real-mode address space a guest starts in)");
            // soft.jit (default true) and soft.jit_cache (code cache bytes per vCPU, default 64M): checked here so that a
            // bad value ends hyve at start-up rather than being ignored.
            config.GetBool("soft.jit", true);
            ulong jitCache = config.GetSize("soft.jit_cache", 64ul << 20);
            if (jitCache < (1ul << 20) || jitCache > (4ul << 30))
                throw new ConfigException($"soft.jit_cache '{config.Get("soft.jit_cache")}' is outside 1M..4G");
            // cpu.vendor, cpu.model, cpu.features (issue 17 item 2): an unknown name or an unimplemented feature ends hyve here.
            Machine.CpuModelOption(config);
            foreach (var vcpu in config.ChildNames("vcpu"))
            {
                var set = config.Get($"vcpu.{vcpu}.cpuset");
                if (set is not null) ParseCpuSet(set, vcpu);
            }
        }
        catch (ConfigException e)
        {
            result.Error = e.Message;
        }
        return result;
    }

    // Keys that bhyve's options write and nothing in hyve reads: refused, so no option is accepted and ignored
    // (issue 17 item 7). Remove a line when the code that honours the key lands.
    private static void RefuseUnimplemented(ConfigTree config)
    {
        // -x starts every local APIC in x2APIC mode, so the model must report x2APIC (the machine adds it).
        if (config.GetBool("x86.x2apic", false)
            && (config.Get("cpu.features") ?? "").Split(',', StringSplitOptions.TrimEntries).Contains("-x2apic"))
            throw new ConfigException("-x (x86.x2apic) starts the local APIC in x2APIC mode, but cpu.features removes x2apic");
        if (config.GetBool("x86.vmexit_on_pause", false))
            throw new ConfigException("-P (x86.vmexit_on_pause) is not implemented");
        if (config.GetBool("memory.wired", false))
            throw new ConfigException("-S (memory.wired) is not implemented: guest memory can be swapped");
        if (config.Get("lpc.pc-testdev") is not null)
            throw new ConfigException("-l pc-testdev is not implemented");
        if (config.Get("tpm.type") is not null)
            throw new ConfigException("-l tpm is not implemented");
    }

    /// <summary>
    /// Parses a host CPU list as bhyve's parse_cpuset does (<c>vcpu.N.cpuset</c>: "0,2,4-7"), returning the sorted CPU numbers.
    /// Throws <see cref="ConfigException"/> naming vCPU <paramref name="vcpu"/> when malformed or out of range.
    /// </summary>
    public static int[] ParseCpuSet(string list, string vcpu = "?")
    {
        var set = new SortedSet<int>();
        foreach (var item in list.Split(','))
        {
            int dash = item.IndexOf('-');
            string lo = dash < 0 ? item : item[..dash];
            string? hi = dash < 0 ? null : item[(dash + 1)..];
            int a = HostCpu(lo, list, vcpu);
            int b = hi is null ? a : HostCpu(hi, list, vcpu);
            if (a > b) throw new ConfigException($"Invalid hostcpu range {a}-{b}");
            for (int c = a; c <= b; c++) set.Add(c);
        }
        return [.. set];
    }

    private static int HostCpu(string text, string list, string vcpu)
    {
        if (!ConfigTree.TryParseInteger(text, out long n) || text.StartsWith('-') || text.StartsWith('+'))
            throw new ConfigException($"invalid cpuset for vcpu {vcpu}: '{list}'");
        if (n < 0 || n >= HostCpuSetSize)
            throw new ConfigException($"hostcpu '{text}' outside valid range from 0 to {HostCpuSetSize - 1}");
        return (int)n;
    }

    private static ParseResult UsageError(ParseResult result, string message)
    {
        result.Error = message;
        result.ShowUsage = true;
        return result;
    }

    private static void ApplyFlag(ConfigTree config, char c)
    {
        switch (c)
        {
            case 'a': config.SetBool("x86.x2apic", false); break;
            case 'A': config.SetBool("acpi_tables", true); break;
            case 'C': config.SetBool("memory.guest_in_core", true); break;
            case 'D': config.SetBool("destroy_on_poweroff", true); break;
            case 'e': config.SetBool("x86.strictio", true); break;
            case 'H': config.SetBool("x86.vmexit_on_hlt", true); break;
            case 'I': break; // bhyve: the IOAPIC is always present; -I is accepted and ignored.
            case 'P': config.SetBool("x86.vmexit_on_pause", true); break;
            case 'S': config.SetBool("memory.wired", true); break;
            case 'u': config.SetBool("rtc.use_localtime", false); break;
            case 'W': config.SetBool("virtio_msix", false); break;
            case 'w': config.SetBool("x86.strictmsr", false); break;
            case 'x': config.SetBool("x86.x2apic", true); break;
            case 'Y': config.SetBool("x86.mptable", false); break;
        }
    }

    // Returns help text to print instead of running (for "-s help" and "-l help"), else null.
    private static string? ApplyWithArgument(ConfigTree config, char c, string arg, ref int fwcfgItems)
    {
        switch (c)
        {
            case 'c': ParseTopology(config, arg); break;
            case 'f': ParseFwCfg(config, arg, fwcfgItems++); break;
            case 'G': ParseGdb(config, arg); break;
            case 'k': ParseConfigFile(config, arg); break;
            case 'K': config.Set("keyboard.layout", arg); break;
            case 'l':
                if (arg == "help") return string.Join('\n', LpcOption.KnownDevices) + "\n";
                LpcOption.Parse(config, arg);
                break;
            case 'm': config.Set("memory.size", arg); break;
            case 'o':
                if (!ParseConfigOption(config, arg)) throw new ConfigException($"invalid configuration option '{arg}'");
                break;
            case 'p': ParsePin(config, arg); break;
            case 'r': config.Set("restore_file", arg); break;
            case 's':
                if (arg == "help") return string.Join('\n', PciSlotOption.KnownDevices) + "\n";
                PciSlotOption.Parse(config, arg);
                break;
            case 'U': config.Set("uuid", arg); break;
        }
        return null;
    }

    // bhyve's topology_parse: "n", "cpus=n", "sockets=n", "cores=n", "threads=n" (and hyve's "maxcpus=n") in any order;
    // an empty argument means one CPU. Values are checked later by Topology.FromConfig, as bhyve's calc_topology does.
    private static void ParseTopology(ConfigTree config, string opt)
    {
        if (opt.Length == 0)
        {
            config.Set("sockets", "1");
            config.Set("cores", "1");
            config.Set("threads", "1");
            config.Set("cpus", "1");
            return;
        }
        foreach (var part in opt.Split(','))
        {
            int eq = part.IndexOf('=');
            if (eq < 0) { config.Set("cpus", part); continue; }
            string key = part[..eq];
            if (key is not ("cpus" or "sockets" or "cores" or "threads" or "maxcpus"))
                throw new ConfigException($"invalid cpu topology '{opt}'");
            config.Set(key, part[(eq + 1)..]);
        }
    }

    // bhyve_parse_config_option: "path=value" with a non-empty path and value.
    private static bool ParseConfigOption(ConfigTree config, string option)
    {
        int eq = option.IndexOf('=');
        if (eq <= 0 || eq == option.Length - 1) return false;
        config.Set(option[..eq], option[(eq + 1)..]);
        return true;
    }

    // bhyve_parse_simple_config_file: one key=value a line; '#' lines and blank lines are skipped. hyve also trims
    // surrounding whitespace and a trailing CR, so files edited on other systems read the same.
    private static void ParseConfigFile(ConfigTree config, string path)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            throw new ConfigException($"Failed to open configuration file {path}: {Reason(e)}");
        }
        for (int n = 0; n < lines.Length; n++)
        {
            string line = lines[n].Trim();
            if (line.Length == 0 || line[0] == '#') continue;
            int eq = line.IndexOf('=');
            if (eq > 0)
            {
                string key = line[..eq].TrimEnd();
                string value = line[(eq + 1)..].TrimStart();
                if (key.Length > 0 && value.Length > 0)
                {
                    try
                    {
                        config.Set(key, value);
                        continue;
                    }
                    catch (ConfigException e)
                    {
                        throw new ConfigException($"{path} line {n + 1}: {e.Message}");
                    }
                }
            }
            throw new ConfigException($"{path} line {n + 1}: not key=value: '{Brief(line)}'");
        }
    }

    // A bad line is quoted briefly (it may be a whole binary file read by mistake), control characters shown as '?'.
    private static string Brief(string line)
    {
        var sb = new StringBuilder();
        foreach (char ch in line.Length > 40 ? line[..40] : line) sb.Append(char.IsControl(ch) ? '?' : ch);
        if (line.Length > 40) sb.Append("...");
        return sb.ToString();
    }

    private static string Reason(Exception e) => e switch
    {
        FileNotFoundException or DirectoryNotFoundException => "No such file or directory",
        UnauthorizedAccessException => "Permission denied",
        _ => e.Message,
    };

    // bhyve_pincpu_parse: "vcpu:hostcpu" appends hostcpu to vcpu.N.cpuset.
    private static void ParsePin(ConfigTree config, string opt)
    {
        int colon = opt.IndexOf(':');
        if (colon <= 0 || !ConfigTree.TryParseInteger(opt[..colon], out long vcpu) || !ConfigTree.TryParseInteger(opt[(colon + 1)..], out long pcpu))
            throw new ConfigException($"invalid vcpu pinning configuration '{opt}'");
        if (vcpu < 0 || vcpu >= Topology.MaxVcpus)
            throw new ConfigException($"invalid vcpu '{vcpu}' in pinning configuration '{opt}'");
        if (pcpu < 0 || pcpu >= HostCpuSetSize)
            throw new ConfigException($"hostcpu '{pcpu}' outside valid range from 0 to {HostCpuSetSize - 1}");
        string key = $"vcpu.{vcpu}.cpuset";
        string? old = config.GetRaw(key);
        config.Set(key, old is null ? pcpu.ToString(CultureInfo.InvariantCulture) : $"{old},{pcpu}");
    }

    // bhyve_parse_gdb_options: "[w][addr:]port"; the address is everything before the last colon. hyve also takes
    // "[w]unix:PATH" (gdb.path): a mode-0600 UNIX socket, for shared hosts where a TCP port is reachable by anyone.
    private static void ParseGdb(ConfigTree config, string opt)
    {
        string s = opt;
        if (s.StartsWith('w'))
        {
            config.SetBool("gdb.wait", true);
            s = s[1..];
        }
        if (s.StartsWith("unix:", StringComparison.Ordinal))
        {
            if (s.Length == 5) throw new ConfigException($"missing socket path in -G {opt}");
            config.Set("gdb.path", s[5..]);
            return;
        }
        int colon = s.LastIndexOf(':');
        string port = colon < 0 ? s : s[(colon + 1)..];
        if (!ConfigTree.TryParseInteger(port, out long p) || p < 0 || p > 65535)
            throw new ConfigException($"invalid debug server port '{port}' in -G {opt}");
        if (colon >= 0)
        {
            string address = s[..colon];
            if (address.StartsWith('[') && address.EndsWith(']')) address = address[1..^1];
            if (address.Length == 0) throw new ConfigException($"invalid debug server address in -G {opt}");
            config.Set("gdb.address", address);
        }
        config.Set("gdb.port", port);
    }

    // qemu_fwcfg_parse_cmdline_arg: "[name=]NAME,string=VALUE" or "[name=]NAME,file=PATH". bhyve keeps these in a
    // list, not the config tree; hyve stores item N (in command-line order) as fwcfg.user.N.name plus
    // fwcfg.user.N.string or fwcfg.user.N.file, so -k files and config.dump see them too.
    private static void ParseFwCfg(ConfigTree config, string opt, int index)
    {
        string s = opt.StartsWith("name=", StringComparison.Ordinal) ? opt[5..] : opt;
        int comma = s.IndexOf(',');
        if (comma <= 0) throw new ConfigException($"invalid fwcfg item '{opt}' (want [name=]NAME,(string|file)=VALUE)");
        string name = s[..comma];
        if (name.Length >= FwCfgMaxName) throw new ConfigException($"fw_cfg name too long: \"{opt}\"");
        string value = s[(comma + 1)..];
        string node = $"fwcfg.user.{index}";
        if (value.StartsWith("string=", StringComparison.Ordinal))
        {
            config.Set(node + ".name", name);
            config.Set(node + ".string", value[7..]);
        }
        else if (value.StartsWith("file=", StringComparison.Ordinal) && value.Length > 5)
        {
            string path = value[5..];
            if (!File.Exists(path)) throw new ConfigException($"fwcfg item '{name}': cannot open file {path}: No such file or directory");
            config.Set(node + ".name", name);
            config.Set(node + ".file", path);
        }
        else
        {
            throw new ConfigException($"invalid fwcfg item '{opt}' (want [name=]NAME,(string|file)=VALUE)");
        }
    }
}
