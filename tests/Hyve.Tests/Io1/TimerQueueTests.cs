// SPDX-License-Identifier: BSD-2-Clause
using System.Collections.Concurrent;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Io1;

public class TimerQueueTests
{
    private const long Ms = 1_000_000;

    [Fact]
    public void NowIsMonotonicNanoseconds()
    {
        using var q = new TimerQueue();
        long a = q.NowNs;
        Thread.Sleep(20);
        long b = q.NowNs;
        Assert.InRange(b - a, 15 * Ms, 2000 * Ms);
    }

    [Fact]
    public void TimersFireInDeadlineOrderNotBeforeTheirDeadline()
    {
        using var q = new TimerQueue();
        var fired = new ConcurrentQueue<(int Id, long Deadline, long At)>();
        using var done = new CountdownEvent(3);
        long now = q.NowNs;
        var deadlines = new[] { now + 300 * Ms, now + 100 * Ms, now + 200 * Ms };
        for (int i = 0; i < 3; i++)
        {
            int id = i;
            var t = q.CreateTimer(d => { fired.Enqueue((id, d, q.NowNs)); done.Signal(); });
            t.Start(deadlines[i]);
        }
        Assert.True(done.Wait(5000));
        var list = fired.ToArray();
        Assert.Equal([1, 2, 0], list.Select(f => f.Id).ToArray());
        foreach (var f in list)
        {
            Assert.Equal(deadlines[f.Id], f.Deadline);
            Assert.InRange(f.At - f.Deadline, 0, 500 * Ms);
        }
    }

    [Fact]
    public void SubMillisecondTimersAreNotRoundedToMilliseconds()
    {
        using var q = new TimerQueue();
        if (OperatingSystem.IsLinux()) Assert.True(q.NanosecondWaits);
        if (!q.NanosecondWaits) return;
        // Median lateness of 200 us timers: well under a millisecond unless the host is badly overloaded.
        var late = new List<long>();
        for (int i = 0; i < 21; i++)
        {
            using var done = new ManualResetEventSlim();
            long fired = 0;
            long deadline = q.NowNs + 200_000;
            q.CreateTimer(_ => { fired = q.NowNs; done.Set(); }).Start(deadline);
            Assert.True(done.Wait(5000));
            late.Add(fired - deadline);
        }
        late.Sort();
        Assert.InRange(late[10], 0, 5 * Ms);
    }

    [Fact]
    public void PeriodicReArmFromCallback()
    {
        using var q = new TimerQueue();
        int count = 0;
        using var done = new ManualResetEventSlim();
        Hyve.Vmm.ITimer? t = null;
        t = q.CreateTimer(d =>
        {
            if (++count == 20) done.Set();
            else t!.Start(d + 2 * Ms);
        });
        long start = q.NowNs;
        t.Start(start + 2 * Ms);
        Assert.True(done.Wait(5000));
        Assert.InRange(q.NowNs - start, 40 * Ms, 3000 * Ms);
        Assert.False(t.IsPending);
    }

    [Fact]
    public void StopPreventsFiringAndReArmEarlierWakesTheScheduler()
    {
        using var q = new TimerQueue();
        int stoppedFired = 0;
        var stopped = q.CreateTimer(_ => Interlocked.Increment(ref stoppedFired));
        stopped.Start(q.NowNs + 30 * Ms);
        stopped.Stop();
        Assert.False(stopped.IsPending);

        using var done = new ManualResetEventSlim();
        var late = q.CreateTimer(_ => { });
        late.Start(q.NowNs + 10_000 * Ms);        // the scheduler sleeps toward this one
        Thread.Sleep(10);
        var t = q.CreateTimer(_ => done.Set());
        long armed = q.NowNs;
        t.Start(armed + 5 * Ms);
        Assert.True(done.Wait(5000));
        Assert.InRange(q.NowNs - armed, 5 * Ms, 1000 * Ms);
        Thread.Sleep(60);
        Assert.Equal(0, stoppedFired);
        Assert.True(late.IsPending);
    }

    [Fact]
    public void ReArmMovesTheDeadlineInsteadOfAddingOne()
    {
        using var q = new TimerQueue();
        int fires = 0;
        using var done = new ManualResetEventSlim();
        var t = q.CreateTimer(_ => { Interlocked.Increment(ref fires); done.Set(); });
        for (int i = 0; i < 10_000; i++) t.Start(q.NowNs + 1000 * Ms); // many re-arms far ahead
        Assert.InRange(q.QueueLength, 1, 2000);                         // stale entries are compacted
        t.Start(q.NowNs + 5 * Ms);
        Assert.True(done.Wait(5000));
        Thread.Sleep(30);
        Assert.Equal(1, fires);
    }

    [Fact]
    public void ArmingFromManyThreads()
    {
        using var q = new TimerQueue();
        int fires = 0;
        using var done = new CountdownEvent(400);
        var threads = Enumerable.Range(0, 4).Select(_ => new Thread(() =>
        {
            for (int i = 0; i < 100; i++)
            {
                var t = q.CreateTimer(_ => { Interlocked.Increment(ref fires); done.Signal(); });
                t.Start(q.NowNs + Random.Shared.Next(1, 20) * Ms);
            }
        })).ToList();
        threads.ForEach(th => th.Start());
        threads.ForEach(th => th.Join());
        Assert.True(done.Wait(10_000));
        Assert.Equal(400, fires);
    }

    [Fact]
    public void ThrowingCallbackDoesNotStopTheScheduler()
    {
        using var q = new TimerQueue();
        Exception? seen = null;
        q.CallbackFailed += ex => seen = ex;
        q.CreateTimer(_ => throw new InvalidOperationException("boom")).Start(q.NowNs + Ms);
        using var done = new ManualResetEventSlim();
        q.CreateTimer(_ => done.Set()).Start(q.NowNs + 10 * Ms);
        Assert.True(done.Wait(5000));
        Assert.IsType<InvalidOperationException>(seen);
    }

    [Fact]
    public void DisposeStopsTheThread()
    {
        var q = new TimerQueue();
        int fires = 0;
        var t = q.CreateTimer(_ => Interlocked.Increment(ref fires));
        t.Start(q.NowNs + 30 * Ms);
        q.Dispose();
        Thread.Sleep(60);
        Assert.Equal(0, fires);
        t.Start(q.NowNs + Ms);                  // ignored after dispose
        Thread.Sleep(20);
        Assert.Equal(0, fires);
        q.Dispose();
    }

    [Fact]
    public void DisposeFromACallback()
    {
        var q = new TimerQueue();
        using var done = new ManualResetEventSlim();
        q.CreateTimer(_ => { q.Dispose(); done.Set(); }).Start(q.NowNs + Ms);
        Assert.True(done.Wait(5000));
    }
}
