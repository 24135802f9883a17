// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Config;
using Xunit;

namespace Hyve.Tests.Config;

public class OptionsTests
{
    private static ParseResult Ok(params string[] args)
    {
        var r = Options.Parse(args);
        Assert.True(r.Error is null, r.Error);
        return r;
    }

    private static string Fails(params string[] args)
    {
        var r = Options.Parse(args);
        Assert.NotNull(r.Error);
        Assert.DoesNotContain('\n', r.Error);
        return r.Error!;
    }

    // ---- -c ----

    [Fact]
    public void LoneNumberMeansCpusAndSocketsFollowIt()
    {
        var r = Ok("-c", "4", "vm");
        Assert.Equal("4", r.Config.Get("cpus"));
        Assert.Equal(new Topology(4, 4, 1, 1, 4), r.Topology);
    }

    [Fact]
    public void FullTopologyIsAccepted()
    {
        var r = Ok("-c", "cpus=4,sockets=2,cores=2,threads=1", "vm");
        Assert.Equal(new Topology(4, 2, 2, 1, 4), r.Topology);
        Assert.Equal("2", r.Config.Get("sockets"));
        Assert.Equal("2", r.Config.Get("cores"));
        Assert.Equal("1", r.Config.Get("threads"));
    }

    [Fact]
    public void CpusIsDerivedFromSocketsCoresThreads()
    {
        var r = Ok("-c", "sockets=2,cores=2", "vm");
        Assert.Equal(4, r.Topology.Cpus);
        Assert.Equal(4, r.Topology.MaxCpus);
    }

    [Fact]
    public void PartsMayComeInAnyOrderAndMaxcpusIsKept()
    {
        var r = Ok("-c", "threads=2,maxcpus=8,4,cores=2,sockets=1", "vm");
        Assert.Equal(new Topology(4, 1, 2, 2, 8), r.Topology);
        Assert.Equal("8", r.Config.Get("maxcpus"));
    }

    [Fact]
    public void EmptyTopologyMeansOneCpu()
    {
        var r = Ok("-c", "", "vm");
        Assert.Equal(new Topology(1, 1, 1, 1, 1), r.Topology);
    }

    // -x (x86.x2apic): the local APICs start in x2APIC mode, so the machine's CPU model reports x2APIC even when the
    // named model does not; removing x2apic at the same time is a contradiction, refused at parse time.
    [Fact]
    public void MinusXStartsInX2ApicModeWithAModelThatReportsIt()
    {
        var r = Ok("-x", "vm");
        Assert.True(r.Config.GetBool("x86.x2apic", false));
        Assert.True(global::Hyve.Machine.CpuModelOption(r.Config).Has("x2apic"));
        Assert.False(global::Hyve.Machine.CpuModelOption(Ok("vm").Config).Has("x2apic")); // bhyve's default: xAPIC only
        Assert.Equal("-x (x86.x2apic) starts the local APIC in x2APIC mode, but cpu.features removes x2apic",
            Fails("-x", "-o", "cpu.features=-x2apic", "vm"));
    }

    [Fact]
    public void DefaultIsOneCpu() => Assert.Equal(new Topology(1, 1, 1, 1, 1), Ok("vm").Topology);

    [Fact]
    public void CpusNotMatchingTheProductIsRejected()
        => Assert.Equal("Topology (2 sockets, 1 cores, 1 threads) does not match 3 vCPUs", Fails("-c", "cpus=3,sockets=2", "vm"));

    [Fact]
    public void CpusWithCoresButNoSocketsTakesSocketsFromCpusAsBhyveDoes()
        => Assert.Contains("does not match 4 vCPUs", Fails("-c", "cpus=4,cores=2", "vm"));

