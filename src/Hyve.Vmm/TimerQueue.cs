// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Hyve.Vmm;

/// <summary>
/// The real clock: monotonic nanoseconds from <see cref="Stopwatch"/> and one scheduler thread that fires
/// every device timer from a single priority queue of deadlines (bhyve's callouts, not a thread per timer).
/// Timers may be started, stopped and re-armed from any thread, including from inside their own callback.
/// A callback receives the deadline it was armed for (as <see cref="ManualClock"/> does), so periodic devices
/// re-arm without accumulating drift. Callbacks run one at a time on the scheduler thread.
/// </summary>
public sealed partial class TimerQueue : IClock, IDisposable
{
    private readonly long _origin = Stopwatch.GetTimestamp();
    private readonly Lock _lock = new();
    // Entries are never removed in place: a re-armed or stopped timer bumps its generation and the old
    // entry is dropped when it reaches the head (or in a compaction when stale entries pile up).
    private readonly PriorityQueue<Entry, (long Deadline, long Seq)> _queue = new();
    private readonly Thread _thread;
    private int _threadStarted;
    private readonly IWaker _waker;
    private long _seq;
    private int _stale;
    private long _sleepUntil = long.MaxValue;
    private bool _disposed;

    /// <summary>Raised on the scheduler thread when a timer callback throws; the scheduler keeps running.</summary>
    public event Action<Exception>? CallbackFailed;

    /// <summary>Creates the clock (time starts at 0 now); its scheduler thread starts with the first armed timer.</summary>
    public TimerQueue()
    {
        _waker = (OperatingSystem.IsLinux() ? FdWaker.TryCreate() : null) ?? (IWaker)new EventWaker();
        // Started lazily: a guest that never programs a timer (and every VM's start-up path) pays no thread start.
        _thread = new Thread(Run) { IsBackground = true, Name = "hyve-timers" };
    }

    /// <inheritdoc/>
    public long NowNs
    {
        get
        {
            long d = Stopwatch.GetTimestamp() - _origin;
            long f = Stopwatch.Frequency;
            return f == 1_000_000_000 ? d : (long)((Int128)d * 1_000_000_000 / f);
        }
    }

    /// <summary>True when waits have nanosecond resolution (Linux eventfd and ppoll) rather than whole milliseconds.</summary>
    public bool NanosecondWaits => _waker is FdWaker;

    /// <summary>Number of queue entries, live and stale (for diagnostics and tests).</summary>
    public int QueueLength { get { lock (_lock) return _queue.Count; } }

    /// <inheritdoc/>
    public ITimer CreateTimer(Action<long> callback)
    {
        ArgumentNullException.ThrowIfNull(callback);
        return new QueueTimer(this, callback);
    }

