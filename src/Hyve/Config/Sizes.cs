// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Config;

/// <summary>Byte-count parsing with FreeBSD's rules: expand_number(3) and libvmmapi's vm_parse_memsize.</summary>
public static class Sizes
{
    /// <summary>One mebibyte.</summary>
    public const ulong MiB = 1024 * 1024;

    /// <summary>
    /// expand_number(3): a number (decimal, 0x hex or leading-0 octal) with an optional unit suffix
    /// K, M, G, T, P or E (any case, powers of 1024) and an optional trailing B. Negative numbers and overflow fail.
    /// </summary>
    public static bool TryExpandNumber(string text, out ulong value)
    {
        value = 0;
        var t = text.AsSpan();
        // Scan the number greedily as strtoumax(3) with base 0 does, so "0x1e" is hex and not 0x1 exabytes.
        int i = 0;
        ulong n = 0;
        if (t.Length > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X') && Uri.IsHexDigit(t[2]))
        {
            for (i = 2; i < t.Length && Uri.IsHexDigit(t[i]); i++)
            {
                if (n > (ulong.MaxValue >> 4)) return false;
                n = (n << 4) | (uint)HexValue(t[i]);
            }
        }
        else if (t.Length > 0 && t[0] == '0')
        {
            for (i = 1; i < t.Length && t[i] >= '0' && t[i] <= '7'; i++)
            {
                if (n > (ulong.MaxValue >> 3)) return false;
                n = (n << 3) | (uint)(t[i] - '0');
            }
        }
        else
        {
            for (i = 0; i < t.Length && t[i] >= '0' && t[i] <= '9'; i++)
            {
                ulong d = (uint)(t[i] - '0');
                if (n > (ulong.MaxValue - d) / 10) return false;
                n = n * 10 + d;
            }
            if (i == 0) return false;
        }
        var unit = t[i..];
        int shift = 0;
        if (unit.Length > 0)
        {
            switch (char.ToLowerInvariant(unit[0]))
            {
                case 'k': shift = 10; break;
                case 'm': shift = 20; break;
                case 'g': shift = 30; break;
                case 't': shift = 40; break;
                case 'p': shift = 50; break;
                case 'e': shift = 60; break;
                case 'b': shift = 0; break;
                default: return false;
            }
            unit = unit[1..];
            if (shift != 0 && unit.Length > 0 && (unit[0] == 'b' || unit[0] == 'B')) unit = unit[1..];
            if (unit.Length != 0) return false;
        }
        if (shift > 0 && n > (ulong.MaxValue >> shift)) return false;
        value = n << shift;
        return true;
    }

    private static int HexValue(char c) => c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;

    /// <summary>
    /// vm_parse_memsize: a plain number below 1 MiB is a count of MiB (so <c>-m 512</c> is 512 MiB), a larger plain
    /// number is bytes, anything else goes through expand_number. Negative numbers and overflow fail; zero parses
    /// (callers reject it).
    /// </summary>
    public static bool TryParseMemorySize(string text, out ulong value)
    {
        value = 0;
        if (text.Length == 0 || text[0] == '-' || text[0] == '+') return false;
        if (ConfigTree.TryParseInteger(text, out long plain))
        {
            if (plain < 0) return false;
            ulong u = (ulong)plain;
            value = u < MiB ? u * MiB : u;
            return true;
        }
        return TryExpandNumber(text, out value);
    }
}