    [Theory]
    [InlineData("0", "Invalid value for cpus: '0'")]
    [InlineData("abc", "Invalid value for cpus: 'abc'")]
    [InlineData("-2", "Invalid value for cpus: '-2'")]
    [InlineData("sockets=0", "Invalid value for sockets: '0'")]
    [InlineData("cores=x", "Invalid value for cores: 'x'")]
    [InlineData("threads=", "Invalid value for threads: ''")]
    [InlineData("4,maxcpus=2", "maxcpus (2) is less than the number of vCPUs (4)")]
    [InlineData("300", "300 vCPUs requested but only 255 available")]
    [InlineData("sockets=300,cores=300", "Computed number of vCPUs too high: 90000")]
    [InlineData("foo=3", "invalid cpu topology 'foo=3'")]
    // Found by the acpi fuzz target: 255 vCPUs whose socket/core bit fields reach APIC ID 338 (84 << 2 | 2).
    [InlineData("sockets=85,cores=3", "Topology (85 sockets, 3 cores, 1 threads) needs APIC IDs up to 338, above the xAPIC's 254")]
    public void BadTopologiesAreRejected(string spec, string message) => Assert.Equal(message, Fails("-c", spec, "vm"));

    // ---- -m ----

    [Theory]
    [InlineData("512", 512UL << 20)]
    [InlineData("1G", 1UL << 30)]
    [InlineData("1g", 1UL << 30)]
    [InlineData("2048K", 2UL << 20)]
    [InlineData("256M", 256UL << 20)]
    [InlineData("1T", 1UL << 40)]
    [InlineData("0x200", 512UL << 20)]
    [InlineData("4294967296", 4UL << 30)]
    public void MemorySizes(string spec, ulong bytes)
    {
        var r = Ok("-m", spec, "vm");
        Assert.Equal(spec, r.Config.Get("memory.size"));
        Assert.Equal(bytes, r.MemorySize);
    }

    [Fact]
    public void DefaultMemoryIs256M()
    {
        var r = Ok("vm");
        Assert.Equal("256M", r.Config.Get("memory.size"));
        Assert.Equal(256UL << 20, r.MemorySize);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("0G")]
    [InlineData("12Q")]
    [InlineData("-1")]
    [InlineData("99999999T")]
    [InlineData("18446744073709551616")]
    [InlineData("")]
    [InlineData("G")]
    [InlineData("1GG")]
    public void BadMemorySizesAreRejected(string spec) => Assert.Equal($"invalid memsize '{spec}'", Fails("-m", spec, "vm"));

    // issue 18 #2: beyond the maximum, or too small to boot anything: one line, never an exception out of Parse.
    [Theory]
    [InlineData("-m", "2T", "more than the supported maximum of 1T")]
    [InlineData("-m", "99999T", "more than the supported maximum of 1T")]
    [InlineData("-o", "memory.size=2T", "more than the supported maximum of 1T")]
    [InlineData("-m", "1K", "less than the minimum of 1M")]
    [InlineData("-m", "1048575B", "less than the minimum of 1M")]
    public void MemorySizesOutsideTheSupportedRangeAreOneLine(string option, string value, string reason)
        => Assert.Contains(reason, Fails(option, value, "vm"), StringComparison.Ordinal);

    // ---- -s ----

    [Fact]
    public void SlotWritesDeviceNodeWithDecimalBusSlotFunc()
    {
        var r = Ok("-s", "0,hostbridge", "-s", "3:1,hostbridge,vendor=0x8086,quirk", "-s", "1:4:2,piix4-pm", "vm");
        Assert.Equal("hostbridge", r.Config.Get("pci.0.0.0.device"));
        Assert.Equal("hostbridge", r.Config.Get("pci.0.3.1.device"));
        Assert.Equal("0x8086", r.Config.Get("pci.0.3.1.vendor"));
        Assert.Equal("true", r.Config.Get("pci.0.3.1.quirk"));
        Assert.Equal("piix4-pm", r.Config.Get("pci.1.4.2.device"));
    }

    [Fact]
    public void VirtioSlotsTakeBhyveLegacyLeadingWords()
    {
        var r = Ok("-s", "3:1,virtio-blk,/tmp/disk.img,ro,sectorsize=4096/4096", "-s", "4,virtio-console,con=stdio,log=/tmp/x", "-s", "5,virtio-rnd", "vm");
        Assert.Equal("virtio-blk", r.Config.Get("pci.0.3.1.device"));
        Assert.Equal("/tmp/disk.img", r.Config.Get("pci.0.3.1.path"));
        Assert.Equal("true", r.Config.Get("pci.0.3.1.ro"));
        Assert.Equal("4096/4096", r.Config.Get("pci.0.3.1.sectorsize"));
        Assert.Equal("con", r.Config.Get("pci.0.4.0.port.0.name"));
        Assert.Equal("stdio", r.Config.Get("pci.0.4.0.port.0.path"));
        Assert.Equal("/tmp/x", r.Config.Get("pci.0.4.0.port.1.path"));
        Assert.Equal("virtio-rnd", r.Config.Get("pci.0.5.0.device"));
    }

