// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Text;
using Hyve.Vmm.Control;
using Hyve.X86;

namespace Hyve.Ctl;

/// <summary>
/// hyvectl: bhyvectl(8)'s options and output formats over the control socket. One table row per thing
/// hyvectl can read or write; parsing, --get-all, usage and execution order all come from the tables,
/// where bhyvectl spells each out in its own if-chain.
/// </summary>
public static class CtlMain
{
    private const string Prog = "hyvectl";

    /// <summary>A general register: name as in --get-NAME, and whether bhyvectl offers --set-NAME.</summary>
    private sealed record RegisterRow(string Name, Reg Reg, bool Settable);

    /// <summary>A segment or table register's hidden part, as in --get-desc-NAME / --set-desc-NAME.</summary>
    private sealed record DescRow(string Name, Reg Reg, bool IsTable);

    // In bhyvectl's --get-all order (get_all_registers).
    private static readonly RegisterRow[] Registers =
    [
        new("efer", Reg.Efer, true), new("cr0", Reg.Cr0, true), new("cr2", Reg.Cr2, true),
        new("cr3", Reg.Cr3, true), new("cr4", Reg.Cr4, true),
        new("dr0", Reg.Dr0, true), new("dr1", Reg.Dr1, true), new("dr2", Reg.Dr2, true),
        new("dr3", Reg.Dr3, true), new("dr6", Reg.Dr6, true), new("dr7", Reg.Dr7, true),
        new("rsp", Reg.Rsp, true), new("rip", Reg.Rip, true), new("rax", Reg.Rax, true),
        new("rbx", Reg.Rbx, false), new("rcx", Reg.Rcx, false), new("rdx", Reg.Rdx, false),
        new("rsi", Reg.Rsi, false), new("rdi", Reg.Rdi, false), new("rbp", Reg.Rbp, false),
        new("r8", Reg.R8, false), new("r9", Reg.R9, false), new("r10", Reg.R10, false), new("r11", Reg.R11, false),
        new("r12", Reg.R12, false), new("r13", Reg.R13, false), new("r14", Reg.R14, false), new("r15", Reg.R15, false),
        new("rflags", Reg.Rflags, true),
    ];

    // In bhyvectl's --get-all order (get_all_segments).
    private static readonly DescRow[] Descriptors =
    [
        new("ds", Reg.Ds, false), new("es", Reg.Es, false), new("fs", Reg.Fs, false), new("gs", Reg.Gs, false),
        new("ss", Reg.Ss, false), new("cs", Reg.Cs, false), new("tr", Reg.Tr, false), new("ldtr", Reg.Ldtr, false),
        new("gdtr", Reg.Gdtr, true), new("idtr", Reg.Idtr, true),
    ];

    // Segment selectors, in bhyvectl's --get-all order; all have --set-NAME.
    private static readonly RegisterRow[] Selectors =
    [
        new("cs", Reg.Cs, true), new("ds", Reg.Ds, true), new("es", Reg.Es, true), new("fs", Reg.Fs, true),
        new("gs", Reg.Gs, true), new("ss", Reg.Ss, true), new("tr", Reg.Tr, true), new("ldtr", Reg.Ldtr, true),
    ];

    /// <summary>One readable item: printed when its --get- option or --get-all is given, in table order.
    /// <paramref name="Set"/>, when present, runs first whether or not the item is printed: bhyvectl writes the
    /// RTC NVRAM and time just before reading them back, in the middle of its reads.</summary>
    private sealed record Query(string Option, Action<Session> Print, Action<Session>? Set = null);

    private static readonly Query[] Queries = BuildQueries();

    /// <summary>A command-line option: its name and what it does to the parsed request.</summary>
    private sealed record Opt(string Name, bool HasArg, string ArgName, Action<Request, string> Apply);

    private static readonly Opt[] Options = BuildOptions();

