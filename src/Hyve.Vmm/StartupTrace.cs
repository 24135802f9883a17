// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;

namespace Hyve.Vmm;

/// <summary>
/// Start-up timing for benchmarks, silent unless asked for. HYVE_BENCH_T0 (a CLOCK_MONOTONIC time in ns, taken by the
/// launcher just before it spawns hyve) makes hyve print the monotonic time of the guest's first VM exit to stderr;
/// HYVE_STARTUP_TRACE=1 also prints each start-up phase as milliseconds since that time (or since process entry).
/// </summary>
public static class StartupTrace
{
    // Stopwatch on Linux reads CLOCK_MONOTONIC in ns, the clock the launcher stamps T0 with.
    private static readonly long Origin = ReadOrigin(out _benchT0Set);
    private static readonly bool _benchT0Set;
    private static readonly bool Phases = Environment.GetEnvironmentVariable("HYVE_STARTUP_TRACE") == "1";
    private static long _firstExit;

    /// <summary>True when either variable asked for timings.</summary>
    public static bool Enabled { get; } = _benchT0Set || Phases;

    private static long ReadOrigin(out bool set)
    {
        set = long.TryParse(Environment.GetEnvironmentVariable("HYVE_BENCH_T0"), out long t0) && t0 > 0;
        return set ? t0 : Stopwatch.GetTimestamp();
    }

    /// <summary>Prints a phase timestamp when HYVE_STARTUP_TRACE=1.</summary>
    public static void Mark(string phase)
    {
        if (Phases) Console.Error.WriteLine($"hyve-trace: {ToMs(Stopwatch.GetTimestamp()):F3} ms {phase}");
    }

    /// <summary>Records the first VM exit (only the first call counts; cheap enough for the exit path's first pass).</summary>
    public static void FirstExit()
    {
        if (_firstExit == 0) _firstExit = Stopwatch.GetTimestamp();
    }

    /// <summary>Prints the first exit's monotonic time (ns) and its distance from T0, when asked for.</summary>
    public static void Report()
    {
        if (!Enabled || _firstExit == 0) return;
        Console.Error.WriteLine($"hyve-bench: first-exit-ns={_firstExit} since-t0-ms={ToMs(_firstExit):F3}");
    }

    private static double ToMs(long ts) => (ts - Origin) * 1000.0 / Stopwatch.Frequency;
}