    [Theory]
    [InlineData("ahci")]
    [InlineData("ahci-hd")]
    [InlineData("e1000")]
    [InlineData("hda")]
    [InlineData("nvme")]
    [InlineData("passthru")]
    [InlineData("virtio-9p")]
    [InlineData("virtio-scsi")]
    [InlineData("xhci")]
    public void BhyveDevicesHyveLacksAreRefusedByName(string device)
    {
        Assert.Equal($"-s 3,{device}: hyve does not implement {device}", Fails("-s", $"3,{device},/d.img", "vm"));
        Assert.DoesNotContain(device, Options.Parse(["-s", "help"]).HelpText);
    }

    [Theory]
    [InlineData("32,hostbridge", "slot must be a number from 0 to 31")]
    [InlineData("3:8,hostbridge", "function must be a number from 0 to 7")]
    [InlineData("256:0:0,hostbridge", "bus must be a number from 0 to 255")]
    [InlineData("x,hostbridge", "slot must be a number")]
    [InlineData("-1,hostbridge", "slot must be a number")]
    [InlineData("3", "missing device emulation")]
    [InlineData("3,", "missing device emulation")]
    [InlineData("3,frobnicator", "unknown device \"frobnicator\"")]
    [InlineData("1:2:3:4,hostbridge", "Invalid PCI slot info field")]
    public void BadSlotsAreRejected(string spec, string fragment) => Assert.Contains(fragment, Fails("-s", spec, "vm"));

    [Fact]
    public void SlotUsedTwiceIsRejected()
        => Assert.Equal("pci slot 0:3:0 already occupied!", Fails("-s", "3,piix4-pm", "-s", "0:3:0,hostbridge", "vm"));

    // ---- -l ----

    [Fact]
    public void LpcDevicesWriteLpcKeys()
    {
        var r = Ok("-l", "com1,stdio", "-l", "COM2,/tmp/com2.log", "-l", "bootrom,/rom.fd,/vars.fd", "-l", "fwcfg,qemu", "-l", "debug-exit", "vm");
        Assert.Equal("stdio", r.Config.Get("lpc.com1.path"));
        Assert.Equal("/tmp/com2.log", r.Config.Get("lpc.com2.path"));
        Assert.Equal("/rom.fd", r.Config.Get("lpc.bootrom"));
        Assert.Equal("/vars.fd", r.Config.Get("lpc.bootvars"));
        Assert.Equal("qemu", r.Config.Get("lpc.fwcfg"));
        Assert.Equal("0xf4", r.Config.Get("lpc.debug_exit.iobase"));
        Assert.Equal("4", r.Config.Get("lpc.debug_exit.iosize"));
    }

    [Fact]
    public void DebugExitTakesIobaseAndIosize()
    {
        var r = Ok("-l", "debug-exit,iobase=0xf4,iosize=1", "vm");
        Assert.Equal(0xf4, r.Config.GetInt("lpc.debug_exit.iobase", 0));
        Assert.Equal(1, r.Config.GetInt("lpc.debug_exit.iosize", 0));
    }

    [Fact]
    public void FwCfgDefaultsToBhyveAndBootromAloneHasNoVars()
    {
        var r = Ok("-l", "bootrom,/rom.fd", "vm");
        Assert.Equal("bhyve", r.Config.Get("lpc.fwcfg"));
        Assert.Null(r.Config.Get("lpc.bootvars"));
    }

    [Theory]
    [InlineData("com5,stdio")]
    [InlineData("com1")]
    [InlineData("bootrom")]
    [InlineData("fwcfg,seabios")]
    [InlineData("debug-exit,iosize=3")]
    [InlineData("debug-exit,iobase=0x10000")]
    [InlineData("debug-exit,port=1")]
    public void BadLpcDevicesAreRejected(string spec) => Fails("-l", spec, "vm");