    private sealed class Request
    {
        public string? Vm;
        public int Cpu;
        public bool GetAll;
        public readonly HashSet<string> Gets = new(StringComparer.Ordinal);
        public readonly Dictionary<Reg, ulong> RegisterSets = new();
        public readonly Dictionary<Reg, ulong> SelectorSets = new();
        public readonly HashSet<Reg> DescSets = new();
        public ulong DescBase;
        public uint DescLimit, DescAccess;
        public bool ForceReset, ForcePoweroff;
        public bool InjectNmi;
        // bhyvectl's assert_lapic_lvt: -1 (its default, also accepted as a value) means no assertion.
        public int AssertLapicLvt = -1;
        public long? RtcTime;
        public byte? RtcNvramValue;
        public int RtcNvramOffset;
        public string? Checkpoint, Suspend, DumpGuestMemory, DescribeSnapshot;
    }

    private sealed class Session(ControlClient vm, Request req, TextWriter o)
    {
        public readonly ControlClient Vm = vm;
        public readonly Request Req = req;
        public readonly int Cpu = req.Cpu;
        public readonly TextWriter Out = o;

        public void Line(string s)
        {
            Out.Write(s);
            Out.Write('\n');
        }
    }

    private sealed class UsageException(string message) : Exception(message);

    /// <summary>Runs hyvectl with the given arguments; returns the exit status (0 ok, 1 error or usage).</summary>
    /// <param name="args">bhyvectl-style arguments.</param>
    /// <param name="stdout">Where results go.</param>
    /// <param name="stderr">Where usage and error messages go.</param>
    /// <param name="runDirectory">The control socket directory; default <see cref="ControlPaths.RunDirectory"/>.</param>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, string? runDirectory = null)
    {
        Request req;
        try
        {
            if (!TryParse(args, out req))
            {
                stdout.Write(UsageText());
                return 0;
            }
            if (req.DescribeSnapshot is not null && req.Vm is null)
                return DescribeSnapshot(req.DescribeSnapshot, stdout, stderr);
            if (req.Vm is null)
                throw new UsageException("--vm is required");
        }
        catch (UsageException e)
        {
            stderr.Write($"{Prog}: {e.Message}\n");
            stderr.Write(UsageText());
            return 1;
        }

        ControlClient client;
        try
        {
            client = ControlClient.Connect(req.Vm, runDirectory);
        }
        catch (VmNotRunningException)
        {
            // bhyvectl prints this on stdout when vm_open fails.
            stdout.Write($"VM:{req.Vm} is not created.\n");
            return 1;
        }
        catch (IOException e)
        {
            stderr.Write($"{Prog}: {e.Message}\n");
            return 1;
        }

        using (client)
        {
            try
            {
                Execute(req, new Session(client, req, stdout));
                return 0;
            }
            catch (ControlErrorException e)
            {
                // bhyvectl stops at the first failure and prints errno; the message says which.
                stderr.Write($"{Prog}: {e.Message}\n");
                stdout.Write($"errno = {e.Errno}\n");
                return 1;
            }
            catch (Exception e) when (e is IOException or ControlProtocolException)
            {
                stderr.Write($"{Prog}: {e.Message}\n");
                return 1;
            }
        }
    }

