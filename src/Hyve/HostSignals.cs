// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve;

/// <summary>Signal dispositions hyve sets for itself before anything else.</summary>
public static partial class HostSignals
{
    private const int SigXfsz = 25;
    private static readonly nint SigIgn = 1;

    /// <summary>
    /// Ignores SIGXFSZ, so that a write past RLIMIT_FSIZE (ulimit -f) fails with EFBIG and reaches the code that wrote
    /// it: a snapshot then fails with its one-line reason and the VM goes on, a console log counts what it dropped,
    /// and guest memory that cannot be sized ends start-up with status 4. By default the signal would kill hyve
    /// mid-write, leaving a control socket and a half-written file behind.
    /// </summary>
    public static void IgnoreFileSizeLimitSignal() => signal(SigXfsz, SigIgn);

    [LibraryImport("libc")]
    private static partial nint signal(int sig, nint handler);
}
