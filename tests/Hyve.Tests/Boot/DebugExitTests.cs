// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Devices;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Boot;

public class DebugExitTests
{
    [Theory]
    [InlineData(4, 0x21u, 0x43)]
    [InlineData(1, 0u, 1)]
    [InlineData(2, 0x1234u, 0x2469)]
    public void WriteEndsWithValueShiftedLeftOrOne(int size, uint value, int status)
    {
        int? got = null;
        var bus = new PortBus();
        new DebugExit(s => got = s).Register(bus);
        bus.Write(0xf4, size, value);
        Assert.Equal(status, got);
    }

    [Fact]
    public void ReadsZeroAndClaimsIoSizePorts()
    {
        var bus = new PortBus();
        var d = new DebugExit(_ => { }, 0x501, 2);
        d.Register(bus);
        Assert.Equal(0u, bus.Read(0x501, 1));
        Assert.Same(d, bus.Find(0x502));
        Assert.Null(bus.Find(0x503));
    }

    [Fact]
    public void ParsesOptions()
    {
        Assert.Equal(((ushort)0xf4, 4), DebugExit.ParseOptions(null));
        Assert.Equal(((ushort)0x501, 2), DebugExit.ParseOptions("iobase=0x501,iosize=2"));
        Assert.Equal(((ushort)244, 1), DebugExit.ParseOptions("iobase=244,iosize=1"));
        Assert.Throws<HostConfigException>(() => DebugExit.ParseOptions("iobase=0x10000"));
        Assert.Throws<HostConfigException>(() => DebugExit.ParseOptions("iosize=0"));
        Assert.Throws<HostConfigException>(() => DebugExit.ParseOptions("port=1"));
        Assert.Throws<HostConfigException>(() => DebugExit.ParseOptions("iobase=0xffff,iosize=4"));
    }
}
