// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Hyve.Virtio;

namespace Hyve.Net;

/// <summary>One <c>hostfwd</c> rule: <c>[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport</c> (bhyve's and QEMU's syntax).</summary>
public readonly record struct HostForward(bool Udp, IPAddress HostAddress, int HostPort, IPAddress GuestAddress, int GuestPort)
{
    /// <summary>Parses one rule; throws <see cref="HostConfigException"/> with the rule in the message.</summary>
    public static HostForward Parse(string rule)
    {
        ArgumentNullException.ThrowIfNull(rule);
        var bad = new HostConfigException($"slirp: invalid hostfwd rule '{rule}' (want [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport)");
        int c = rule.IndexOf(':');
        int dash = rule.IndexOf('-');
        if (c < 0 || dash < c) throw bad;
        string proto = rule[..c];
        if (proto is not ("tcp" or "udp" or "")) throw bad;
        var (ha, hp) = Endpoint(rule[(c + 1)..dash], bad);
        var (ga, gp) = Endpoint(rule[(dash + 1)..], bad);
        if (hp == 0 || gp == 0) throw bad;
        return new HostForward(proto == "udp", ha, hp, ga, gp);
    }

    private static (IPAddress, int) Endpoint(string s, Exception bad)
    {
        int c = s.LastIndexOf(':');
        if (c < 0) throw bad;
        var addr = IPAddress.Any;
        if (c > 0 && (!IPAddress.TryParse(s[..c], out addr!) || addr.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)) throw bad;
        if (!int.TryParse(s.AsSpan(c + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port > 65535) throw bad;
        return (addr, port);
    }
}

/// <summary>
/// User-mode networking through Debian's libslirp (bhyve's net_backend_slirp.c, QEMU's <c>-netdev user</c>): the guest's
/// frames go into libslirp's TCP/IP stack, which opens ordinary host sockets for its connections, so no privilege is
/// needed. The guest network is libslirp's default, as QEMU sets it: 10.0.2.0/24, the host (its loopback too) at 10.0.2.2,
/// DNS at 10.0.2.3, DHCP from 10.0.2.15; IPv6 fec0::/64. <c>hostfwd</c> rules forward host ports to the guest.
/// <para>
/// libslirp is not thread-safe, so every call into it runs on this backend's own thread, in a poll(2) loop over libslirp's
/// sockets and an eventfd: the device's frames reach that thread through a <see cref="FrameRing"/> plus the eventfd,
/// and libslirp's frames for the guest leave it through a second ring plus an eventfd the device's I/O thread watches.
/// libslirp's frames are whole Ethernet frames it built with valid checksums, so the device offers GUEST_CSUM and marks
/// them DATA_VALID (the guest need not verify them); it takes no offloads from the guest (no CSUM, no TSO, no header).
/// </para>
/// </summary>
public sealed unsafe class SlirpBackend : INetBackend
{
    private const int RxRingBytes = 2 << 20;
    private const int TxRingBytes = 1 << 20;
    private static readonly uint Net = Be(0x0a000200), Mask = Be(0xffffff00), HostIp = Be(0x0a000202),
        DhcpStart = Be(0x0a00020f), Dns = Be(0x0a000203);

    private readonly FrameRing _rx = new(RxRingBytes); // libslirp -> guest
    private readonly FrameRing _tx = new(TxRingBytes); // guest -> libslirp
    private readonly int _rxFd, _txFd;
    private readonly Thread _thread;
    private readonly ManualResetEventSlim _ready = new();
    private readonly List<Timer> _timers = [];
    private readonly HostForward[] _forwards;
    private readonly int _mtu;
    private GCHandle _self;
    private string? _initError;
    private volatile bool _stopping;
    private volatile bool _sendBlocked;
    private bool _rxSignal;
    private nint _slirp;
    private PollFd* _fds;
    private int _nfds, _capFds;
    private int _guestErrors;

    /// <summary>Starts libslirp on its thread with <paramref name="forwards"/> and interface MTU <paramref name="mtu"/>;
    /// throws <see cref="HostConfigException"/> when libslirp is missing or a rule cannot be set up.</summary>
    public SlirpBackend(IReadOnlyList<HostForward> forwards, int mtu = 1500)
    {
        ArgumentNullException.ThrowIfNull(forwards);
        LibSlirp.Load();
        _forwards = [.. forwards];
        _mtu = mtu;
        _rxFd = VirtioNative.EventFd(0, VirtioNative.EfdNonBlock | VirtioNative.CloExec);
        _txFd = VirtioNative.EventFd(0, VirtioNative.EfdNonBlock | VirtioNative.CloExec);
        if (_rxFd < 0 || _txFd < 0) throw new HostConfigException($"slirp: eventfd: {VirtioNative.LastError()}");
        _self = GCHandle.Alloc(this);
        _capFds = 16;
        _fds = (PollFd*)NativeMemory.Alloc((nuint)(_capFds * sizeof(PollFd)));
        _thread = new Thread(Loop) { IsBackground = true, Name = "slirp" };
        _thread.Start();
        _ready.Wait();
        if (_initError is not null)
        {
            _thread.Join();
            Release();
            throw new HostConfigException(_initError);
        }
    }

    /// <summary>Parses a <c>hostfwd</c> value: rules separated by ';' (bhyve), each as <see cref="HostForward.Parse"/>.</summary>
    public static HostForward[] ParseForwards(string? value)
    {
        if (string.IsNullOrEmpty(value)) return [];
        var parts = value.Split(';', StringSplitOptions.RemoveEmptyEntries);
        var r = new HostForward[parts.Length];
        for (int i = 0; i < parts.Length; i++) r[i] = HostForward.Parse(parts[i]);
        return r;
    }

    /// <inheritdoc/>
    public string Name => "slirp";
    /// <inheritdoc/>
    public ulong OffloadFeatures => VirtioNet.FeatureGuestCsum; // frames arrive with whole checksums (DATA_VALID); none partial
    /// <inheritdoc/>
    public bool HasVnetHeader => false;
    /// <inheritdoc/>
    public int ReceiveFd => _rxFd;
    /// <inheritdoc/>
    public bool ReceiveFdIsEventFd => true;
    /// <inheritdoc/>
    public Action? SendRoom { get; set; }
    /// <summary>Frames for the guest dropped because the device had fallen behind by a whole ring.</summary>
    public long DroppedToGuest => _rx.Dropped;

    /// <inheritdoc/>
    public void Configure(int vnetHeaderLength, ulong negotiatedFeatures) { }

    /// <inheritdoc/>
    public ReadOnlySpan<byte> Peek() => _rx.Peek();

    /// <inheritdoc/>
    public void Consume() => _rx.Consume();

    /// <inheritdoc/>
    public bool Send(ReadOnlySpan<IoVec> parts, int headerLength)
    {
        long total = 0;
        foreach (var p in parts) total += (long)p.Length;
        total -= headerLength;
        if (total < 14) return true; // not even an Ethernet header: dropped, as a NIC would
        if (total > _tx.MaxFrame) return true;
        if (!_tx.TryReserve((int)total, out var dest))
        {
            _sendBlocked = true;
            // The slirp thread may have drained the ring between the failed reserve and the flag: try once more.
            if (!_tx.TryReserve((int)total, out dest)) return false;
            _sendBlocked = false;
        }
        int skip = headerLength, done = 0;
        foreach (var p in parts)
        {
            var s = new ReadOnlySpan<byte>((void*)p.Base, (int)p.Length);
            if (skip >= s.Length) { skip -= s.Length; continue; }
            s = s[skip..];
            skip = 0;
            s.CopyTo(dest[done..]);
            done += s.Length;
        }
        _tx.Commit();
        VirtioNative.Signal(_txFd);
        return true;
    }

    /// <summary>Test hook: queues a bare Ethernet frame for libslirp (what <see cref="Send"/> does with one buffer).</summary>
    public bool SendFrame(ReadOnlySpan<byte> frame)
    {
        fixed (byte* p = frame)
        {
            IoVec v = new() { Base = (nint)p, Length = (nuint)frame.Length };
            return Send(new ReadOnlySpan<IoVec>(&v, 1), 0);
        }
    }

    // ---- state (snapshots) -----------------------------------------------------------------------------------

    /// <summary>libslirp's own saved state (slirp_state_save) and the version it is in (slirp_state_version): its DHCP
    /// leases (MAC to address) and IP identification counter, plus guestfwd connections, which hyve does not create.
    /// Connections the guest made through the NAT are not in it: each is a host socket, which a new process cannot take
    /// over, so after a restore the guest's old TCP connections are reset or time out and new ones work; hostfwd
    /// listeners are opened again from the configuration.</summary>
    public (int Version, byte[] State) SaveState() => OnLoop(() =>
    {
        var buf = new MemoryStream();
        var h = GCHandle.Alloc(buf);
        try
        {
            int r = LibSlirp.StateSave(_slirp, &CbStateWrite, GCHandle.ToIntPtr(h));
            if (r < 0) throw new IOException($"slirp: slirp_state_save failed ({r})");
        }
        finally { h.Free(); }
        return (LibSlirp.StateVersion(), buf.ToArray());
    });

    /// <summary>Loads <see cref="SaveState"/>'s bytes into this (fresh) instance; throws <see cref="InvalidDataException"/>
    /// when libslirp refuses them or they come from a newer libslirp.</summary>
    public void LoadState(int version, byte[] state)
    {
        ArgumentNullException.ThrowIfNull(state);
        OnLoop(() =>
        {
            int mine = LibSlirp.StateVersion();
            if (version < 1 || version > mine) throw new InvalidDataException($"slirp state version {version}; this libslirp loads 1 to {mine}");
            var src = new StateSource(state);
            var h = GCHandle.Alloc(src);
            try
            {
                int r = LibSlirp.StateLoad(_slirp, version, &CbStateRead, GCHandle.ToIntPtr(h));
                if (r < 0) throw new InvalidDataException($"slirp refused its saved state ({r})");
                // Not every libslirp read checks its length: a short one is caught here.
                if (src.Short) throw new InvalidDataException("slirp's saved state is truncated");
                if (src.Stream.Position != state.Length) throw new InvalidDataException($"slirp left {state.Length - src.Stream.Position} bytes of its saved state unread");
            }
            finally { h.Free(); }
            return 0;
        });
    }

    [UnmanagedCallersOnly]
    private static nint CbStateWrite(byte* buf, nuint len, nint opaque)
    {
        ((MemoryStream)GCHandle.FromIntPtr(opaque).Target!).Write(new ReadOnlySpan<byte>(buf, (int)len));
        return (nint)len;
    }

    [UnmanagedCallersOnly]
    private static nint CbStateRead(byte* buf, nuint len, nint opaque)
    {
        var src = (StateSource)GCHandle.FromIntPtr(opaque).Target!;
        int n = src.Stream.Read(new Span<byte>(buf, (int)len));
        if (n < (int)len)
        {
            src.Short = true;
            new Span<byte>(buf + n, (int)len - n).Clear();
        }
        return n;
    }

    private sealed class StateSource(byte[] state)
    {
        public readonly MemoryStream Stream = new(state, writable: false);
        public bool Short;
    }

    private readonly System.Collections.Concurrent.ConcurrentQueue<Action> _work = new();

    // libslirp is not thread-safe: runs f on the slirp thread and waits for it.
    private T OnLoop<T>(Func<T> f)
    {
        if (Thread.CurrentThread == _thread) return f();
        if (_stopping) throw new IOException("slirp: the network thread has stopped");
        T result = default!;
        Exception? error = null;
        using var done = new ManualResetEventSlim();
        _work.Enqueue(() =>
        {
            try { result = f(); }
            catch (Exception e) { error = e; }
            finally { done.Set(); }
        });
        VirtioNative.Signal(_txFd);
        if (!done.Wait(5000)) throw new IOException("slirp: the network thread did not answer within 5 s");
        if (error is not null) throw error;
        return result;
    }

    private void RunWork()
    {
        while (_work.TryDequeue(out var a)) a();
    }

    // ---- the slirp thread ---------------------------------------------------------------------------------

    private void Loop()
    {
        try
        {
            if (!Init()) return;
        }
        finally
        {
            _ready.Set();
        }
        while (!_stopping)
        {
            _nfds = 0;
            AddFd(_txFd, PollIn);
            uint timeout = uint.MaxValue;
            LibSlirp.PollfdsFill(_slirp, &timeout, &AddPoll, GCHandle.ToIntPtr(_self));
            long next = NextTimerMs();
            if (next >= 0)
            {
                long wait = Math.Max(0, next - NowMs());
                if (wait < timeout) timeout = (uint)wait;
            }
            int n = LibSlirp.Poll(_fds, (nuint)_nfds, timeout == uint.MaxValue ? -1 : (int)Math.Min(timeout, int.MaxValue));
            if (_stopping) break;
            LibSlirp.PollfdsPoll(_slirp, n < 0 ? 1 : 0, &GetREvents, GCHandle.ToIntPtr(_self));
            RunTimers();
            if (n > 0 && _fds[0].Revents != 0) VirtioNative.Drain(_txFd);
            RunWork();
            FeedGuestFrames();
            if (_rxSignal)
            {
                _rxSignal = false;
                VirtioNative.Signal(_rxFd);
            }
        }
        RunWork();
        LibSlirp.Cleanup(_slirp);
        _slirp = 0;
    }

    private const short PollIn = 1, PollPri = 2, PollOut = 4, PollErr = 8, PollHup = 0x10;

    private bool Init()
    {
        SlirpConfig cfg = default;
        cfg.Version = 4;
        cfg.InEnabled = 1;
        cfg.VNetwork = Net;
        cfg.VNetmask = Mask;
        cfg.VHost = HostIp;
        cfg.VDhcpStart = DhcpStart;
        cfg.VNameserver = Dns;
        cfg.In6Enabled = 1;
        cfg.VPrefixAddr6[0] = 0xfe; cfg.VPrefixAddr6[1] = 0xc0;
        cfg.VPrefixLen = 64;
        cfg.VHost6[0] = 0xfe; cfg.VHost6[1] = 0xc0; cfg.VHost6[15] = 2;
        cfg.VNameserver6[0] = 0xfe; cfg.VNameserver6[1] = 0xc0; cfg.VNameserver6[15] = 3;
        cfg.IfMtu = (nuint)_mtu;
        cfg.IfMru = (nuint)_mtu;
        SlirpCallbacks cb = default;
        cb.SendPacket = &CbSendPacket;
        cb.GuestError = &CbGuestError;
        cb.ClockGetNs = &CbClock;
        cb.TimerNew = &CbTimerNew;
        cb.TimerFree = &CbTimerFree;
        cb.TimerMod = &CbTimerMod;
        cb.RegisterPollFd = &CbPollFd;
        cb.UnregisterPollFd = &CbPollFd;
        cb.Notify = &CbNotify;
        // libslirp keeps the callback table's address: it lives in native memory for the backend's lifetime.
        _callbacks = (SlirpCallbacks*)NativeMemory.AllocZeroed((nuint)sizeof(SlirpCallbacks));
        *_callbacks = cb;
        _slirp = LibSlirp.New(&cfg, _callbacks, GCHandle.ToIntPtr(_self));
        if (_slirp == 0) { _initError = "slirp: slirp_new failed"; return false; }
        foreach (var f in _forwards)
        {
            uint ha = BitConverter.ToUInt32(f.HostAddress.GetAddressBytes());
            uint ga = BitConverter.ToUInt32(f.GuestAddress.GetAddressBytes());
            if (LibSlirp.AddHostFwd(_slirp, f.Udp ? 1 : 0, ha, f.HostPort, ga, f.GuestPort) < 0)
            {
                _initError = $"slirp: cannot forward {(f.Udp ? "udp" : "tcp")} {f.HostAddress}:{f.HostPort} (in use, or not a local address)";
                LibSlirp.Cleanup(_slirp);
                _slirp = 0;
                return false;
            }
        }
        return true;
    }

    private SlirpCallbacks* _callbacks;

    private void FeedGuestFrames()
    {
        bool any = false;
        while (true)
        {
            var f = _tx.Peek();
            if (f.IsEmpty) break;
            fixed (byte* p = f) LibSlirp.Input(_slirp, p, f.Length);
            _tx.Consume();
            any = true;
        }
        if (any && _sendBlocked)
        {
            _sendBlocked = false;
            SendRoom?.Invoke();
        }
    }

    private void AddFd(int fd, short events)
    {
        if (_nfds == _capFds)
        {
            _capFds *= 2;
            _fds = (PollFd*)NativeMemory.Realloc(_fds, (nuint)(_capFds * sizeof(PollFd)));
        }
        _fds[_nfds++] = new PollFd { Fd = fd, Events = events };
    }

    private static SlirpBackend Self(nint opaque) => Unsafe.As<SlirpBackend>(GCHandle.FromIntPtr(opaque).Target!);

    [UnmanagedCallersOnly]
    private static int AddPoll(int fd, int events, nint opaque)
    {
        var s = Self(opaque);
        short e = 0;
        if ((events & LibSlirp.PollIn) != 0) e |= PollIn;
        if ((events & LibSlirp.PollOut) != 0) e |= PollOut;
        if ((events & LibSlirp.PollPri) != 0) e |= PollPri;
        if ((events & LibSlirp.PollErr) != 0) e |= PollErr;
        if ((events & LibSlirp.PollHup) != 0) e |= PollHup;
        s.AddFd(fd, e);
        return s._nfds - 1;
    }

    [UnmanagedCallersOnly]
    private static int GetREvents(int idx, nint opaque)
    {
        var s = Self(opaque);
        if ((uint)idx >= (uint)s._nfds) return 0;
        short r = s._fds[idx].Revents;
        int e = 0;
        if ((r & PollIn) != 0) e |= LibSlirp.PollIn;
        if ((r & PollOut) != 0) e |= LibSlirp.PollOut;
        if ((r & PollPri) != 0) e |= LibSlirp.PollPri;
        if ((r & PollErr) != 0) e |= LibSlirp.PollErr;
        if ((r & PollHup) != 0) e |= LibSlirp.PollHup;
        return e;
    }

    [UnmanagedCallersOnly]
    private static nint CbSendPacket(byte* buf, nuint len, nint opaque)
    {
        var s = Self(opaque);
        // A full ring drops the frame, as libslirp's contract allows: TCP retransmits.
        if (s._rx.TryEnqueue(new ReadOnlySpan<byte>(buf, (int)len))) s._rxSignal = true;
        return (nint)len;
    }

    [UnmanagedCallersOnly]
    private static void CbGuestError(byte* msg, nint opaque)
    {
        var s = Self(opaque);
        if (s._guestErrors++ < 3) Console.Error.WriteLine($"hyve: slirp: guest error: {Marshal.PtrToStringUTF8((nint)msg)}");
    }

    [UnmanagedCallersOnly]
    private static long CbClock(nint opaque) => NowNs();

    private static long NowNs() => (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency));
    private static long NowMs() => NowNs() / 1_000_000;

    private sealed class Timer
    {
        public nint Callback;
        public nint CallbackOpaque;
        public long ExpireMs = -1;
        public GCHandle Handle;
    }

    [UnmanagedCallersOnly]
    private static nint CbTimerNew(nint cb, nint cbOpaque, nint opaque)
    {
        var s = Self(opaque);
        var t = new Timer { Callback = cb, CallbackOpaque = cbOpaque };
        t.Handle = GCHandle.Alloc(t);
        s._timers.Add(t);
        return GCHandle.ToIntPtr(t.Handle);
    }

    [UnmanagedCallersOnly]
    private static void CbTimerFree(nint timer, nint opaque)
    {
        var s = Self(opaque);
        var h = GCHandle.FromIntPtr(timer);
        var t = (Timer)h.Target!;
        s._timers.Remove(t);
        h.Free();
    }

    [UnmanagedCallersOnly]
    private static void CbTimerMod(nint timer, long expireMs, nint opaque) => ((Timer)GCHandle.FromIntPtr(timer).Target!).ExpireMs = expireMs;

    [UnmanagedCallersOnly]
    private static void CbPollFd(int fd, nint opaque) { }

    [UnmanagedCallersOnly]
    private static void CbNotify(nint opaque) { } // every libslirp call runs on the loop's own thread, which polls next

    private long NextTimerMs()
    {
        long next = -1;
        foreach (var t in _timers) if (t.ExpireMs >= 0 && (next < 0 || t.ExpireMs < next)) next = t.ExpireMs;
        return next;
    }

    private void RunTimers()
    {
        long now = NowMs();
        for (int i = 0; i < _timers.Count; i++)
        {
            var t = _timers[i];
            if (t.ExpireMs < 0 || t.ExpireMs > now) continue;
            t.ExpireMs = -1;
            ((delegate* unmanaged<nint, void>)t.Callback)(t.CallbackOpaque);
        }
    }

    private static uint Be(uint hostOrder) => BinaryPrimitives.ReverseEndianness(hostOrder);

    /// <summary>Stops the thread (libslirp is cleaned up on it) and frees the rings.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        VirtioNative.Signal(_txFd);
        if (_thread.IsAlive && _thread != Thread.CurrentThread) _thread.Join(2000);
        Release();
    }

    private void Release()
    {
        _stopping = true;
        foreach (var t in _timers) t.Handle.Free();
        _timers.Clear();
        if (_self.IsAllocated) _self.Free();
        VirtioNative.Close(_rxFd);
        VirtioNative.Close(_txFd);
        NativeMemory.Free(_fds);
        _fds = null;
        if (_callbacks is not null) NativeMemory.Free(_callbacks);
        _callbacks = null;
        _rx.Dispose();
        _tx.Dispose();
        _ready.Dispose();
        GC.SuppressFinalize(this);
    }
}
