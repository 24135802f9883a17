// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Ctl;

using Xunit;

namespace Hyve.Tests.Ctl;

/// <summary>FreeBSD humanize_number (8-byte buffer, "B", autoscale, no space) and strtoul base 0, as bhyvectl uses them.</summary>
public sealed class HumanizeTests
{
    [Theory]
    [InlineData(1UL, "1B")]
    [InlineData(99999UL, "99999B")]
    [InlineData(100000UL, "98KB")]           // 97 KiB + 672 B rounds up
    [InlineData(2UL << 20, "2048KB")]        // fits in five digits at K
    [InlineData(256UL << 20, "256MB")]
    [InlineData(1UL << 30, "1024MB")]
    [InlineData(100UL << 30, "100GB")]
    public void Bytes(ulong n, string expected) => Assert.Equal(expected, Humanize.Bytes(n));

    [Theory]
    [InlineData("0x10", 16UL)]
    [InlineData("0XfFf0", 0xfff0UL)]
    [InlineData("010", 8UL)]
    [InlineData("0", 0UL)]
    [InlineData("42", 42UL)]
    [InlineData(" +7", 7UL)]
    [InlineData("-1", ulong.MaxValue)]
    [InlineData("0xffffffffffffffff", ulong.MaxValue)]
    public void ParsesLikeStrtoulBase0(string s, ulong expected)
    {
        Assert.True(Humanize.TryParseUlong(s, out ulong v));
        Assert.Equal(expected, v);
    }

    [Theory]
    [InlineData("")]
    [InlineData("zz")]
    [InlineData("09")]          // not octal
    [InlineData("12abc")]
    [InlineData("0x")]
    [InlineData("0x10000000000000000")]
    public void RejectsWhatIsNotANumber(string s) => Assert.False(Humanize.TryParseUlong(s, out _));
}