    /// <summary>Writes first, then NMI and LVT assertion, then reads, then suspends: bhyvectl's order, so
    /// --set-rip=X --get-rip shows X. With --cpu=-1, --assert-lapic-lvt reaches every vCPU, as bhyve's
    /// vm_lapic_local_irq does; every other per-vCPU operation refuses vCPU -1.</summary>
    private static void Execute(Request req, Session s)
    {
        foreach (RegisterRow r in Registers)
            if (req.RegisterSets.TryGetValue(r.Reg, out ulong v))
                s.Vm.SetRegister(s.Cpu, r.Reg, v);
        foreach (DescRow d in Descriptors)
            if (req.DescSets.Contains(d.Reg))
                s.Vm.SetDescriptor(s.Cpu, d.Reg,
                    new SegmentDescriptor(req.DescBase, req.DescLimit, d.IsTable ? 0 : req.DescAccess));
        foreach (RegisterRow r in Selectors)
            if (req.SelectorSets.TryGetValue(r.Reg, out ulong v))
                s.Vm.SetRegister(s.Cpu, r.Reg, v);
        if (req.InjectNmi)
            s.Vm.InjectNmi(s.Cpu);
        if (req.AssertLapicLvt != -1)
            s.Vm.AssertLapicLvt(s.Cpu, req.AssertLapicLvt);

        foreach (Query q in Queries)
        {
            q.Set?.Invoke(s);
            if (req.GetAll || req.Gets.Contains(q.Option))
                q.Print(s);
        }

        // Paths are the VM's host's: make them absolute here, where the user's working directory is known.
        if (req.DumpGuestMemory is string dump)
            s.Vm.DumpGuestMemory(Path.GetFullPath(dump));
        if (req.Checkpoint is string cp)
            s.Vm.Checkpoint(Path.GetFullPath(cp), thenExit: false);
        if (req.Suspend is string sp)
            s.Vm.Checkpoint(Path.GetFullPath(sp), thenExit: true);
        if (req.DescribeSnapshot is string ds)
            DescribeSnapshot(ds, s.Out, Console.Error);

        if (req.ForceReset)
            s.Vm.Suspend(SuspendHow.Reset);
        if (req.ForcePoweroff)
            s.Vm.Suspend(SuspendHow.PowerOff);
    }

    private static Query[] BuildQueries()
    {
        var q = new List<Query>
        {
            new("get-memseg", PrintMemSegs),
            new("get-memmap", PrintMemMap),
        };
        foreach (RegisterRow r in Registers)
        {
            // bhyvectl's columns: "rflags[0]" is long enough to need only one tab.
            string tabs = r.Name == "rflags" ? "\t" : "\t\t";
            q.Add(new("get-" + r.Name, s => s.Line($"{r.Name}[{s.Cpu}]{tabs}0x{Hex(s.Vm.GetRegister(s.Cpu, r.Reg), 16)}")));
        }
        foreach (DescRow d in Descriptors)
        {
            q.Add(new("get-desc-" + d.Name, s =>
            {
                SegmentDescriptor x = s.Vm.GetDescriptor(s.Cpu, d.Reg);
                s.Line(d.IsTable
                    ? $"{d.Name}[{s.Cpu}]\t\t0x{Hex(x.Base, 16)}/0x{Hex(x.Limit, 8)}"
                    : $"{d.Name} desc[{s.Cpu}]\t0x{Hex(x.Base, 16)}/0x{Hex(x.Limit, 8)}/0x{Hex(x.Access, 8)}");
            }));
        }
        foreach (RegisterRow r in Selectors)
            q.Add(new("get-" + r.Name, s => s.Line($"{r.Name}[{s.Cpu}]\t\t0x{Hex(s.Vm.GetRegister(s.Cpu, r.Reg), 4)}")));
        q.Add(new("get-rtc-nvram", PrintRtcNvram, s =>
        {
            if (s.Req.RtcNvramValue is byte v)
                s.Vm.SetRtcNvram(s.Req.RtcNvramOffset, v);
        }));
        q.Add(new("get-rtc-time", s => s.Line(RtcTimeLine(s.Vm.GetRtcTime())), s =>
        {
            if (s.Req.RtcTime is long t)
                s.Vm.SetRtcTime(t);
        }));
        q.Add(new("get-intinfo", s =>
        {
            // bhyvectl's labels: info1 (the event being delivered at the last exit) is "pending",
            // info2 (the event queued for the next entry) is "current".
            (ulong info1, ulong info2) = s.Vm.GetIntinfo(s.Cpu);
            s.Line(IntinfoLine("pending", info1));
            s.Line(IntinfoLine("current", info2));
        }));
        q.Add(new("get-stats", s =>
        {
            // bhyvectl --get-stats: one counter a line, name then value.
            foreach (var kv in s.Vm.GetStats()) s.Line($"{kv.Key,-50}\t{kv.Value}");
        }));
        q.Add(new("get-active-cpus", s => s.Line(CpuSet("active cpus", s.Vm.ActiveCpus()))));
        q.Add(new("get-suspended-cpus", s => s.Line(CpuSet("suspended cpus", s.Vm.SuspendedCpus()))));
        q.Add(new("get-cpu-topology", s =>
        {
            CpuTopology t = s.Vm.Topology;
            s.Line($"cpu_topology:\tsockets={t.Sockets}, cores={t.Cores}, threads={t.Threads}, maxcpus={t.MaxCpus}");
        }));
        return q.ToArray();
    }

