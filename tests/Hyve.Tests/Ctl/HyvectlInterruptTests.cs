// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Ctl;
using Hyve.Vmm.Control;

using Xunit;

namespace Hyve.Tests.Ctl;

/// <summary>hyvectl's RTC, NMI, LVT and intinfo options against a fake VM: bhyvectl's option names, order and
/// output formats (usr.sbin/bhyvectl amd64 bhyvectl_machdep.c), and the control protocol under them.</summary>
public sealed class HyvectlInterruptTests : IDisposable
{
    private readonly string _dir = Path.Combine("/tmp", "hyvectl-test-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly FakeVm _vm = new("guest");
    private readonly ControlServer _server;

    public HyvectlInterruptTests() => _server = ControlServer.Start(_vm, _dir);

    public void Dispose()
    {
        _server.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    private (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = CtlMain.Run(args, o, e, _dir);
        return (code, o.ToString(), e.ToString());
    }

    private string Ok(params string[] args)
    {
        var (code, o, e) = Run(args);
        Assert.True(code == 0, $"exit {code}: {e}");
        Assert.Equal("", e);
        return o;
    }

    /// <summary>A refused request: bhyvectl prints errno (EINVAL) and exits non-zero.</summary>
    private string Refused(params string[] args)
    {
        var (code, o, e) = Run(args);
        Assert.Equal(1, code);
        Assert.Equal("errno = 22\n", o);
        return e;
    }

    [Fact]
    public void GetRtcTimeIsGmtimeInBhyvectlFormat()
    {
        Assert.Equal("rtc time 0x6925a850: Tue Nov 25 13:00:00 2025\n", Ok("--vm=guest", "--get-rtc-time"));
        // %02d day of month (not ctime's space padding); %#lx prints zero without 0x.
        _vm.RtcTime = 0;
        Assert.Equal("rtc time 0: Thu Jan 01 00:00:00 1970\n", Ok("--vm=guest", "--get-rtc-time"));
        _vm.RtcTime = 951782400; // leap day of a century leap year
        Assert.Equal("rtc time 0x38bb0c00: Tue Feb 29 00:00:00 2000\n", Ok("--vm=guest", "--get-rtc-time"));
        _vm.RtcTime = 4102444799; // the RTC's last second with a two-digit year and century 20
        Assert.Equal("rtc time 0xf48656ff: Thu Dec 31 23:59:59 2099\n", Ok("--vm=guest", "--get-rtc-time"));
        // Vrtc's broken-time value: time_t -1 as a 64-bit pattern, one second before the epoch.
        _vm.RtcTime = -1;
        Assert.Equal("rtc time 0xffffffffffffffff: Wed Dec 31 23:59:59 1969\n", Ok("--vm=guest", "--get-rtc-time"));
    }

    [Fact]
    public void SetRtcTimeThenGetShowsIt()
    {
        Assert.Equal("rtc time 0x6000000a: Thu Jan 14 08:25:46 2021\n",
            Ok("--vm=guest", "--get-rtc-time", "--set-rtc-time=0x6000000a"));
        Assert.Equal(0x6000000aL, _vm.RtcTime);
        Assert.Equal("", Ok("--vm=guest", "--set-rtc-time", "1700000000"));
        Assert.Equal(1700000000L, _vm.RtcTime);
    }

    [Fact]
    public void RtcNvramOffsetIsDecimalInOutput()
    {
        _vm.Nvram[14] = 0x5a;
        Assert.Equal("rtc nvram[014]: 0x5a\n", Ok("--vm=guest", "--rtc-nvram-offset=14", "--get-rtc-nvram"));
        // strtoul base 0: 0x7f is offset 127, printed %03d.
        _vm.Nvram[127] = 0x07;
        Assert.Equal("rtc nvram[127]: 0x07\n", Ok("--vm=guest", "--get-rtc-nvram", "--rtc-nvram-offset=0x7f"));
    }

    [Fact]
    public void SetRtcNvramWritesBeforeTheRead()
    {
        Assert.Equal("rtc nvram[048]: 0xa5\n",
            Ok("--vm=guest", "--rtc-nvram-offset=0x30", "--set-rtc-nvram=0xa5", "--get-rtc-nvram"));
        Assert.Equal(0xa5, _vm.Nvram[0x30]);
        // bhyvectl stores (uint8_t)strtoul: only the low byte is written.
        Ok("--vm=guest", "--rtc-nvram-offset=20", "--set-rtc-nvram=0x1ff");
        Assert.Equal(0xff, _vm.Nvram[20]);
    }

    [Theory]
    [InlineData(0x00)]
    [InlineData(0x07)]
    [InlineData(0x0a)]
    [InlineData(0x0d)]
    public void WritesToTimeAndControlRegistersAreRefusedButReadsAreNot(int offset)
    {
        string off = "--rtc-nvram-offset=" + offset;
        Assert.Contains("not NVRAM", Refused("--vm=guest", off, "--set-rtc-nvram=1"));
        Assert.All(_vm.Nvram, b => Assert.Equal(0, b));
        Assert.Equal($"rtc nvram[{offset:D3}]: 0x00\n", Ok("--vm=guest", off, "--get-rtc-nvram"));
    }

    [Fact]
    public void OffsetsPastTheNvramAreRefused()
    {
        Refused("--vm=guest", "--rtc-nvram-offset=128", "--get-rtc-nvram");
        Refused("--vm=guest", "--rtc-nvram-offset=-1", "--set-rtc-nvram=1");
    }

    [Fact]
    public void RefusedWriteStopsBeforeLaterReads()
    {
        // bhyvectl stops at the first error: the time read after the refused NVRAM write never prints.
        var (code, o, _) = Run("--vm=guest", "--rtc-nvram-offset=5", "--set-rtc-nvram=1", "--get-rtc-time");
        Assert.Equal(1, code);
        Assert.Equal("errno = 22\n", o);
    }

    [Fact]
    public void GetAllShowsNvramAtAReadableOffset()
    {
        _vm.Nvram[0x40] = 0x11;
        string o = Ok("--vm=guest", "--get-all", "--rtc-nvram-offset=64");
        Assert.Contains("ldtr[0]\t\t0x0000\nrtc nvram[064]: 0x11\nrtc time 0x6925a850: Tue Nov 25 13:00:00 2025\npending:\tn/a\n", o);
    }

    [Fact]
    public void InjectNmiOnTheSelectedCpu()
    {
        Assert.Equal("", Ok("--vm=guest", "--inject-nmi"));
        Ok("--vm=guest", "--cpu=3", "--inject-nmi");
        Assert.Equal([0, 3], _vm.Nmis);
        Refused("--vm=guest", "--cpu=-1", "--inject-nmi");
        Assert.Equal([0, 3], _vm.Nmis);
    }

    [Fact]
    public void AssertLapicLvtReachesTheVmWithCpuAndPin()
    {
        Assert.Equal("", Ok("--vm=guest", "--cpu=1", "--assert-lapic-lvt=2"));
        // --cpu=-1: every vCPU, as bhyve's vm_lapic_local_irq with vcpu -1.
        Ok("--vm=guest", "--cpu=-1", "--assert-lapic-lvt=0");
        Ok("--vm=guest", "--assert-lapic-lvt", "6");
        // -1 is bhyvectl's "no assertion".
        Ok("--vm=guest", "--assert-lapic-lvt=-1");
        Assert.Equal([(1, 2), (-1, 0), (0, 6)], _vm.LvtAsserts);
        Assert.Contains("LVT index 7", Refused("--vm=guest", "--assert-lapic-lvt=7"));
        var (code, _, e) = Run("--vm=guest", "--assert-lapic-lvt=x");
        Assert.Equal(1, code);
        Assert.Contains("invalid value 'x' for --assert-lapic-lvt", e);
    }

    [Fact]
    public void NmiAndLvtComeAfterRegisterWritesAndBeforeReads()
    {
        Assert.Equal("rip[2]\t\t0x0000000000002000\n",
            Ok("--vm=guest", "--cpu=2", "--get-rip", "--inject-nmi", "--set-rip=0x2000", "--assert-lapic-lvt=1"));
        Assert.Equal([2], _vm.Nmis);
        Assert.Equal([(2, 1)], _vm.LvtAsserts);
    }

    [Fact]
    public void GetIntinfoDecodesBothEvents()
    {
        Assert.Equal("pending:\tn/a\ncurrent:\tn/a\n", Ok("--vm=guest", "--get-intinfo"));

        // #PF being delivered (type 3, error code 2); an external interrupt 0x30 queued.
        _vm.Intinfo[1] = (0x0000_0002_8000_0b0e, 0x8000_0030);
        Assert.Equal("pending:\texception vector 14 errcode 0x2\ncurrent:\textint vector 48\n",
            Ok("--vm=guest", "--cpu=1", "--get-intinfo"));

        // NMI (type 2, vector 2); software interrupt int 0x80 (type 4); an error code of zero prints as "0".
        _vm.Intinfo[0] = (0x8000_0202, 0x8000_0480);
        Assert.Equal("pending:\tnmi vector 2\ncurrent:\tswint vector 128\n", Ok("--vm=guest", "--get-intinfo"));
        _vm.Intinfo[0] = (0x8000_0b0d, 0x0000_0000_0000_0b0d);
        Assert.Equal("pending:\texception vector 13 errcode 0\ncurrent:\tn/a\n", Ok("--vm=guest", "--get-intinfo"));

        Refused("--vm=guest", "--cpu=4", "--get-intinfo");
    }

    [Fact]
    public void UsageListsTheNewOptions()
    {
        var (_, o, _) = Run("--help");
        foreach (string line in new[]
        {
            "[--assert-lapic-lvt=<pin>]", "[--inject-nmi]", "[--get-rtc-time]", "[--set-rtc-time=<secs>]",
            "[--get-rtc-nvram]", "[--set-rtc-nvram=<val>]", "[--rtc-nvram-offset=<offset>]", "[--get-intinfo]",
        })
            Assert.Contains("       " + line + "\n", o);
    }

    [Fact]
    public void ProtocolRoundTrips()
    {
        using var c = ControlClient.Connect("guest", _dir);
        Assert.Equal(1764075600L, c.GetRtcTime());
        c.SetRtcTime(-86400);
        Assert.Equal(-86400L, _vm.RtcTime);
        Assert.Equal(-86400L, c.GetRtcTime());
        c.SetRtcTime(long.MaxValue);
        Assert.Equal(long.MaxValue, c.GetRtcTime());

        c.SetRtcNvram(0x0e, 0xff);
        Assert.Equal(0xff, _vm.Nvram[0x0e]);
        Assert.Equal(0xff, c.GetRtcNvram(0x0e));
        Assert.Equal(0, c.GetRtcNvram(0x0d));
        var e = Assert.Throws<ControlErrorException>(() => c.SetRtcNvram(0x0d, 1));
        Assert.Equal(ControlStatus.InvalidArgument, e.Status);
        Assert.Equal(22, e.Errno);
        Assert.Throws<ControlErrorException>(() => c.SetRtcNvram(int.MinValue, 0));

        c.InjectNmi(2);
        Assert.Equal([2], _vm.Nmis);
        c.AssertLapicLvt(-1, 4);
        c.AssertLapicLvt(3, 5);
        Assert.Equal([(-1, 4), (3, 5)], _vm.LvtAsserts);

        _vm.Intinfo[3] = (ulong.MaxValue, 0x8000_0000_0000_0001);
        Assert.Equal((ulong.MaxValue, 0x8000_0000_0000_0001UL), c.GetIntinfo(3));
        Assert.Throws<ControlErrorException>(() => c.GetIntinfo(-1));

        // The connection survives the refusals.
        Assert.Equal(4, c.CpuCount);
    }
}
