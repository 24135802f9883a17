// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.Devices;

/// <summary>
/// A console on host file descriptors: <c>stdio</c> (stdin and stdout) or a character device such as a pty or tty.
/// A terminal on the input side is put in raw mode for as long as the backend lives (bhyve's ttyopen); for stdio the
/// original settings come back on dispose and on every process exit path (see <see cref="ConsoleTerminal"/>).
/// Input is read by a background thread that sleeps in poll(2) on the descriptor and a wake-up pipe.
/// </summary>
public sealed unsafe class FdConsoleBackend : ConsoleBackend
{
    private readonly int _in;
    private readonly int _out;
    private readonly bool _ownsFds;
    private readonly bool _restoreTerminal;
    private readonly int _wakeRead = -1;
    private readonly int _wakeWrite = -1;

    /// <summary>Wraps <paramref name="inFd"/> (or -1 for no input) and <paramref name="outFd"/>.
    /// With <paramref name="makeRaw"/>, a terminal input is switched to raw mode and restored on dispose.</summary>
    public FdConsoleBackend(int inFd, int outFd, bool ownsFds, bool makeRaw)
    {
        _in = inFd;
        _out = outFd;
        _ownsFds = ownsFds;
        if (inFd >= 0)
        {
            int* fds = stackalloc int[2];
            if (ConsoleNative.pipe2(fds, ConsoleNative.O_CLOEXEC | ConsoleNative.O_NONBLOCK) != 0)
                throw new IOException($"pipe2 failed (errno {Marshal.GetLastPInvokeError()})");
            _wakeRead = fds[0];
            _wakeWrite = fds[1];
            if (makeRaw) _restoreTerminal = ConsoleTerminal.MakeRaw(inFd);
        }
    }

    /// <summary>The <c>stdio</c> backend: guest input from fd 0 (raw mode if it is a terminal), output to fd 1.</summary>
    public static FdConsoleBackend OpenStdio() => new(0, 1, ownsFds: false, makeRaw: true);

    /// <summary>A character device (a tty or pty) opened read-write, in raw mode if it is a terminal. Throws IOException when it cannot be opened.</summary>
    public static FdConsoleBackend OpenDevice(string path)
    {
        int fd = ConsoleNative.open(path, ConsoleNative.O_RDWR | ConsoleNative.O_NOCTTY | ConsoleNative.O_NONBLOCK | ConsoleNative.O_CLOEXEC, 0);
        if (fd < 0) throw new IOException($"cannot open {path}: errno {Marshal.GetLastPInvokeError()}");
        // bhyve puts a tty backend in raw mode too, but never restores it; hyve does the same for devices.
        if (ConsoleNative.isatty(fd) == 1) SetRawUntracked(fd);
        return new FdConsoleBackend(fd, fd, ownsFds: true, makeRaw: false);
    }

    /// <inheritdoc/>
    public override bool HasInput => _in >= 0;

    /// <inheritdoc/>
    protected override void WriteOutput(ReadOnlySpan<byte> data) => ConsoleNative.WriteAll(_out, data, () => Stopping);

    /// <summary>A FIFO (named pipe) for guest output. Opened read-write and non-blocking, so start-up never waits for a
    /// reader (a write-only open would block until one comes); output waits in the pipe, and past the pipe's and the
    /// backend's buffers it is dropped and counted, never blocking the VM.</summary>
    public static FdConsoleBackend OpenFifo(string path)
    {
        int fd = ConsoleNative.open(path, ConsoleNative.O_RDWR | ConsoleNative.O_NONBLOCK | ConsoleNative.O_CLOEXEC, 0);
        if (fd < 0) throw new IOException($"cannot open the FIFO {path}: {Hyve.Vmm.Native.Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
        return new FdConsoleBackend(-1, fd, ownsFds: true, makeRaw: false);
    }

    /// <inheritdoc/>
    protected override int ReadInput(Span<byte> buffer)
    {
        var pfd = stackalloc ConsoleNative.PollFd[2];
        while (!Stopping)
        {
            pfd[0] = new ConsoleNative.PollFd { Fd = _in, Events = ConsoleNative.POLLIN };
            pfd[1] = new ConsoleNative.PollFd { Fd = _wakeRead, Events = ConsoleNative.POLLIN };
            int r = ConsoleNative.poll(pfd, 2, -1);
            if (r < 0)
            {
                if (Marshal.GetLastPInvokeError() == ConsoleNative.EINTR) continue;
                return 0;
            }
            if (pfd[1].Revents != 0 || Stopping) return 0;
            if (pfd[0].Revents == 0) continue;
            if ((pfd[0].Revents & ConsoleNative.POLLNVAL) != 0) return 0;
            fixed (byte* p = buffer)
            {
                nint n = ConsoleNative.read(_in, p, buffer.Length);
                if (n > 0) return (int)n;
                if (n == 0) return 0; // end of input: the host closed it
                int errno = Marshal.GetLastPInvokeError();
                if (errno is ConsoleNative.EINTR or ConsoleNative.EAGAIN) continue;
                return 0;
            }
        }
        return 0;
    }

    /// <inheritdoc/>
    protected override void WakeInput()
    {
        if (_wakeWrite < 0) return;
        byte b = 1;
        ConsoleNative.write(_wakeWrite, &b, 1);
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (Stopping) return;
        base.Dispose(disposing);
        if (_restoreTerminal) ConsoleTerminal.RestoreTerminal();
        if (_wakeRead >= 0) ConsoleNative.close(_wakeRead);
        if (_wakeWrite >= 0) ConsoleNative.close(_wakeWrite);
        if (_ownsFds)
        {
            if (_in >= 0) ConsoleNative.close(_in);
            if (_out >= 0 && _out != _in) ConsoleNative.close(_out);
        }
    }

    private static void SetRawUntracked(int fd)
    {
        byte* t = stackalloc byte[64];
        new Span<byte>(t, 64).Clear();
        if (ConsoleNative.tcgetattr(fd, t) != 0) return;
        ConsoleNative.cfmakeraw(t);
        *(uint*)(t + ConsoleNative.TermiosCflagOffset) |= ConsoleNative.CLOCAL;
        ConsoleNative.tcsetattr(fd, ConsoleNative.TCSANOW, t);
    }
}