    private static Opt[] BuildOptions()
    {
        var o = new List<Opt>
        {
            new("vm", true, "<vmname>", (r, v) => r.Vm = v.Length > 0 ? v : throw new UsageException("--vm needs a name")),
            new("cpu", true, "<vcpu_number>", (r, v) => r.Cpu = ParseCpu(v)),
            new("get-all", false, "", (r, _) => r.GetAll = true),
            new("desc-base", true, "<BASE>", (r, v) => r.DescBase = ParseValue("desc-base", v)),
            new("desc-limit", true, "<LIMIT>", (r, v) => r.DescLimit = ParseU32("desc-limit", v)),
            new("desc-access", true, "<ACCESS>", (r, v) => r.DescAccess = ParseU32("desc-access", v)),
        };
        foreach (Query q in Queries)
            o.Add(new(q.Option, false, "", (r, _) => r.Gets.Add(q.Option)));
        foreach (RegisterRow reg in Registers)
            if (reg.Settable)
                o.Add(new("set-" + reg.Name, true, "<" + reg.Name.ToUpperInvariant() + ">",
                    (r, v) => r.RegisterSets[reg.Reg] = ParseValue("set-" + reg.Name, v)));
        foreach (RegisterRow reg in Selectors)
            o.Add(new("set-" + reg.Name, true, "<" + reg.Name.ToUpperInvariant() + ">",
                (r, v) => r.SelectorSets[reg.Reg] = ParseValue("set-" + reg.Name, v)));
        foreach (DescRow d in Descriptors)
            o.Add(new("set-desc-" + d.Name, false, "", (r, _) => r.DescSets.Add(d.Reg)));
        o.Add(new("assert-lapic-lvt", true, "<pin>", (r, v) => r.AssertLapicLvt = ParseInt("assert-lapic-lvt", v)));
        o.Add(new("inject-nmi", false, "", (r, _) => r.InjectNmi = true));
        o.Add(new("force-reset", false, "", (r, _) => r.ForceReset = true));
        o.Add(new("force-poweroff", false, "", (r, _) => r.ForcePoweroff = true));
        o.Add(new("checkpoint", true, "<filename>", (r, v) => r.Checkpoint = NonEmpty("checkpoint", v)));
        o.Add(new("suspend", true, "<filename>", (r, v) => r.Suspend = NonEmpty("suspend", v)));
        o.Add(new("dump-guest-memory", true, "<filename>", (r, v) => r.DumpGuestMemory = NonEmpty("dump-guest-memory", v)));
        o.Add(new("describe-snapshot", true, "<filename>", (r, v) => r.DescribeSnapshot = NonEmpty("describe-snapshot", v)));
        // strtoul then C conversions, as bhyvectl: time_t, uint8_t (the value is cut to its low byte), int.
        o.Add(new("set-rtc-time", true, "<secs>", (r, v) => r.RtcTime = (long)ParseValue("set-rtc-time", v)));
        o.Add(new("set-rtc-nvram", true, "<val>", (r, v) => r.RtcNvramValue = (byte)ParseValue("set-rtc-nvram", v)));
        o.Add(new("rtc-nvram-offset", true, "<offset>", (r, v) => r.RtcNvramOffset = (int)ParseValue("rtc-nvram-offset", v)));
        return o.ToArray();
    }

