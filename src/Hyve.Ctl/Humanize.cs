// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;

namespace Hyve.Ctl;

/// <summary>Number formatting as bhyvectl does it with libutil and libc.</summary>
internal static class Humanize
{
    private static readonly string[] Prefixes = ["", "K", "M", "G", "T", "P", "E"];

    /// <summary>
    /// FreeBSD's humanize_number(buf, 8, n, "B", HN_AUTOSCALE, HN_NOSPACE), which bhyvectl uses for
    /// memseg and memmap lengths: divide by 1024 until the number fits the 8-byte buffer
    /// (at most 5 digits beside the prefix, "B" and NUL), then round to nearest.
    /// </summary>
    public static string Bytes(ulong n)
    {
        const ulong Max = 100000;   // 10^(8 - strlen("B") - 1 digit - 1 NUL)
        const ulong Divisor = 1024;
        ulong quotient = n, remainder = 0;
        int i = 0;
        // The "max - 1" clause divides once more when rounding below would overflow the column.
        while ((quotient >= Max || (quotient == Max - 1 && remainder >= Divisor / 2)) && i < Prefixes.Length - 1)
        {
            remainder = quotient % Divisor;
            quotient /= Divisor;
            i++;
        }
        ulong rounded = quotient + (remainder + Divisor / 2) / Divisor;
        return rounded.ToString(CultureInfo.InvariantCulture) + Prefixes[i] + "B";
    }

    /// <summary>
    /// strtoul(s, NULL, 0) as bhyvectl parses values: optional leading space and sign, "0x" hex, leading-0 octal,
    /// else decimal; a minus sign negates modulo 2^64. Unlike strtoul, an empty number, trailing garbage or an
    /// overflow is rejected rather than read as 0 or ULONG_MAX, so a typo never writes a wrong register value.
    /// </summary>
    public static bool TryParseUlong(string s, out ulong value)
    {
        value = 0;
        int i = 0;
        while (i < s.Length && char.IsWhiteSpace(s[i]))
            i++;
        bool negative = false;
        if (i < s.Length && (s[i] == '+' || s[i] == '-'))
        {
            negative = s[i] == '-';
            i++;
        }
        uint radix = 10;
        if (i + 1 < s.Length && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X') &&
            i + 2 < s.Length && Uri.IsHexDigit(s[i + 2]))
        {
            radix = 16;
            i += 2;
        }
        else if (i < s.Length && s[i] == '0')
        {
            radix = 8;
        }
        if (i >= s.Length)
            return false;
        ulong v = 0;
        for (; i < s.Length; i++)
        {
            int d = DigitValue(s[i]);
            if (d < 0 || d >= radix)
                return false;
            ulong next = unchecked(v * radix + (uint)d);
            if (v > (ulong.MaxValue - (uint)d) / radix)
                return false;
            v = next;
        }
        value = negative ? unchecked(0 - v) : v;
        return true;
    }

    private static int DigitValue(char c) => c switch
    {
        >= '0' and <= '9' => c - '0',
        >= 'a' and <= 'f' => c - 'a' + 10,
        >= 'A' and <= 'F' => c - 'A' + 10,
        _ => -1,
    };
}
