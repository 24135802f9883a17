// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm;

/// <summary>
/// The VM's one time source and timer scheduler. Every timer device (PIT, RTC, HPET, LAPIC timer,
/// PM timer) reads time here and arms timers here, so their state can be saved and restored together.
/// </summary>
public interface IClock
{
    /// <summary>Monotonic time in nanoseconds since the clock was created.</summary>
    long NowNs { get; }

    /// <summary>Creates a timer that calls <paramref name="callback"/> with the firing time when its deadline passes.
    /// Callbacks run on the scheduler's thread (or inside <see cref="ManualClock.Advance"/>); devices take their own lock.</summary>
    ITimer CreateTimer(Action<long> callback);
}

/// <summary>A one-shot timer owned by a device; periodic devices re-arm it from the callback.</summary>
public interface ITimer
{
    /// <summary>Arms (or re-arms) the timer for an absolute deadline in clock nanoseconds.</summary>
    void Start(long deadlineNs);

    /// <summary>Disarms the timer; a callback already running may still complete.</summary>
    void Stop();

    /// <summary>True while armed and not yet fired.</summary>
    bool IsPending { get; }

    /// <summary>The armed deadline (meaningful while <see cref="IsPending"/>).</summary>
    long DeadlineNs { get; }
}

/// <summary>A clock that only moves when told to: for tests of timer devices against their datasheets.</summary>
public sealed class ManualClock : IClock
{
    private readonly List<ManualTimer> _timers = [];

    /// <inheritdoc/>
    public long NowNs { get; private set; }

    /// <inheritdoc/>
    public ITimer CreateTimer(Action<long> callback)
    {
        var t = new ManualTimer(callback);
        _timers.Add(t);
        return t;
    }

    /// <summary>Moves time forward by <paramref name="ns"/>, firing every timer that falls due, in deadline order,
    /// each at its own deadline (so a periodic timer re-armed from its callback fires again within the same advance).</summary>
    public void Advance(long ns)
    {
        long end = NowNs + ns;
        while (true)
        {
            ManualTimer? next = null;
            foreach (var t in _timers)
                if (t.IsPending && t.DeadlineNs <= end && (next is null || t.DeadlineNs < next.DeadlineNs)) next = t;
            if (next is null) break;
            NowNs = Math.Max(NowNs, next.DeadlineNs);
            next.IsPending = false;
            next.Callback(NowNs);
        }
        NowNs = end;
    }

    /// <summary>Moves time forward by <paramref name="ns"/> without firing anything, as the VM's clock does while a
    /// snapshot holds its callbacks (what falls due fires at the next <see cref="Advance"/>).</summary>
    public void AdvanceHeld(long ns) => NowNs += ns;

    private sealed class ManualTimer(Action<long> callback) : ITimer
    {
        public readonly Action<long> Callback = callback;
        public bool IsPending { get; set; }
        public long DeadlineNs { get; private set; }
        public void Start(long deadlineNs) { DeadlineNs = deadlineNs; IsPending = true; }
        public void Stop() => IsPending = false;
    }
}
