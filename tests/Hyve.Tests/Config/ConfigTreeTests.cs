// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Config;
using Xunit;

namespace Hyve.Tests.Config;

public class ConfigTreeTests
{
    [Theory]
    [InlineData("true", true)]
    [InlineData("TRUE", true)]
    [InlineData("on", true)]
    [InlineData("yes", true)]
    [InlineData("1", true)]
    [InlineData("false", false)]
    [InlineData("Off", false)]
    [InlineData("no", false)]
    [InlineData("0", false)]
    public void BooleansFollowBhyveConfig5(string text, bool expected)
    {
        var c = new ConfigTree();
        c.Set("x86.strictio", text);
        Assert.Equal(expected, c.GetBool("x86.strictio", !expected));
    }

    [Fact]
    public void BadBooleanAndDefaults()
    {
        var c = new ConfigTree();
        c.Set("a", "maybe");
        Assert.Throws<ConfigException>(() => c.GetBool("a", false));
        Assert.True(c.GetBool("unset", true));
        Assert.Equal(7, c.GetInt("unset", 7));
    }

    [Theory]
    [InlineData("42", 42)]
    [InlineData("0x2a", 42)]
    [InlineData("052", 42)]
    [InlineData("-5", -5)]
    public void IntegersUseStrtolSyntax(string text, long expected)
    {
        var c = new ConfigTree();
        c.Set("n", text);
        Assert.Equal(expected, c.GetInt("n", 0));
    }

    [Fact]
    public void IntegerRangeAndGarbage()
    {
        var c = new ConfigTree();
        c.Set("n", "300");
        c.Set("g", "12abc");
        Assert.Throws<ConfigException>(() => c.GetInt("n", 0, 0, 255));
        Assert.Throws<ConfigException>(() => c.GetInt("g", 0));
    }

    [Theory]
    [InlineData("4096", 4096UL)]
    [InlineData("4k", 4096UL)]
    [InlineData("2M", 2UL << 20)]
    [InlineData("3G", 3UL << 30)]
    [InlineData("1TB", 1UL << 40)]
    [InlineData("0x10M", 16UL << 20)]
    public void SizesUseExpandNumber(string text, ulong expected)
    {
        var c = new ConfigTree();
        c.Set("s", text);
        Assert.Equal(expected, c.GetSize("s", 0));
    }

    [Fact]
    public void ValuesExpandReferences()
    {
        var c = new ConfigTree();
        c.Set("name", "web");
        c.Set("pci.0.3.0.path", "/dev/zvol/bhyve/%(name)");
        c.Set("pct", "100%%");
        c.Set("loop", "%(loop)x");
        Assert.Equal("/dev/zvol/bhyve/web", c.Get("pci.0.3.0.path"));
        Assert.Equal("/dev/zvol/bhyve/%(name)", c.GetRaw("pci.0.3.0.path"));
        Assert.Equal("100%", c.Get("pct"));
        Assert.EndsWith("x", c.Get("loop")); // bounded, not endless
    }

    [Fact]
    public void NodesAndValuesAreDistinct()
    {
        var c = new ConfigTree();
        c.Set("pci.0.3.0.device", "virtio-blk");
        Assert.True(c.IsNode("pci.0.3.0"));
        Assert.Null(c.Get("pci.0.3.0"));
        Assert.Throws<ConfigException>(() => c.Set("pci.0.3.0", "x"));
        Assert.Throws<ConfigException>(() => c.Set("pci.0.3.0.device.sub", "x"));
        Assert.Equal(["3"], c.ChildNames("pci.0"));
    }

    [Fact]
    public void DumpUsesFullPathsSorted()
    {
        var c = new ConfigTree();
        c.Set("x86.strictmsr", "true");
        c.Set("cpus", "2");
        c.Set("pci.0.1.0.device", "lpc");
        Assert.Equal("cpus=2\npci.0.1.0.device=lpc\nx86.strictmsr=true\n", c.Dump());
    }
}
