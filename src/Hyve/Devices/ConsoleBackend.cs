// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Devices;

/// <summary>
/// The common half of the host console backends: an output buffer flushed at newlines, when full, shortly after
/// the last byte and on dispose; and an input thread that blocks on the host side and hands bytes to the receiver
/// only as fast as the receiver takes them.
/// </summary>
public abstract class ConsoleBackend : IConsoleBackend
{
    /// <summary>Output buffer size: a guest printing a long burst causes one host write per line or per this many bytes.</summary>
    public const int OutputBufferSize = 4096;

    /// <summary>How long output without a newline (a shell prompt, an echoed key) waits before it is written.</summary>
    public const int FlushDelayMs = 5;

    // Live backends, so output still buffered when the process exits (any path) is written out.
    private static readonly object LiveGate = new();
    private static readonly HashSet<ConsoleBackend> Live = [];
    private static bool _exitHooked;

    private readonly object _outLock = new();
    private readonly byte[] _out = new byte[OutputBufferSize];
    private int _outLen;
    private Timer? _flushTimer;
    private bool _timerArmed;
    private bool _outputClosed;

    private IConsoleReceiver? _receiver;
    private Thread? _pump;
    private readonly ManualResetEventSlim _room = new(false);
    private volatile bool _stopping;

    /// <summary>Registers the backend so <see cref="FlushAll"/> and process exit reach it.</summary>
    protected ConsoleBackend()
    {
        lock (LiveGate)
        {
            Live.Add(this);
            if (!_exitHooked)
            {
                _exitHooked = true;
                AppDomain.CurrentDomain.ProcessExit += static (_, _) => FlushAll();
            }
        }
    }

    /// <summary>Writes out the buffered output of every live backend (also done automatically at process exit).</summary>
    public static void FlushAll()
    {
        ConsoleBackend[] live;
        lock (LiveGate) live = [.. Live];
        foreach (var b in live) b.Flush();
    }

    /// <summary>True once disposal has begun; the input thread checks it to stop.</summary>
    protected bool Stopping => _stopping;

    /// <inheritdoc/>
    public abstract bool HasInput { get; }

    /// <inheritdoc/>
    public void Attach(IConsoleReceiver receiver)
    {
        ArgumentNullException.ThrowIfNull(receiver);
        if (Interlocked.CompareExchange(ref _receiver, receiver, null) is not null)
            throw new InvalidOperationException("console backend already attached to a device");
        if (!HasInput || _stopping) return;
        _pump = new Thread(PumpLoop) { IsBackground = true, Name = "hyve console input" };
        _pump.Start();
    }

    /// <inheritdoc/>
    public void Write(byte value)
    {
        lock (_outLock)
        {
            _out[_outLen++] = value;
            if (value == (byte)'\n' || _outLen == _out.Length)
            {
                FlushLocked();
            }
            else if (!_timerArmed && !_outputClosed)
            {
                _timerArmed = true;
                _flushTimer ??= new Timer(static s => ((ConsoleBackend)s!).OnFlushTimer(), this, Timeout.Infinite, Timeout.Infinite);
                _flushTimer.Change(FlushDelayMs, Timeout.Infinite);
            }
        }
    }

    /// <inheritdoc/>
    public void Flush()
    {
        lock (_outLock) FlushLocked();
    }

    /// <inheritdoc/>
    public void ReceiverHasRoom() => _room.Set();

    /// <summary>Writes guest output to the host; may block. Errors are the backend's to swallow (the reader went away).</summary>
    protected abstract void WriteOutput(ReadOnlySpan<byte> data);

    /// <summary>Blocks until host input arrives and copies it into <paramref name="buffer"/>; returns the count, or 0 when
    /// input has ended for good (end of file, or <see cref="Stopping"/>).</summary>
    protected virtual int ReadInput(Span<byte> buffer) => 0;

    /// <summary>Unblocks a <see cref="ReadInput"/> in progress so disposal can finish.</summary>
    protected virtual void WakeInput() { }

    private void OnFlushTimer()
    {
        lock (_outLock)
        {
            _timerArmed = false;
            FlushLocked();
        }
    }

    private void FlushLocked()
    {
        if (_outLen == 0) return;
        if (!_outputClosed)
        {
            try
            {
                WriteOutput(_out.AsSpan(0, _outLen));
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or System.Net.Sockets.SocketException)
            {
                // The host side went away; guest output is dropped, as a serial line with nothing attached drops it.
            }
        }
        _outLen = 0;
    }

    private void PumpLoop()
    {
        var buffer = new byte[256];
        while (!_stopping)
        {
            int n;
            try
            {
                n = ReadInput(buffer);
            }
            catch (Exception) when (_stopping)
            {
                break;
            }
            if (n <= 0) break;
            int offset = 0;
            while (offset < n && !_stopping)
            {
                // Reset before offering: a guest read that makes room between Offer and Wait still wakes us.
                _room.Reset();
                offset += _receiver!.Offer(buffer.AsSpan(offset, n - offset));
                if (offset < n) _room.Wait(50);
            }
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Flushes output, stops the input thread, then lets the derived class release its host resources.</summary>
    protected virtual void Dispose(bool disposing)
    {
        if (_stopping) return;
        _stopping = true;
        lock (LiveGate) Live.Remove(this);
        lock (_outLock)
        {
            FlushLocked();
            _outputClosed = true;
            _flushTimer?.Dispose();
        }
        WakeInput();
        _room.Set();
        if (_pump is not null && _pump != Thread.CurrentThread) _pump.Join(2000);
    }
}
