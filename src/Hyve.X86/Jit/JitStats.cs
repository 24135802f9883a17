// SPDX-License-Identifier: BSD-2-Clause
using System.Text;
using Iced.Intel;

namespace Hyve.X86.Jit;

/// <summary>
/// Profile of what translated code leaves to the interpreter (HYVE_JIT_STATS=1): instructions the interpreter runs with
/// a translator present, by Iced <see cref="Code"/> and code size, the instructions that ended translation, and the
/// blocks' runtime exits to the interpreter. Printed on stderr when the process exits. Off, it costs one static read.
/// </summary>
public static class JitStats
{
    /// <summary>True when HYVE_JIT_STATS=1.</summary>
    public static readonly bool On = Environment.GetEnvironmentVariable("HYVE_JIT_STATS") == "1";

    private static readonly int Codes = Enum.GetValues<Code>().Length;
    private static readonly long[] s_interp = new long[4 * Codes];
    private static readonly long[] s_ended = new long[4 * Codes];
    private static readonly long[] s_missed = new long[4 * Codes];
    private static long s_translated, s_blockEntries, s_bailouts, s_translations, s_stale, s_flushes;
    private static int s_registered;

    private static int Mode(int bits, bool single = false) => single ? 3 : bits == 64 ? 2 : bits == 32 ? 1 : 0;

    /// <summary>The interpreter ran one instruction (<paramref name="single"/>: one at a time, outside the block loop; shown as mode "1s") of <paramref name="code"/> in <paramref name="bits"/>-bit code.</summary>
    public static void Interpreted(Code code, int bits, bool single = false)
    {
        Register();
        s_interp[Mode(bits, single) * Codes + (int)code]++;
    }

    /// <summary>A block's translation stopped before an instruction of <paramref name="code"/> (translation time).</summary>
    public static void Ended(Code code, int bits)
    {
        Register();
        s_ended[Mode(bits) * Codes + (int)code]++;
    }

    /// <summary>A block was translated; <paramref name="stale"/> when one for the same address existed but the guest's bytes
    /// there had changed (self-modifying code, a page reused for other code).</summary>
    public static void Translation(bool stale)
    {
        Register();
        s_translations++;
        if (stale) s_stale++;
    }

    /// <summary>The code cache filled up and every translation was dropped.</summary>
    public static void Flush()
    {
        Register();
        s_flushes++;
    }

    /// <summary>The host encoder refused a block starting with <paramref name="code"/>.</summary>
    public static void EncodeFailed(Code code, int bits, string why)
    {
        Register();
        if (Interlocked.Increment(ref s_encodeFailures) <= 5) Console.Error.WriteLine($"jit-stats: encoding failed ({bits}-bit block at {code}): {why}");
    }

    private static long s_encodeFailures;

    /// <summary>A translated block ran <paramref name="ran"/> instructions; <paramref name="bailed"/> when it left the
    /// instruction at RIP (of <paramref name="code"/>) to the interpreter on a probe miss.</summary>
    public static void Block(int ran, bool bailed, Code code, int bits)
    {
        Register();
        s_translated += ran;
        s_blockEntries++;
        if (bailed)
        {
            s_bailouts++;
            s_missed[Mode(bits) * Codes + (int)code]++;
        }
    }

    /// <summary>The instruction of <paramref name="jb"/> at <paramref name="rip"/> (decoded from its saved bytes).</summary>
    internal static Code CodeAt(JitBlock jb, ulong rip, int bits)
    {
        ulong off = rip - jb.Rip;
        if (off >= (ulong)jb.ByteLen) return Code.INVALID;
        var d = Iced.Intel.Decoder.Create(bits, new ByteArrayCodeReader(jb.Bytes, (int)off, jb.ByteLen - (int)off), rip);
        d.Decode(out var i);
        return i.Code;
    }

    private static void Register()
    {
        if (s_registered != 0 || Interlocked.Exchange(ref s_registered, 1) != 0) return;
        AppDomain.CurrentDomain.ProcessExit += static (_, _) => Console.Error.Write(Report());
    }

    /// <summary>The profile as text: totals, then the top 40 of each table.</summary>
    public static string Report()
    {
        long interp = 0;
        foreach (var v in s_interp) interp += v;
        var sb = new StringBuilder();
        long total = interp + s_translated;
        sb.AppendLine($"jit-stats: {total} instructions, {s_translated} translated ({(total == 0 ? 0 : 100.0 * s_translated / total):F1}%), "
            + $"{interp} interpreted; {s_blockEntries} block entries, {s_bailouts} left to the interpreter on a miss; "
            + $"{s_translations} translations ({s_stale} of changed code), {s_flushes} code cache flushes");
        Table(sb, "interpreted", s_interp, interp);
        Table(sb, "ended translation (per translation)", s_ended, 0);
        Table(sb, "bailed out on a miss", s_missed, s_bailouts);
        return sb.ToString();
    }

    private static void Table(StringBuilder sb, string title, long[] counts, long total)
    {
        var idx = new List<int>();
        for (int k = 0; k < counts.Length; k++) if (counts[k] != 0) idx.Add(k);
        idx.Sort((x, y) => counts[y].CompareTo(counts[x]));
        sb.AppendLine($"jit-stats: {title}:");
        for (int r = 0; r < Math.Min(40, idx.Count); r++)
        {
            int k = idx[r];
            string mode = (k / Codes) switch { 2 => "64", 1 => "32", 0 => "16", _ => "1s" };
            string share = total > 0 ? $" {100.0 * counts[k] / total,5:F1}%" : "";
            sb.AppendLine($"  {counts[k],12}{share}  {mode}  {(Code)(k % Codes)}");
        }
    }
}
