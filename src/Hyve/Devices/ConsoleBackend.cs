// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Devices;

/// <summary>
/// The common half of the host console backends. Output: the vCPU only ever appends to a bounded buffer
/// (<see cref="OutputCapacity"/> bytes) and never waits; an output thread writes it to the host at newlines, when
/// <see cref="OutputChunk"/> bytes are pending, shortly after the last byte and on flush. When the host side stalls
/// (a pipe or FIFO nobody reads, a socket client that never reads) the buffer fills and further guest output is
/// dropped and counted (<see cref="Dropped"/>, shown by <c>hyvectl --get-stats</c>), as QEMU's non-blocking character
/// devices do, so a stalled console never stalls the VM, its control socket or its signals. Input: a thread that
/// blocks on the host side and hands bytes to the receiver only as fast as the receiver takes them.
/// </summary>
public abstract class ConsoleBackend : IConsoleBackend
{
    /// <summary>Most output bytes held for a slow host reader; beyond this, guest output is dropped and counted.</summary>
    public const int OutputCapacity = 64 * 1024;

    /// <summary>Pending bytes that wake the output thread without waiting for a newline (also its largest write).</summary>
    public const int OutputChunk = 4096;

    /// <summary>How long output without a newline (a shell prompt, an echoed key) waits before it is written.</summary>
    public const int FlushDelayMs = 5;

    /// <summary>How long <see cref="Flush"/> and disposal wait for a stalled host reader before giving up on the rest.</summary>
    public const int FlushWaitMs = 300;

    // Live backends, so output still buffered when the process exits (any path) is written out.
    private static readonly object LiveGate = new();
    private static readonly HashSet<ConsoleBackend> Live = [];
    private static bool _exitHooked;
    private static long _totalDropped;

    private readonly object _outLock = new();
    private readonly byte[] _ring = new byte[OutputCapacity];
    private int _head, _count;
    private long _dropped;
    private bool _writing;
    private Thread? _writer;
    private readonly AutoResetEvent _wake = new(false);
    private readonly ManualResetEventSlim _drained = new(true);
    private Timer? _flushTimer;
    private bool _timerArmed;
    private volatile bool _outputClosed;

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

    /// <summary>Writes out the buffered output of every live backend (also done automatically at process exit);
    /// waits at most <see cref="FlushWaitMs"/> for each.</summary>
    public static void FlushAll()
    {
        ConsoleBackend[] live;
        lock (LiveGate) live = [.. Live];
        foreach (var b in live) b.Flush();
    }

    /// <inheritdoc/>
    public bool OutputFull => Volatile.Read(ref _count) >= OutputCapacity;

    /// <summary>Guest output bytes this backend dropped because the host did not take them.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Guest output bytes dropped by every console backend of this process.</summary>
    public static long TotalDropped => Interlocked.Read(ref _totalDropped);

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
        bool wake = false;
        lock (_outLock)
        {
            if (_outputClosed) return;
            if (_count == OutputCapacity)
            {
                Interlocked.Increment(ref _dropped);
                Interlocked.Increment(ref _totalDropped);
                return;
            }
            _ring[(_head + _count) % OutputCapacity] = value;
            _count++;
            _drained.Reset();
            if (value == (byte)'\n' || _count >= OutputChunk) wake = true;
            else if (!_timerArmed)
            {
                _timerArmed = true;
                _flushTimer ??= new Timer(static s => ((ConsoleBackend)s!).OnFlushTimer(), this, Timeout.Infinite, Timeout.Infinite);
                _flushTimer.Change(FlushDelayMs, Timeout.Infinite);
            }
            if (_writer is null)
            {
                _writer = new Thread(WriterLoop) { IsBackground = true, Name = "hyve console output" };
                _writer.Start();
            }
        }
        if (wake) _wake.Set();
    }

    /// <inheritdoc/>
    public void Flush()
    {
        lock (_outLock)
        {
            if (_count == 0 && !_writing) return;
        }
        _wake.Set();
        _drained.Wait(FlushWaitMs);
    }

    /// <inheritdoc/>
    public void ReceiverHasRoom() => _room.Set();

    /// <summary>Writes guest output to the host, on the output thread; may block. Errors are the backend's to swallow
    /// (the reader went away); it should give up once <see cref="Stopping"/> is set.</summary>
    protected abstract void WriteOutput(ReadOnlySpan<byte> data);

    /// <summary>Blocks until host input arrives and copies it into <paramref name="buffer"/>; returns the count, or 0 when
    /// input has ended for good (end of file, or <see cref="Stopping"/>).</summary>
    protected virtual int ReadInput(Span<byte> buffer) => 0;

    /// <summary>Unblocks a <see cref="ReadInput"/> in progress so disposal can finish.</summary>
    protected virtual void WakeInput() { }

    private void OnFlushTimer()
    {
        lock (_outLock) _timerArmed = false;
        _wake.Set();
    }

    // The output thread: the only place guest output meets a host write, which may block as long as it likes.
    private void WriterLoop()
    {
        var chunk = new byte[OutputChunk];
        while (true)
        {
            _wake.WaitOne();
            while (true)
            {
                int n;
                lock (_outLock)
                {
                    n = Math.Min(_count, chunk.Length);
                    for (int i = 0; i < n; i++) chunk[i] = _ring[(_head + i) % OutputCapacity];
                    _head = (_head + n) % OutputCapacity;
                    _count -= n;
                    _writing = n > 0;
                    if (n == 0)
                    {
                        _drained.Set();
                        if (_outputClosed) return;
                        break;
                    }
                }
                try
                {
                    WriteOutput(chunk.AsSpan(0, n));
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or System.Net.Sockets.SocketException or InvalidOperationException)
                {
                    // The host side went away or refused the bytes (a full disk, a file-size limit): the chunk is
                    // dropped, as a serial line with nothing attached drops it, and counted with the rest.
                    Interlocked.Add(ref _dropped, n);
                    Interlocked.Add(ref _totalDropped, n);
                }
            }
        }
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
        Flush();
        lock (_outLock)
        {
            _outputClosed = true;
            _flushTimer?.Dispose();
        }
        _wake.Set();
        WakeInput();
        _room.Set();
        if (_pump is not null && _pump != Thread.CurrentThread) _pump.Join(2000);
    }
}