    /// <summary>Stops the scheduler thread; pending timers never fire and later Start calls are ignored.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
        }
        _waker.Wake();
        if (Volatile.Read(ref _threadStarted) != 0 && Thread.CurrentThread != _thread) _thread.Join();
    }

    private readonly object _callbackGate = new();

    /// <summary>Holds every timer callback until the returned object is disposed (on the same thread): a snapshot saves
    /// devices that timers would otherwise change half-way. Callbacks that fall due meanwhile run late, once.</summary>
    public IDisposable HoldCallbacks()
    {
        Monitor.Enter(_callbackGate);
        return new CallbackHold(_callbackGate);
    }

    private sealed class CallbackHold(object gate) : IDisposable
    {
        private bool _done;
        public void Dispose()
        {
            if (_done) return;
            _done = true;
            Monitor.Exit(gate);
        }
    }

    private void Arm(QueueTimer t, long deadline)
    {
        bool wake;
        lock (_lock)
        {
            if (_disposed) return;
            if (t.Pending) _stale++;
            t.Generation++;
            t.Pending = true;
            t.Deadline = deadline;
            _queue.Enqueue(new Entry(t, t.Generation), (deadline, _seq++));
            // Wake the scheduler only when it sleeps past this deadline; from the scheduler thread itself
            // (a callback re-arming) the loop looks at the queue again anyway.
            wake = deadline < _sleepUntil && Thread.CurrentThread != _thread;
            if (wake) _sleepUntil = deadline;
            if (_stale > 256 && _stale > _queue.Count / 2) Compact();
        }
        if (wake) _waker.Wake();
        if (Volatile.Read(ref _threadStarted) == 0 && Interlocked.Exchange(ref _threadStarted, 1) == 0) _thread.Start();
    }

    private void Disarm(QueueTimer t)
    {
        lock (_lock)
        {
            if (!t.Pending) return;
            t.Pending = false;
            t.Generation++;
            _stale++;
        }
    }

    // Rebuilds the heap from live entries so a device re-arming far ahead many times cannot grow it without bound.
    private void Compact()
    {
        var live = new List<(Entry, (long, long))>(_queue.Count - _stale);
        while (_queue.TryDequeue(out var e, out var p))
            if (e.IsLive) live.Add((e, p));
        foreach (var (e, p) in live) _queue.Enqueue(e, p);
        _stale = 0;
    }

    private void Run()
    {
        try
        {
            while (true)
            {
                QueueTimer? due = null;
                long deadline = 0, waitNs = -1;
                lock (_lock)
                {
                    if (_disposed) return;
                    while (_queue.TryPeek(out var e, out var p))
                    {
                        if (!e.IsLive)
                        {
                            _queue.Dequeue();
                            if (_stale > 0) _stale--;
                            continue;
                        }
                        long now = NowNs;
                        if (p.Deadline <= now)
                        {
                            _queue.Dequeue();
                            e.Timer.Pending = false;
                            due = e.Timer;
                            deadline = p.Deadline;
                        }
                        else waitNs = p.Deadline - now;
                        break;
                    }
                    _sleepUntil = due is not null ? long.MinValue : waitNs < 0 ? long.MaxValue : NowNs + waitNs;
                }
                if (due is not null)
                {
                    lock (_callbackGate)
                    {
                        try { due.Callback(deadline); }
                        catch (Exception ex) { CallbackFailed?.Invoke(ex); }
                    }
                    continue;
                }
                _waker.Wait(waitNs);
            }
        }
        finally
        {
            _waker.Dispose();
        }
    }

    private readonly record struct Entry(QueueTimer Timer, long Generation)
    {
        public bool IsLive => Timer.Pending && Timer.Generation == Generation;
    }

    private sealed class QueueTimer(TimerQueue owner, Action<long> callback) : ITimer
    {
        public readonly Action<long> Callback = callback;
        public long Generation;
        public bool Pending;
        public long Deadline;

        public bool IsPending { get { lock (owner._lock) return Pending; } }
        public long DeadlineNs { get { lock (owner._lock) return Deadline; } }
        public void Start(long deadlineNs) => owner.Arm(this, deadlineNs);
        public void Stop() => owner.Disarm(this);
    }

    private interface IWaker : IDisposable
    {
        void Wake();
        void Wait(long ns);
    }

    // Portable fallback: millisecond-grained waits (Monitor and events take whole milliseconds).
    private sealed class EventWaker : IWaker
    {
        private readonly ManualResetEventSlim _event = new(false);
        public void Wake() => _event.Set();
        public void Wait(long ns)
        {
            if (ns < 0) _event.Wait();
            else _event.Wait((int)Math.Min(int.MaxValue, (ns + 999_999) / 1_000_000));
            _event.Reset();
        }
        public void Dispose() { }
    }

    // Linux: an eventfd to wake the thread and ppoll for a nanosecond-grained timeout, so timers are not
    // rounded to the millisecond that Monitor.Wait would impose.
    private sealed unsafe partial class FdWaker : IWaker
    {
        private const int EfdNonblock = 0x800, EfdCloexec = 0x80000;
        private const short PollIn = 1;
        private readonly Lock _gate = new();
        private int _fd;

        private FdWaker(int fd) => _fd = fd;

        public static FdWaker? TryCreate()
        {
            try
            {
                int fd = EventFd(0, EfdNonblock | EfdCloexec);
                return fd < 0 ? null : new FdWaker(fd);
            }
            catch (DllNotFoundException) { return null; }
            catch (EntryPointNotFoundException) { return null; }
        }

        public void Wake()
        {
            lock (_gate)
            {
                if (_fd < 0) return;
                ulong one = 1;
                _ = Write(_fd, &one, 8);
            }
        }

        public void Wait(long ns)
        {
            var pfd = new PollFd { Fd = _fd, Events = PollIn };
            if (ns < 0) _ = PPoll(&pfd, 1, null, null);
            else
            {
                var ts = new TimeSpec { Sec = ns / 1_000_000_000, Nsec = ns % 1_000_000_000 };
                _ = PPoll(&pfd, 1, &ts, null);
            }
            ulong v;
            _ = Read(_fd, &v, 8);
        }

        public void Dispose()
        {
            lock (_gate)
            {
                if (_fd >= 0) _ = Close(_fd);
                _fd = -1;
            }
        }

        [StructLayout(LayoutKind.Sequential)]
        private struct PollFd { public int Fd; public short Events; public short Revents; }

        [StructLayout(LayoutKind.Sequential)]
        private struct TimeSpec { public long Sec; public long Nsec; }

        [LibraryImport("libc", EntryPoint = "eventfd")]
        private static partial int EventFd(uint initval, int flags);

        [LibraryImport("libc", EntryPoint = "ppoll")]
        private static partial int PPoll(PollFd* fds, nuint nfds, TimeSpec* timeout, void* sigmask);

        [LibraryImport("libc", EntryPoint = "read")]
        private static partial nint Read(int fd, void* buf, nuint count);

        [LibraryImport("libc", EntryPoint = "write")]
        private static partial nint Write(int fd, void* buf, nuint count);

        [LibraryImport("libc", EntryPoint = "close")]
        private static partial int Close(int fd);
    }
}