    /// <summary>The usage text, one option a line as bhyvectl prints it.</summary>
    internal static string UsageText()
    {
        var sb = new StringBuilder();
        sb.Append("Usage: ").Append(Prog).Append(" --vm=<vmname>\n");
        foreach (Opt o in Options)
        {
            if (o.Name == "vm")
                continue;
            sb.Append("       [--").Append(o.Name);
            if (o.HasArg)
                sb.Append('=').Append(o.ArgName);
            sb.Append("]\n");
        }
        sb.Append("       [-h | --help]\n");
        return sb.ToString();
    }

    /// <summary>Parses getopt_long-style: --name, --name=value, --name value, unambiguous prefixes.
    /// Returns false when help was asked for.</summary>
    private static bool TryParse(string[] args, out Request req)
    {
        req = new Request();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            if (a == "-h" || a == "--help")
                return false;
            if (a == "--")
            {
                if (i + 1 < args.Length)
                    throw new UsageException($"unexpected argument '{args[i + 1]}'");
                break;
            }
            if (!a.StartsWith("--", StringComparison.Ordinal))
                throw new UsageException(a.StartsWith('-') ? $"unrecognized option '{a}'" : $"unexpected argument '{a}'");

            string name = a[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0)
            {
                value = name[(eq + 1)..];
                name = name[..eq];
            }
            Opt opt = Lookup(name, a);
            if (opt.HasArg && value is null)
            {
                if (i + 1 >= args.Length)
                    throw new UsageException($"option '--{opt.Name}' requires an argument");
                value = args[++i];
            }
            else if (!opt.HasArg && value is not null)
            {
                throw new UsageException($"option '--{opt.Name}' doesn't allow an argument");
            }
            opt.Apply(req, value ?? "");
        }
        return true;
    }

    /// <summary>Exact name, else a unique prefix, as getopt_long accepts.</summary>
    private static Opt Lookup(string name, string arg)
    {
        Opt? match = null;
        bool ambiguous = false;
        foreach (Opt o in Options)
        {
            if (o.Name == name)
                return o;
            if (name.Length > 0 && o.Name.StartsWith(name, StringComparison.Ordinal))
            {
                ambiguous = match is not null;
                match ??= o;
            }
        }
        if (match is null)
            throw new UsageException($"unrecognized option '{arg}'");
        if (ambiguous)
            throw new UsageException($"option '{arg}' is ambiguous");
        return match;
    }

    private static ulong ParseValue(string option, string v) =>
        Humanize.TryParseUlong(v, out ulong x) ? x : throw new UsageException($"invalid value '{v}' for --{option}");

    private static uint ParseU32(string option, string v)
    {
        ulong x = ParseValue(option, v);
        return x <= uint.MaxValue ? (uint)x : throw new UsageException($"value '{v}' for --{option} does not fit in 32 bits");
    }

    private static int ParseInt(string option, string v) =>
        int.TryParse(v, NumberStyles.AllowLeadingWhite | NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int c)
            ? c
            : throw new UsageException($"invalid value '{v}' for --{option}");

    private static int ParseCpu(string v) =>
        int.TryParse(v, NumberStyles.AllowLeadingWhite | NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int c)
            ? c
            : throw new UsageException($"invalid vcpu number '{v}'");

    private static string Hex(ulong v, int digits) => v.ToString("x" + digits.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);

    /// <summary>bhyvectl's print_cpus: "banner:\t 0, 1" or "banner:\t (none)", ascending.</summary>
    private static string CpuSet(string banner, IReadOnlyList<int> cpus)
    {
        var sorted = new SortedSet<int>();
        for (int i = 0; i < cpus.Count; i++)
            sorted.Add(cpus[i]);
        var sb = new StringBuilder(banner).Append(":\t");
        if (sorted.Count == 0)
            return sb.Append(" (none)").ToString();
        bool first = true;
        foreach (int c in sorted)
        {
            sb.Append(first ? " " : ", ").Append(c.ToString(CultureInfo.InvariantCulture));
            first = false;
        }
        return sb.ToString();
    }

    /// <summary>bhyvectl's show_memseg: a header, then "%-4d%-12s%s" for each segment with a length.</summary>
    private static void PrintMemSegs(Session s)
    {
        IReadOnlyList<MemSegInfo> segs = SortedSegs(s.Vm.MemSegs());
        s.Line("ID  Length      Name");
        foreach (MemSegInfo m in segs)
            if (m.Length != 0)
                s.Line(m.Id.ToString(CultureInfo.InvariantCulture).PadRight(4) + Humanize.Bytes(m.Length).PadRight(12) + SegName(m));
    }

    /// <summary>bhyvectl's show_memmap: "%-12lX%-12s%-12s%-12lX" then the protection as RWX and three spaces.
    /// Prot bits are mmap's: PROT_READ 1, PROT_WRITE 2, PROT_EXEC 4.</summary>
    private static void PrintMemMap(Session s)
    {
        IReadOnlyList<MemSegInfo> segs = s.Vm.MemSegs();
        var maps = new List<MemMapInfo>(s.Vm.MemMap());
        maps.Sort((a, b) => a.Gpa.CompareTo(b.Gpa));
        s.Line("Address     Length      Segment     Offset      Prot  Flags");
        foreach (MemMapInfo m in maps)
        {
            string name = "?";
            foreach (MemSegInfo seg in segs)
                if (seg.Id == m.SegId)
                    name = SegName(seg);
            var sb = new StringBuilder();
            sb.Append(m.Gpa.ToString("X", CultureInfo.InvariantCulture).PadRight(12));
            sb.Append(Humanize.Bytes(m.Length).PadRight(12));
            sb.Append(name.PadRight(12));
            sb.Append(m.SegOffset.ToString("X", CultureInfo.InvariantCulture).PadRight(12));
            sb.Append((m.Prot & 1) != 0 ? 'R' : '-').Append((m.Prot & 2) != 0 ? 'W' : '-').Append((m.Prot & 4) != 0 ? 'X' : '-');
            sb.Append("   ");
            s.Line(sb.ToString());
        }
    }

    /// <summary>bhyvectl's "rtc nvram[%03d]: 0x%02x" (offset in decimal; every offset reads, as in bhyve).</summary>
    private static void PrintRtcNvram(Session s)
    {
        int offset = s.Req.RtcNvramOffset;
        byte v = s.Vm.GetRtcNvram(offset);
        s.Line($"rtc nvram[{offset.ToString("000", CultureInfo.InvariantCulture)}]: 0x{Hex(v, 2)}");
    }

    private static readonly string[] WeekDays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    private static readonly string[] Months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

    /// <summary>bhyvectl's "rtc time %#lx: %s %s %02d %02d:%02d:%02d %d" of gmtime_r(secs). bhyvectl breaks the
    /// seconds down as UTC whatever the host's zone: the RTC's seconds are the guest's wall clock (a localtime RTC
    /// already has the offset in them), so hyvectl does the same and never applies the host's zone.</summary>
    internal static string RtcTimeLine(long secs)
    {
        // Days since the epoch, floored, then the proleptic Gregorian civil date of that day number.
        long days = secs / 86400, sod = secs % 86400;
        if (sod < 0)
        {
            sod += 86400;
            days--;
        }
        long z = days + 719468; // shift the epoch to 0000-03-01, so leap days fall at the end of a year
        long era = (z >= 0 ? z : z - 146096) / 146097;
        long doe = z - era * 146097;                                   // day of the 400-year era
        long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; // year of the era
        long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);            // day of the March-based year
        long mp = (5 * doy + 2) / 153;                                 // March-based month
        long mday = doy - (153 * mp + 2) / 5 + 1;
        long mon = mp < 10 ? mp + 2 : mp - 10;                         // 0 = January
        long year = yoe + era * 400 + (mon <= 1 ? 1 : 0);
        long wday = ((days % 7) + 7 + 4) % 7;                          // 1970-01-01 was a Thursday
        // %#lx: no prefix for zero, two's complement for a negative time_t.
        string hex = secs == 0 ? "0" : "0x" + ((ulong)secs).ToString("x", CultureInfo.InvariantCulture);
        var inv = CultureInfo.InvariantCulture;
        return $"rtc time {hex}: {WeekDays[wday]} {Months[mon]} {mday.ToString("00", inv)} " +
            $"{(sod / 3600).ToString("00", inv)}:{(sod / 60 % 60).ToString("00", inv)}:{(sod % 60).ToString("00", inv)} " +
            year.ToString(inv);
    }

    /// <summary>bhyvectl's print_intinfo: "banner:\t" then "n/a", or the event's kind (VMX IDT-vectoring type in
    /// bits 10:8: 0 external interrupt, 2 NMI, 4 software interrupt, anything else an exception), " vector %d",
    /// and " errcode %#x" when bit 11 says an error code is delivered (it sits in bits 63:32).</summary>
    internal static string IntinfoLine(string banner, ulong info)
    {
        const ulong Valid = 1ul << 31, DelErrcode = 1ul << 11;
        var sb = new StringBuilder(banner).Append(":\t");
        if ((info & Valid) == 0)
            return sb.Append("n/a").ToString();
        sb.Append(((info >> 8) & 7) switch
        {
            0 => "extint",
            2 => "nmi",
            4 => "swint",
            _ => "exception",
        });
        sb.Append(" vector ").Append((info & 0xff).ToString(CultureInfo.InvariantCulture));
        if ((info & DelErrcode) != 0)
        {
            uint err = (uint)(info >> 32);
            sb.Append(" errcode ").Append(err == 0 ? "0" : "0x" + err.ToString("x", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }

    private static string SegName(MemSegInfo m) => string.IsNullOrEmpty(m.Name) ? "sysmem" : m.Name;

    private static List<MemSegInfo> SortedSegs(IReadOnlyList<MemSegInfo> segs)
    {
        var list = new List<MemSegInfo>(segs);
        list.Sort((a, b) => a.Id.CompareTo(b.Id));
        return list;
    }

    private static string NonEmpty(string option, string v) => v.Length > 0 ? v : throw new UsageException($"--{option} needs a file name");

    /// <summary>--describe-snapshot: the fixed header, then the manifest (configuration, section table, memory layout).
    /// Needs no running VM; a malformed file gets one line naming what is wrong and status 1.</summary>
    private static int DescribeSnapshot(string path, TextWriter o, TextWriter err)
    {
        try
        {
            using var r = Hyve.Vmm.State.SnapshotReader.Open(path);
            var h = r.Header;
            o.Write($"snapshot:\t{path}\n");
            o.Write($"format:\t\t{h.Major}.{h.Minor}\n");
            o.Write($"written by:\t{h.HyveVersion}\n");
            o.Write($"arch:\t\t{h.Arch}\n");
            o.Write($"engine:\t\t{h.Engine}\n");
            o.Write($"cpu:\t\t{h.CpuVendor}, features 0x{h.CpuFingerprint:x16}\n");
            o.Write($"manifest:\t{h.ManifestLength} bytes at {h.ManifestOffset}\n");
            o.Write(System.Text.Encoding.UTF8.GetString(r.Manifest.ToJson()));
            o.Write('\n');
            return 0;
        }
        catch (Hyve.Vmm.State.SnapshotFormatException e)
        {
            err.Write($"{Prog}: {path}: {e.Message}\n");
            return 1;
        }
    }
}
