// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Virtio;

/// <summary>
/// An I/O thread: an epoll loop over eventfds, each with a handler that runs on this thread. A virtio device
/// registers one eventfd per queue; the vCPU's notify write only signals the eventfd (on KVM the kernel does it
/// through an ioeventfd), so a vCPU never waits for a disk or a socket. Handlers must not throw; one that does
/// is reported on stderr once and the loop goes on.
/// </summary>
public sealed unsafe class VirtioIoThread : IDisposable
{
    private const ulong StopCookie = ulong.MaxValue;
    private readonly int _epoll;
    private readonly int _stop;
    private readonly List<(int Fd, Action Handler)> _handlers = [];
    private Thread? _thread;
    private volatile bool _stopping;

    /// <summary>Creates the loop (not yet running); <paramref name="name"/> names the thread.</summary>
    public VirtioIoThread(string name)
    {
        Name = name;
        _epoll = VirtioNative.EpollCreate1(VirtioNative.CloExec);
        if (_epoll < 0) throw new HostConfigException($"{name}: epoll_create1: {VirtioNative.LastError()}");
        _stop = VirtioNative.EventFd(0, VirtioNative.EfdNonBlock | VirtioNative.CloExec);
        if (_stop < 0) throw new HostConfigException($"{name}: eventfd: {VirtioNative.LastError()}");
        AddFd(_stop, StopCookie);
    }

    /// <summary>The thread's name.</summary>
    public string Name { get; }

    /// <summary>Creates a non-blocking eventfd whose signals run <paramref name="handler"/> on this thread; returns the fd.</summary>
    public int AddEventFd(Action handler)
    {
        int fd = VirtioNative.EventFd(0, VirtioNative.EfdNonBlock | VirtioNative.CloExec);
        if (fd < 0) throw new HostConfigException($"{Name}: eventfd: {VirtioNative.LastError()}");
        AddFd(fd, (ulong)_handlers.Count);
        _handlers.Add((fd, handler));
        return fd;
    }

    /// <summary>Watches another readable fd (a socket, a terminal); <paramref name="handler"/> runs while it is readable,
    /// or, with <paramref name="edgeTriggered"/> (EPOLLET), each time new data arrives (the handler reads until EAGAIN or
    /// until it must wait for something else that will call it again, such as a tap waiting for guest buffers).</summary>
    public void AddReadable(int fd, Action handler, bool edgeTriggered = false)
    {
        AddFd(fd, (ulong)_handlers.Count, edgeTriggered ? VirtioNative.EpollEt : 0);
        _handlers.Add((-1, handler));
    }

    private void AddFd(int fd, ulong cookie, uint extra = 0)
    {
        var ev = new EpollEvent { Events = VirtioNative.EpollIn | extra, Data = cookie };
        if (VirtioNative.EpollCtl(_epoll, VirtioNative.EpollCtlAdd, fd, &ev) != 0)
            throw new HostConfigException($"{Name}: epoll_ctl: {VirtioNative.LastError()}");
    }

    /// <summary>Starts the thread (once; later calls do nothing).</summary>
    public void Start()
    {
        if (_thread is not null) return;
        _thread = new Thread(Loop) { IsBackground = true, Name = Name };
        _thread.Start();
    }

    private void Loop()
    {
        var events = stackalloc EpollEvent[16];
        while (!_stopping)
        {
            int n = VirtioNative.EpollWait(_epoll, events, 16, -1);
            if (n < 0) continue; // EINTR
            for (int i = 0; i < n && !_stopping; i++)
            {
                ulong cookie = events[i].Data;
                if (cookie == StopCookie) return;
                var (fd, handler) = _handlers[(int)cookie];
                if (fd >= 0) VirtioNative.Drain(fd);
                try { handler(); }
                catch (Exception e)
                {
                    // A host-side failure (the device code's own bug); the guest is never the cause, as its
                    // mistakes are checked and answered inside the handler.
                    Console.Error.WriteLine($"hyve: {Name}: {e.GetType().Name}: {e.Message}");
                }
            }
        }
    }

    /// <summary>Stops the thread and closes the eventfds.</summary>
    public void Dispose()
    {
        _stopping = true;
        VirtioNative.Signal(_stop);
        if (_thread is not null && _thread != Thread.CurrentThread) _thread.Join(2000);
        foreach (var (fd, _) in _handlers) if (fd >= 0) VirtioNative.Close(fd);
        VirtioNative.Close(_stop);
        VirtioNative.Close(_epoll);
    }
}