    // ---- -o, -k and their order ----

    [Fact]
    public void LaterOptionsOverrideEarlierOnes()
    {
        string file = Path.Combine(Path.GetTempPath(), $"hyve-cfg-{Guid.NewGuid():N}.conf");
        File.WriteAllText(file, "# a comment\n\nmemory.size=1G\ncpus=2\nboot.cmdline=console=ttyS0 quiet\r\n  x86.strictio = true\n");
        try
        {
            var r = Ok("-k", file, "-o", "memory.size=2G", "vm");
            Assert.Equal("2G", r.Config.Get("memory.size"));
            Assert.Equal("2", r.Config.Get("cpus"));
            Assert.Equal("console=ttyS0 quiet", r.Config.Get("boot.cmdline"));
            Assert.Equal("true", r.Config.Get("x86.strictio"));

            var r2 = Ok("-o", "memory.size=2G", "-k", file, "vm");
            Assert.Equal("1G", r2.Config.Get("memory.size"));
            var r3 = Ok("-m", "4G", "-k", file, "-c", "3", "vm");
            Assert.Equal("1G", r3.Config.Get("memory.size"));
            Assert.Equal(3, r3.Topology.Cpus);
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public void MalformedConfigFileLineNamesFileAndLine()
    {
        string file = Path.Combine(Path.GetTempPath(), $"hyve-cfg-{Guid.NewGuid():N}.conf");
        File.WriteAllText(file, "cpus=2\n# fine\nthis is not a key value\n");
        try
        {
            Assert.Equal($"{file} line 3: not key=value: 'this is not a key value'", Fails("-k", file, "vm"));
            // issue 18 #8: a bad line is quoted briefly, never echoed whole.
            File.WriteAllText(file, new string('\u0001', 3) + new string('z', 5000) + "\n");
            string e = Fails("-k", file, "vm");
            Assert.Equal($"{file} line 1: not key=value: '???{new string('z', 37)}...'", e);
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public void MissingConfigFileIsAnError()
        => Assert.Equal("Failed to open configuration file /nonexistent/hyve.conf: No such file or directory", Fails("-k", "/nonexistent/hyve.conf", "vm"));

    [Theory]
    [InlineData("novalue")]
    [InlineData("key=")]
    [InlineData("=value")]
    [InlineData("a..b=1")]
    public void BadDashOIsRejected(string opt) => Fails("-o", opt, "vm");

    [Fact]
    public void ValueAndNodeCannotShareAPath()
        => Assert.Contains("is a value", Fails("-o", "pci.0.3.0=x", "-o", "pci.0.3.0.device=virtio-rnd", "vm"));

    // ---- config.dump ----

    [Fact]
    public void ConfigDumpIsSortedKeyValueLines()
    {
        var r = Ok("-c", "2", "-m", "1G", "-s", "0,hostbridge", "-l", "com1,stdio", "-H", "-o", "config.dump=1", "myvm");
        Assert.True(r.DumpConfig);
        Assert.Equal(
            "config.dump=1\n" +
            "cpus=2\n" +
            "lpc.com1.path=stdio\n" +
            "lpc.fwcfg=bhyve\n" +
            "memory.size=1G\n" +
            "name=myvm\n" +
            "pci.0.0.0.device=hostbridge\n" +
            "x86.strictmsr=true\n" +
            "x86.vmexit_on_hlt=true\n",
            r.Config.Dump());
    }

    [Fact]
    public void ConfigDumpSkipsTopologyChecksAsBhyveDoes()
    {
        var r = Ok("-c", "0", "-o", "config.dump=true", "vm");
        Assert.True(r.DumpConfig);
    }

    // ---- flags and the rest ----

    [Fact]
    public void FlagsWriteTheirKeys()
    {
        var r = Ok("-CHewuDAY", "vm");
        var c = r.Config;
        Assert.True(c.GetBool("memory.guest_in_core", false));
        Assert.True(c.GetBool("x86.vmexit_on_hlt", false));
        Assert.True(c.GetBool("x86.strictio", false));
        Assert.False(c.GetBool("x86.strictmsr", true));
        Assert.False(c.GetBool("rtc.use_localtime", true));
        Assert.True(c.GetBool("destroy_on_poweroff", false));
        Assert.True(c.GetBool("acpi_tables", false));
        Assert.False(c.GetBool("x86.mptable", true));
    }

    [Fact]
    public void PinGdbRestoreFwcfgAndName()
    {
        var r = Ok("-c", "2", "-p", "0:3", "-p", "0:5", "-p1:7", "-G", "w127.0.0.1:1234", "-r", "/tmp/snap",
            "-f", "opt/org.example/greeting,string=hello", "-f", "name=opt/x,string=y", "guest");
        var c = r.Config;
        Assert.Equal("3,5", c.Get("vcpu.0.cpuset"));
        Assert.Equal("7", c.Get("vcpu.1.cpuset"));
        Assert.Equal("true", c.Get("gdb.wait"));
        Assert.Equal("127.0.0.1", c.Get("gdb.address"));
        Assert.Equal("1234", c.Get("gdb.port"));
        Assert.Equal("/tmp/snap", c.Get("restore_file"));
        Assert.Equal("opt/org.example/greeting", c.Get("fwcfg.user.0.name"));
        Assert.Equal("hello", c.Get("fwcfg.user.0.string"));
        Assert.Equal("opt/x", c.Get("fwcfg.user.1.name"));
        Assert.Equal("guest", c.Get("name"));
        Assert.Equal([3, 5], Options.ParseCpuSet(c.Get("vcpu.0.cpuset")!));
    }

    [Fact]
    public void GdbPortAlone()
    {
        var r = Ok("-G", "5555", "vm");
        Assert.Equal("5555", r.Config.Get("gdb.port"));
        Assert.Null(r.Config.Get("gdb.address"));
        Assert.Null(r.Config.Get("gdb.wait"));
    }

    [Fact]
    public void CpuSetRanges() => Assert.Equal([0, 2, 3, 4, 9], Options.ParseCpuSet("4,2-3,0,9"));

    [Theory]
    [InlineData("-p", "x:1")]
    [InlineData("-p", "0:-1")]
    [InlineData("-p", "0:1024")]
    [InlineData("-G", "port")]
    [InlineData("-f", "noval")]
    [InlineData("-f", "n,file=/nonexistent/f")]
    [InlineData("-f", "n,other=1")]
    [InlineData("-o", "vcpu.0.cpuset=3-1")]
    public void BadArgumentsAreRejected(string opt, string arg) => Fails(opt, arg, "vm");

    [Fact]
    public void MissingVmNameIsAnErrorWithUsage()
    {
        var r = Options.Parse(["-c", "2"]);
        Assert.Equal("missing VM name", r.Error);
        Assert.True(r.ShowUsage);
    }

    [Fact]
    public void UnknownOptionIsAnErrorWithUsage()
    {
        var r = Options.Parse(["-Z", "vm"]);
        Assert.Equal("illegal option -- 'Z'", r.Error);
        Assert.True(r.ShowUsage);
    }

    [Fact]
    public void MissingOptionArgumentIsAnError()
    {
        var r = Options.Parse(["-c"]);
        Assert.Equal("option requires an argument -- 'c'", r.Error);
        Assert.True(r.ShowUsage);
    }

    [Fact]
    public void ExtraOperandIsAnError()
    {
        var r = Options.Parse(["vm", "-c", "2"]);
        Assert.NotNull(r.Error);
        Assert.True(r.ShowUsage);
    }

    [Fact]
    public void HelpPrintsUsageWithoutAName()
    {
        var r = Options.Parse(["-h"]);
        Assert.Null(r.Error);
        Assert.True(r.ShowHelp);
        Assert.StartsWith("Usage: hyve", r.HelpText);
        Assert.Contains("hostbridge", Options.Parse(["-s", "help"]).HelpText);
        Assert.Contains("com1", Options.Parse(["-l", "help"]).HelpText);
    }

    [Fact]
    public void AttachedArgumentsAndDoubleDash()
    {
        var r = Ok("-c4", "-m1G", "--", "-vm-");
        Assert.Equal(4, r.Topology.Cpus);
        Assert.Equal(1UL << 30, r.MemorySize);
        Assert.Equal("-vm-", r.Config.Get("name"));
    }
}
