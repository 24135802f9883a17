// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.Devices;

/// <summary>
/// Puts a terminal into raw mode while the guest owns it (as bhyve's uart_emul.c ttyopen: cfmakeraw plus CLOCAL)
/// and puts it back on every way out: <see cref="RestoreTerminal"/>, process exit, SIGTERM, SIGINT, SIGHUP, SIGQUIT
/// and an unhandled exception. One terminal at a time; restoring twice is harmless.
/// </summary>
public static unsafe class ConsoleTerminal
{
    private static readonly object Gate = new();
    private static byte[]? _saved;
    private static int _fd = -1;
    private static bool _hooked;
    private static readonly List<PosixSignalRegistration> Registrations = [];

    /// <summary>Set while the machine turns these signals into a guest shutdown (the terminal is then restored when
    /// the VM has ended, not when the signal arrives); otherwise a signal restores it before the default action.</summary>
    public static volatile bool SignalsHandledByMachine;

    /// <summary>True while a terminal is in raw mode because of hyve.</summary>
    public static bool IsRaw
    {
        get { lock (Gate) return _saved is not null; }
    }

    /// <summary>Switches terminal <paramref name="fd"/> to raw mode, remembering its settings. False (and nothing changed)
    /// when <paramref name="fd"/> is not a terminal or another terminal is already raw.</summary>
    public static bool MakeRaw(int fd)
    {
        lock (Gate)
        {
            if (_saved is not null || ConsoleNative.isatty(fd) != 1) return false;
            byte* original = stackalloc byte[64];
            byte* raw = stackalloc byte[64];
            new Span<byte>(original, 64).Clear();
            if (ConsoleNative.tcgetattr(fd, original) != 0) return false;
            new Span<byte>(original, 64).CopyTo(new Span<byte>(raw, 64));
            ConsoleNative.cfmakeraw(raw);
            // CLOCAL: ignore modem control lines, so a terminal without carrier does not block or hang up the VM.
            *(uint*)(raw + ConsoleNative.TermiosCflagOffset) |= ConsoleNative.CLOCAL;
            if (ConsoleNative.tcsetattr(fd, ConsoleNative.TCSANOW, raw) != 0) return false;
            _saved = new Span<byte>(original, 64).ToArray();
            _fd = fd;
            HookExitPaths();
            return true;
        }
    }

    /// <summary>Puts the terminal back as it was before <see cref="MakeRaw"/>. Safe to call at any time and more than once.</summary>
    public static void RestoreTerminal()
    {
        lock (Gate)
        {
            if (_saved is null) return;
            fixed (byte* p = _saved) ConsoleNative.tcsetattr(_fd, ConsoleNative.TCSANOW, p);
            _saved = null;
            _fd = -1;
        }
    }

    private static void HookExitPaths()
    {
        if (_hooked) return;
        _hooked = true;
        AppDomain.CurrentDomain.ProcessExit += static (_, _) => RestoreTerminal();
        AppDomain.CurrentDomain.UnhandledException += static (_, _) => RestoreTerminal();
        // The handlers do not cancel the signal, so the default action (terminating hyve) still follows.
        foreach (var signal in new[] { PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGHUP, PosixSignal.SIGQUIT, (PosixSignal)10 /* SIGUSR1 */ })
        {
            try
            {
                Registrations.Add(PosixSignalRegistration.Create(signal, static ctx =>
                {
                    if (SignalsHandledByMachine || ctx.Cancel) return;
                    RestoreTerminal();
                    Hyve.Vmm.Control.RunFiles.DeleteAllOwnSockets();
                }));
            }
            catch (PlatformNotSupportedException)
            {
                // Not every signal can be hooked everywhere; the others still restore the terminal.
            }
        }
    }
}
